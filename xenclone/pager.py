"""The pager pipeline: the claim of the product, shared by every backend.

    clone touches page -> fetchable from the memory server? -> fetch ->
    room in host memory? if not, evict a page chosen by policy, from any
    clone -> load the page into the clone -> the clone runs on.

The backend's fault source serves the common case in C at full speed while
the ledger's credits last, and reports what it did in batches.  Whatever
needs a decision comes here: no room (evict first), a page the host does
not hold (fetch first).  Python decides; C moves pages.
"""

from collections import defaultdict

from twisted.internet import defer
from twisted.logger import Logger

from xenclone.interfaces import FaultKind
from xenclone.wire import WireError


class Pager:
    log = Logger()

    def __init__(self, ledger, source, backend, memserver):
        self.ledger = ledger
        self.source = source
        self.backend = backend
        self.memserver = memserver
        self._clones = {}          # domid -> (region, image)
        self._pending = {}         # (domid, pfn) -> None, waiting for room
        self._evicting = False
        self.stalled = False       # no room and nothing evictable
        source.start(self.on_faults)

    # -- clones

    def attach(self, region, image):
        self.ledger.add_clone(region.domid, image.image_id, region.npages)
        self._clones[region.domid] = (region, image)
        region.remember(region.prefilled)
        self.ledger.loaded(region.domid, region.prefilled)
        self.source.add(region)
        self._grant()

    def detach(self, domid):
        if self._clones.pop(domid, None) is None:
            return
        self.source.remove(domid)
        self.ledger.remove_clone(domid)
        for key in [k for k in self._pending if k[0] == domid]:
            del self._pending[key]
        self._pump()

    def stats(self, domid):
        return self.ledger.clone_stats(domid) if self.ledger.has_clone(domid) else None

    # -- the fault path

    def on_faults(self, records):
        """A batch from the fast path: (domid, kind, pfn) tuples."""
        served = defaultdict(list)
        for domid, kind, pfn in records:
            if domid not in self._clones:
                continue
            if kind == FaultKind.SERVED:
                served[domid].append(pfn)
                # A retried fault the fast path served: it no longer waits.
                self._pending.pop((domid, pfn), None)
            elif kind in (FaultKind.NOCREDIT, FaultKind.ERROR):
                self._pending[(domid, pfn)] = None
            elif kind == FaultKind.FETCH:
                self._fetch(domid, pfn)
            else:
                self.log.error("clone {domid}: fault on page {pfn} of kind {kind} has no handler",
                               domid=domid, pfn=pfn, kind=kind)
        for domid, pfns in served.items():
            self.ledger.loaded(domid, pfns)
        self._pump()

    def _pump(self):
        """Load what waits for room; evict when there is none."""
        room = self.ledger.take_credits()
        while self._pending and room > 0:
            (domid, pfn), _ = self._pending.popitem()
            region, image = self._clones[domid]
            if image.zero[pfn]:
                region.load_zero(pfn)
            elif not region.load_shared(pfn):
                self._fetch(domid, pfn)
                continue
            self.ledger.loaded(domid, [pfn])
            room = self.ledger.take_credits()
        if self._pending and not self._evicting:
            self._evict(len(self._pending))
        self._grant()

    def _grant(self):
        self.source.set_credits(0 if self._pending else self.ledger.take_credits())

    def _fetch(self, domid, pfn):
        """The host does not hold this image page: fetch it, then load."""
        region, image = self._clones[domid]
        d = self.memserver.fetch(image.image_id, pfn, 1)

        def fill(data):
            image.store_page(pfn, data)
            if domid not in self._clones:
                return
            if not region.load_shared(pfn):
                raise RuntimeError("page %d is still missing after its fetch" % pfn)
            self.ledger.loaded(domid, [pfn])
            self._grant()

        d.addCallback(fill)
        d.addErrback(lambda f: self.log.failure("clone {domid}: fetch of page {pfn} failed", f,
                                                domid=domid, pfn=pfn))

    def _evict(self, wanted):
        victims = self.ledger.victims(max(wanted, self.ledger.credit_batch))
        if not victims:
            if not self.stalled:
                self.log.warn("host budget reached and no clean page to evict: {n} faults wait",
                              n=len(self._pending))
            self.stalled = True
            return
        self.stalled = False
        self._evicting = True
        by_clone = defaultdict(list)
        for domid, pfn in victims:
            by_clone[domid].append(pfn)
        drops = [self._drop(domid, pfns) for domid, pfns in by_clone.items()]
        d = defer.gatherResults(drops, consumeErrors=True)

        def done(_):
            self._evicting = False
            self._pump()

        d.addBoth(done)

    def _drop(self, domid, pfns):
        region, _ = self._clones[domid]
        region.forget(pfns)
        blocked = any(key[0] == domid for key in self._pending)
        d = self.backend.drop_clean(domid, pfns, blocked)

        def account(dropped):
            if domid not in self._clones:
                return
            kept = set(pfns).difference(dropped)
            region.remember(kept)
            self.ledger.evicted(domid, dropped)
            self.ledger.written(domid, kept)

        def failed(f):
            region.remember(pfns)
            if f.check(WireError) and f.value.code in ("busy", "no-domain"):
                self.log.debug("clone {domid}: not evicted now: {why}", domid=domid, why=f.value)
            else:
                self.log.failure("clone {domid}: eviction failed", f, domid=domid)

        return d.addCallbacks(account, failed)
