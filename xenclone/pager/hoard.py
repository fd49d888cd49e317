"""Filling a clone ahead of its faults: hoard (every page, paced) and prefetch (a working set).

Hoard walks the clone's pages ``rate`` a second in ticks of a tenth of a
second, asking the pipeline to map each absent one and to page in each
paged-out one, until the clone is full, at its target or out of room.
Prefetch maps a recorded working set in one go, copied by C off the
reactor, on regions that offer it (``IPrefetchRegion``).
"""

from twisted.internet import defer, task, threads

from xenclone import ledger as L
from xenclone.interfaces import IPrefetchRegion, PageState
from xenclone.pager.requests import Waits


class Hoarder:
    def __init__(self, pager):
        self.pager = pager
        self.ledger = pager.ledger
        self._hoards = {}              # domid -> (LoopingCall, Deferred fired when it ends)

    def hoarding(self, domid):
        return domid in self._hoards

    def hoard(self, domid, rate):
        """Deferred fired with ``domid`` when the hoard ends."""
        self.stop(domid)
        done = defer.Deferred()
        per_tick = max(1, rate // 10)
        region, _ = self.pager.clones[domid]
        cursor = [0]

        def tick():
            states = region.states()
            moved = 0
            while cursor[0] < region.npages and moved < per_tick:
                if (self.ledger.resident(domid) >= self.ledger.fill_goal(domid)
                        or self.ledger.clone_room(domid) <= 0):
                    break
                pfn = cursor[0]
                cursor[0] += 1
                if states[pfn] == PageState.ABSENT:
                    self.pager.map_page(domid, pfn)
                    moved += 1
                elif self.ledger.kind(domid, pfn) == L.PAGED_OUT:
                    self.pager.faults.wait_host(domid, pfn, Waits.PAGE_IN)
                    moved += 1
            if cursor[0] >= region.npages or moved < per_tick:
                self.stop(domid)
            self.pager.pump()

        loop = task.LoopingCall(tick)
        loop.clock = self.pager.reactor
        self._hoards[domid] = (loop, done)
        # A tick that fails (a bug) ends the hoard with its failure, never
        # leaves a waiting operator hanging.
        loop.start(0.1).addErrback(self._failed, domid)
        return done

    def _failed(self, failure, domid):
        entry = self._hoards.pop(domid, None)
        if entry is not None:
            entry[1].errback(failure)

    def stop(self, domid):
        entry = self._hoards.pop(domid, None)
        if entry is not None:
            loop, done = entry
            if loop.running:
                loop.stop()
            done.callback(domid)

    def stop_all(self):
        for domid in list(self._hoards):
            self.stop(domid)

    def prefetch(self, domid, pfns):
        """Map a clone's pages before it faults on them: as many as its
        room allows, in the given order.  Deferred of the number mapped."""
        region = self.pager.clones[domid][0]
        room = self.ledger.clone_room(domid)
        if not IPrefetchRegion.providedBy(region) or room <= 0:
            return defer.succeed(0)
        reactor = self.pager.reactor
        d = threads.deferToThreadPool(reactor, reactor.getThreadPool(),
                                      region.prefetch, list(pfns)[:room])

        def account(mapped):
            shared, zero = mapped
            if domid in self.pager.clones:
                # A hole punched meanwhile unmapped some: those fault again.
                states = region.states()
                shared = [p for p in shared if states[p] == PageState.SHARED]
                zero = [p for p in zero if states[p] == PageState.ZERO]
                self.ledger.mapped_shared(domid, shared, how="prefetch")
                self.ledger.mapped_zero(domid, zero, how="prefetch")
                self.pager.grant()
            return len(shared) + len(zero)

        return d.addCallback(account)
