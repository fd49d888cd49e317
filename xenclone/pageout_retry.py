"""Page-out that stops on a full disk, and starts again once there is room.

A page-out that fails drops nothing (the VMM host writes the pages before
it lets them go), so the clone keeps its pages and loses nothing; what is
left to decide is whether to try again.  A store that is broken (a corrupt
record, a bad path) is not tried again: the clone's ``pageout_error`` says
why, and only the operator's ``set evict=`` brings page-out back.  A disk
that is full (``pageout-full``: ENOSPC, EDQUOT) usually is for a while:

    full        -> page-out paused for this clone; info's pageout_error
                   says "disk full ... paused, retrying in N s"
    N s later   -> page-out allowed again; the next eviction tries it
    full again  -> paused again, N doubled (FIRST .. MOST seconds)
    it worked   -> pageout_error cleared, N back to FIRST

The pause leaves the operator's choice alone: an ``evict=`` given while
paused is what holds, and no retry puts page-out back into it.
"""

import errno

from twisted.logger import Logger

from xenclone.wire import WireError

log = Logger()

FIRST, MOST = 1.0, 60.0         # seconds between tries while the disk is full
PAUSED = "disk full"            # how a pause's pageout_error starts


def failure_code(error):
    """The wire code of a page-out's OSError: a full disk passes, the rest
    is a broken store."""
    return "pageout-full" if error.errno in (errno.ENOSPC, errno.EDQUOT) else "pageout-failed"


class PageOutRetry:
    def __init__(self, reactor, ledger, pump):
        self.reactor = reactor
        self.ledger = ledger
        self.pump = pump                # the pager's: evictions wait for page-out
        self._paused = {}               # domid -> (IDelayedCall, classes left while paused)
        self._delay = {}                # domid -> seconds before the next try

    def failed(self, domid, failure):
        """A page-out of ``domid`` failed (nothing was dropped)."""
        if not self.ledger.has_clone(domid):
            return
        why = failure.getErrorMessage()
        if not (failure.check(WireError) and failure.value.code == "pageout-full"):
            self.ledger.pageout_failed(domid, why)
            return
        if domid in self._paused:       # another batch of the same round
            return
        delay = self._delay.get(domid, FIRST)
        self._delay[domid] = min(delay * 2, MOST)
        left = self.ledger.pause_pageout(
            domid, "%s, page-out paused, retrying in %g s: %s" % (PAUSED, delay, why))
        call = self.reactor.callLater(delay, self._again, domid)
        self._paused[domid] = (call, left)
        log.warn("clone {domid}: page-out paused {delay} s, the disk is full: {why}",
                 domid=domid, delay=delay, why=why)

    def _again(self, domid):
        _, left = self._paused.pop(domid)
        if not self.ledger.has_clone(domid):
            return
        self.ledger.resume_pageout(domid, left)
        self.pump()

    def succeeded(self, domid):
        if self._delay.pop(domid, None) is not None:
            if self.ledger.has_clone(domid):
                self.ledger.pageout_works(domid, PAUSED)
            log.info("clone {domid}: page-out works again", domid=domid)

    def forget(self, domid):
        paused = self._paused.pop(domid, None)
        if paused is not None and paused[0].active():
            paused[0].cancel()
        self._delay.pop(domid, None)
