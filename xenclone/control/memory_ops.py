"""The control ops that move a clone's pages: ``evict`` (down to a number
of pages) and ``hoard`` (every page fetched, at a rate).

A mixin of ``Controller``; the pager does the work, and each answers
with the clone's ``info`` (``hoard --wait``: once every page is in).
"""

from twisted.internet import defer

from xenclone.control.args import _int


class MemoryOps:
    """``evict`` and ``hoard``; needs ``Controller``'s ``pager``,
    ``hoard_rate`` and its helpers (``_clone``, ``_changed``, ``op_info``)."""

    def op_evict(self, msg):
        dom = self._clone(msg)
        pages = _int(msg, "to", 0, 2**40)
        d = self.pager.evict_to(dom.domid, pages)
        d.addCallback(lambda n: (self._changed(), n)[1])
        return d.addCallback(lambda n: defer.maybeDeferred(self.op_info, {"domain": dom.domid})
                             .addCallback(lambda info: dict(info, evicted_now=n)))

    def op_hoard(self, msg):
        dom = self._clone(msg)
        rate = _int(msg, "rate", 1, 10**7, default=self.hoard_rate)
        done = self.pager.hoard(dom.domid, rate)
        self._changed()
        if msg.get("wait"):
            return done.addCallback(lambda _: self.op_info({"domain": dom.domid}))
        return self.op_info({"domain": dom.domid})
