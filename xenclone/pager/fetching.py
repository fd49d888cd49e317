"""Fetching: the pipeline's "fetchable? -> fetch" step, with backoff.

An image page this host's cache lacks is fetched from the memory server
(local, or a mirror's origin) once, however many clones fault on it; the
faults wait for room in their clones and are mapped when it lands.  A
fetch that fails (the server gone, hung or cut off) parks its fault:

    failed   -> parked (Waits.MEMSERVER); the clone shows waiting-for-memory-server
    backoff  -> every parked fault asks for a fetch again (RETRY_FIRST .. RETRY_MAX s,
                doubling while fetches fail)
    landed   -> the backoff starts over; a clone with no parked fault left
                no longer waits
"""

from twisted.internet import defer
from twisted.logger import Logger

from xenclone.interfaces import PAGE_SIZE
from xenclone.pager.requests import Waits
from xenclone.runs import runs

BRING_IN = 256   # pages per fetch when a whole image is brought in (the server's most)
RETRY_FIRST, RETRY_MAX = 0.05, 5.0     # seconds between fetch retries (backoff)


class Fetcher:
    log = Logger()

    def __init__(self, reactor, memserver, ledger, clones, faults, pump):
        self.reactor = reactor
        self.memserver = memserver
        self.ledger = ledger
        self._clones = clones          # the pipeline's: domid -> (region, image)
        self.faults = faults
        self._pump = pump
        self._fetching = set()         # (image id, pfn) on its way
        self._retry, self._backoff = None, RETRY_FIRST    # the pending retry, its delay
        self.waiting_for_memserver = set()   # clones with a fault that waits on it
        self.on_waiting = lambda domid, waiting: None   # the controller's hook

    def fetch(self, domid, pfn):
        """The host does not hold this image page: fetch it, then map it."""
        image = self._clones[domid][1]
        if (image.image_id, pfn) in self._fetching:
            self.faults.wait_room(domid, pfn)   # mapped once the fetch lands
            return
        self._fetching.add((image.image_id, pfn))
        d = self.memserver.fetch(image.image_id, pfn, 1)

        def fill(data):
            image.store_page(pfn, data)
            self.ledger.cached(image.image_id, [pfn])
            self._backoff = RETRY_FIRST
            if domid in self._clones:
                self.faults.wait_room(domid, pfn)
            self._reachable(domid)

        def failed(f):
            self._failed(domid, pfn, f)

        def done(_):
            self._fetching.discard((image.image_id, pfn))
            self._pump()

        d.addCallbacks(fill, failed).addBoth(done)

    def _failed(self, domid, pfn, f):
        """The fault waits, and the fetch is retried with backoff (the
        server's client reconnects, or restarts the local server)."""
        if not self.faults.count(Waits.MEMSERVER) and self._retry is None:
            self.log.warn("memory server unreachable ({why}): faults wait, retrying",
                          why=f.getErrorMessage())
        self.faults.park(domid, pfn, Waits.MEMSERVER)
        if domid in self._clones and domid not in self.waiting_for_memserver:
            self.waiting_for_memserver.add(domid)
            self.on_waiting(domid, True)
        if self._retry is None:
            self._retry = self.reactor.callLater(self._backoff, self._retry_all)
            self._backoff = min(self._backoff * 2, RETRY_MAX)

    def _retry_all(self):
        self._retry = None
        for request in self.faults.unpark_all(Waits.MEMSERVER):
            if request.domid in self._clones:
                self.faults.wait_host(request.domid, request.pfn, Waits.FETCH)
        self._pump()

    def _reachable(self, domid):
        """A fetch for this clone landed: it no longer waits on the server
        unless another of its fetches still does."""
        if (domid in self.waiting_for_memserver
                and not self.faults.parked(domid, Waits.MEMSERVER)):
            self.waiting_for_memserver.discard(domid)
            self.on_waiting(domid, False)

    def forget(self, domid):
        self.waiting_for_memserver.discard(domid)

    def stop(self):
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None

    @defer.inlineCallbacks
    def bring_in(self, image):
        """Every non-zero page of a mirrored image into this host's cache,
        for a clone filled before it runs: it raises no faults to fetch by.
        How many pages were fetched."""
        have = set(image.cached_pages())
        missing = [p for p in range(image.npages) if not image.zero[p] and p not in have]
        for i, n in runs(missing):
            for first in range(missing[i], missing[i] + n, BRING_IN):
                count = min(BRING_IN, missing[i] + n - first)
                data = yield self.memserver.fetch(image.image_id, first, count)
                for k in range(count):
                    image.store_page(first + k, data[k * PAGE_SIZE:(k + 1) * PAGE_SIZE])
                self.ledger.cached(image.image_id, range(first, first + count))
        return len(missing)
