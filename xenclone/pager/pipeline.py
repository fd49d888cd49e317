"""The fault pipeline, the claim of the product: one for every backend.

    fault -> fetchable? -> fetch -> room? -> evict -> load -> resume

The backend's fault source serves the common case (in C on KVM) while the
ledger's credits last, and reports what it did in batches
(``fast_path``).  A fault it could not serve becomes a request
(``requests``) that waits for what it lacks:

    room in its clone       -> an eviction round from that clone (``eviction``)
    room on the host        -> an eviction round from any clone
    an image page the host lacks -> a fetch from the memory server (``fetching``)
    a held page             -> the eviction's end, or a page-in from its store

``pump`` serves what waits while there is room and starts eviction rounds
where there is none; every round, fetch and page-in ends in ``pump`` again.
Python decides; C moves pages.  Every eviction holds its pages first, so a
write cannot sneak in between the decision and the drop.
"""

from collections import defaultdict

from twisted.internet import defer, task
from twisted.logger import Logger

from xenclone import ledger as L
from xenclone.interfaces import (
    FaultKind, IFaultAroundRegion, IFaultCounters, IForkBackend, IForkRegion,
    INativeFaultRegion, PageState)
from xenclone.pageout_retry import PageOutRetry
from xenclone.pageout_store import PageOutStore
from xenclone.pager import audit, fast_path
from xenclone.pager.eviction import Evictor
from xenclone.pager.fetching import Fetcher
from xenclone.pager.fork_frames import INTERVAL as FORK_INTERVAL, ForkFrames
from xenclone.pager.hoard import Hoarder
from xenclone.pager.requests import WaitingFaults, Waits

# Faults that wait for room in their clone, then are loaded by ``_map``.
_ROOM = (FaultKind.MISSING, FaultKind.ERROR, FaultKind.COPY)


class Pager:
    log = Logger()

    def __init__(self, reactor, ledger, source, backend, memserver, store_dir, sync=False,
                 fault_around=0):
        self.reactor = reactor
        self.fault_around = fault_around    # largest fault-around window, pages (0 = off)
        self.ledger = ledger
        self.source = source
        self.backend = backend
        self.memserver = memserver
        self.store_dir = store_dir
        self.clones = {}               # domid -> (region, image) of the clones served
        self.images = {}               # image id -> its OpenImage (this host's cache)
        self._stores = {}              # domid -> its PageOutStore, open to read
        self._stopped = False
        self.faults = WaitingFaults()
        self.pageout_retry = PageOutRetry(reactor, ledger, self.pump)
        self.fetcher = Fetcher(reactor, memserver, ledger, self.clones, self.faults, self.pump)
        self.evictor = Evictor(self, sync)
        self.hoarder = Hoarder(self)
        self.forks = ForkFrames(ledger)     # forks' own frames, from the hypervisor
        self._fork_look = task.LoopingCall(self._look_at_forks)
        self._fork_look.clock = reactor
        self.observe = lambda records: None   # sees every fault record first (working sets)
        self.recorded = lambda image: False   # whether a new clone's faults are recorded
        source.start(self.on_faults)

    # -- what others read

    @property
    def stalled(self):
        """Why faults wait with nothing to evict (None: they do not)."""
        return self.evictor.stalled

    @property
    def punch_seq(self):
        """Read before a launch, passed to ``attach``: holes punched after
        it unmapped what the backend mapped at launch."""
        return self.evictor.punch_seq

    @property
    def waiting_for_memserver(self):
        return self.fetcher.waiting_for_memserver

    @property
    def on_waiting(self):
        return self.fetcher.on_waiting

    @on_waiting.setter
    def on_waiting(self, hook):
        """``hook(domid, waiting)``: a clone starts or stops waiting for the memory server."""
        self.fetcher.on_waiting = hook

    def waiting(self):
        """Faults waiting for a decision, by what they wait for."""
        return self.faults.counts()

    def stats(self, domid):
        if not self.ledger.has_clone(domid):
            return None
        stats = self.ledger.clone_stats(domid)
        stats["hoarding"] = self.hoarder.hoarding(domid)
        region = self.clones[domid][0]
        if INativeFaultRegion.providedBy(region):   # the faults the guest saw, as C counted them
            stats["guest_faults"] = region.counters()["faults"]
        return stats

    def requests(self, domid):
        """A Xen clone's ring requests, those that wait, and where its rings
        stand (``info`` shows them; too lively to publish); else None."""
        region = self.clones.get(domid, (None,))[0]
        if IFaultCounters.providedBy(region) and not INativeFaultRegion.providedBy(region):
            return region.counters()
        return None

    def audit(self, domid, kernel):
        """Pages where the ledger, the fast path's state and the kernel's
        ``kernel`` kinds (one per page) disagree: (pfn, ledger, state, kernel)."""
        return audit.disagreements(self.ledger, domid, self.clones[domid][0].states(), kernel)

    def store(self, domid):
        """The clone's page-out store."""
        return PageOutStore.of_clone(self.store_dir, domid)

    def store_path(self, domid):
        return self.store(domid).path

    # -- clones

    def attach(self, region, image, since=None, share=True):
        """Serve a launched clone's faults.  ``share`` False (share.onfetch
        off) gives it private copies of image pages, never shared ones."""
        zero = image.zero
        self._add(region, image)
        self.set_fault_around(region.domid, 0 if share and self.recorded(image) else None)
        self.set_knobs(region.domid, share=share)
        # Pages the backend mapped at launch, unless the cache let them go
        # since (a hole unmaps them): those fault again.
        shared = [p for p in region.prefilled
                  if not zero[p] and not self.evictor.punched_since(image.image_id, p, since)]
        region.remember(shared, PageState.SHARED)
        self.ledger.mapped_shared(region.domid, shared)
        self.source.add(region)
        self.grant()

    def _add(self, region, image):
        self.track_image(image)
        self.ledger.add_clone(region.domid, image.image_id, region.npages)
        self.clones[region.domid] = (region, image)
        if IForkRegion.providedBy(region):
            # A fork gives up only what it wrote, by page-out: dropping a
            # page it shares frees nothing.
            self.ledger.set_knobs(region.domid, classes=(L.PAGE_OUT,))
            self.forks.add(region)
            if not self._fork_look.running:
                self._fork_look.start(FORK_INTERVAL, now=False)
        elif region.fill_mode != "lazy":
            # Filled before it ran, it holds frames of its own that the
            # hypervisor cannot take (only its balloon can give some back):
            # never a victim.
            self.ledger.set_knobs(region.domid, classes=())

    def _look_at_forks(self):
        """The ledger learns what forks wrote; over budget, evict."""
        self.forks.sync(busy=self.evictor.flying)
        self.rebudget(self.ledger.budget_pages)

    def reattach(self, region, image, kinds, paged_out, share=True):
        """Take back a clone a previous daemon served.  Its pages are what
        the kernel shows (``kinds``, one per page); an absent page the
        page-out index holds (``paged_out``: pfn -> (slot, crc)) is paged
        out.  Faults that waited meanwhile are served once it is added."""
        domid = region.domid
        self._add(region, image)
        by_kind = defaultdict(list)
        for pfn, kind in enumerate(kinds):
            if kind == PageState.ABSENT and pfn in paged_out:
                kind = PageState.HOLD
            by_kind[kind].append(pfn)
        for kind, account in ((PageState.SHARED, self.ledger.mapped_shared),
                              (PageState.ZERO, self.ledger.mapped_zero),
                              (PageState.PRIVATE, self.ledger.written)):
            region.remember(by_kind[kind], kind)
            account(domid, by_kind[kind])
        out = by_kind[PageState.HOLD]
        region.hold(out)
        self.ledger.written(domid, out)
        self.ledger.paged_out(domid, out, [paged_out[p][0] for p in out],
                              [paged_out[p][1] for p in out])
        self.ledger.reserve_slots(domid, [slot for slot, _ in paged_out.values()])
        self.set_knobs(domid, share=share)
        self.set_fault_around(domid)
        self.source.add(region)
        self.grant()
        region.wake_all()

    def set_fault_around(self, domid, pages=None):
        """A clone's largest fault-around window (None: the daemon's).  A
        clone whose faults are recorded as a working set gets none."""
        region = self.clones[domid][0] if domid in self.clones else None
        if IFaultAroundRegion.providedBy(region):
            region.fault_around(self.fault_around if pages is None else pages)

    def track_image(self, image):
        """This host caches the image (from bless, or its first open): its
        resident pages count in the budget from now on."""
        self.images[image.image_id] = image
        if not self.ledger.has_image(image.image_id):
            self.ledger.add_image(image.image_id, image.npages, image.cached_pages())
            self.note_image_domains()

    def note_image_domains(self):
        """Images the hypervisor holds in image domains (forks share their
        frames): their cache here leaves the hypervisor's budget."""
        if IForkBackend.providedBy(self.backend):
            for image_id in self.backend.image_domains():
                if self.ledger.has_image(image_id):
                    self.ledger.hold_image(image_id)
        self.rebudget(self.ledger.budget_pages)

    def set_knobs(self, domid, target=None, limit=None, classes=None, share=None):
        """A clone's settings (``LedgerError`` if out of range).  Faults
        that waited on the old ones go on at once, e.g. a clone stuck at
        its limit when its page-out store failed, given a higher limit.
        share.onfetch: pages mapped already stay as they are."""
        self.ledger.set_knobs(domid, target=target, limit=limit, classes=classes, share=share)
        if share is not None:
            self.clones[domid][0].share(share)
        self.pump()

    def detach(self, domid):
        if self.clones.pop(domid, None) is None:
            return
        self.hoarder.stop(domid)
        self.pageout_retry.forget(domid)
        self.forks.remove(domid)
        if not self.forks and self._fork_look.running:
            self._fork_look.stop()
        self.source.remove(domid)
        self.ledger.remove_clone(domid)
        self.faults.forget(domid)
        self.fetcher.forget(domid)
        store = self._stores.pop(domid, None) or self.store(domid)
        store.remove()
        self.pump()

    def forget_image(self, image_id):
        self.images.pop(image_id, None)
        if self.ledger.has_image(image_id):
            self.ledger.remove_image(image_id)

    def bring_in(self, image):
        """Every non-zero page of a mirrored image into this host's cache,
        for a clone filled before it runs; Deferred of the pages fetched."""
        return self.fetcher.bring_in(image)

    def prefetch(self, domid, pfns):
        """Map a clone's pages before it faults on them (a recorded working
        set); Deferred of the number mapped."""
        return self.hoarder.prefetch(domid, pfns)

    # -- the fault path

    def on_faults(self, records):
        """A batch of the fast path's records: account what it did, queue
        what it could not do, then serve what waits."""
        self.observe(records)
        by_kind = fast_path.group(records, self.clones)
        fast_path.account(self.ledger, by_kind)
        for domid, pfns in by_kind[FaultKind.SERVED].items():
            self.faults.served(domid, pfns)     # retried faults the fast path served
        for kind in _ROOM:
            for domid, pfns in by_kind[kind].items():
                for pfn in pfns:
                    self.faults.wait_room(domid, pfn)
        # A fork waits for room: what it wrote so far counts first.
        forks = [domid for domid in by_kind[FaultKind.WRITE] if domid in self.forks]
        if forks:
            self.forks.sync(forks, busy=self.evictor.flying)
        for kind, waits in ((FaultKind.WRITE, Waits.WRITE), (FaultKind.FETCH, Waits.FETCH)):
            for domid, pfns in by_kind[kind].items():
                for pfn in pfns:
                    self.faults.wait_host(domid, pfn, waits)
        for domid, pfns in by_kind[FaultKind.HOLD].items():
            for pfn in pfns:
                if self.ledger.kind(domid, pfn) == L.PAGED_OUT:
                    self.faults.wait_host(domid, pfn, Waits.PAGE_IN)
                else:   # being evicted: answered when the eviction ends
                    self.faults.park(domid, pfn, Waits.EVICTION)
        self.pump()

    def stop(self):
        """The daemon stops: no more decisions (the clones' faults wait)."""
        self._stopped = True
        if self._fork_look.running:
            self._fork_look.stop()
        self.fetcher.stop()
        self.hoarder.stop_all()

    def pump(self):
        """Serve what waits while there is room; evict where there is none."""
        if self._stopped:
            return
        faults = self.faults
        while faults.host_waiting() and self.ledger.host_room() > 0:
            self._serve_host(faults.take_host())
        for domid in faults.clones_waiting_room():
            while faults.room_waiting(domid) and self.ledger.clone_room(domid) > 0:
                self.map_page(domid, faults.take_room(domid).pfn)
        if faults.host_waiting():
            self.evictor.evict_host(faults.host_waiting())
        for domid in faults.clones_waiting_room():
            self.evictor.evict_clone(domid, faults.room_waiting(domid))
        self.grant()

    def grant(self):
        host, clones = self.ledger.take_credits()
        if self.faults.host_waiting():
            host = 0                  # first come, first served
        for domid in self.faults.clones_waiting_room():
            clones[domid] = 0
        self.source.set_credits(host, clones)

    def map_page(self, domid, pfn):
        """Load a page the clone has room for: zero, shared or copied from
        this host's cache, or fetched first."""
        region, image = self.clones[domid]
        if region.states()[pfn] != PageState.ABSENT:
            return      # the fast path got there first (a retried fault)
        if image.zero[pfn]:
            region.load_zero(pfn)
            self.ledger.mapped_zero(domid, [pfn])
        elif not self.ledger.shares(domid):
            if self.ledger.host_room() > 0:
                self._copy(domid, pfn)
            else:
                self.faults.wait_host(domid, pfn, Waits.COPY)
        elif region.load_shared(pfn):
            self.ledger.mapped_shared(domid, [pfn])
        else:
            self.faults.wait_host(domid, pfn, Waits.FETCH)

    def _serve_host(self, request):
        """A request the host now has room for."""
        domid, pfn = request.key
        if domid not in self.clones:
            return
        if request.waits == Waits.WRITE:
            self._let_write(domid, pfn)
        elif request.waits == Waits.FETCH:
            self.fetcher.fetch(domid, pfn)
        elif request.waits == Waits.COPY:
            self._copy(domid, pfn)
        else:
            self._page_in(domid, pfn)

    def _let_write(self, domid, pfn):
        # A page being evicted is not touched: the eviction's end wakes the
        # writer, who faults again; so does a page that left meanwhile.  A
        # fork's request stands until answered: the hypervisor allocates.
        region = self.clones[domid][0]
        if domid in self.forks:
            region.unprotect(pfn)
            self.ledger.written(domid, [pfn])
        elif (not self.evictor.in_flight(domid, pfn)
                and region.states()[pfn] in (PageState.SHARED, PageState.ZERO)
                and self.ledger.kind(domid, pfn) in (L.SHARED, L.ZERO)):
            region.unprotect(pfn)
            self.ledger.written(domid, [pfn])

    def _copy(self, domid, pfn):
        """A clone that does not share gets its own copy of an image page,
        from this host's cache (fetched first if the cache lacks it)."""
        region, image = self.clones[domid]
        if region.states()[pfn] != PageState.ABSENT:
            return
        if not self.ledger.is_cached(image.image_id, pfn):
            self.fetcher.fetch(domid, pfn)
            return
        region.load_copy(pfn, image.read_page(pfn))
        self.ledger.written(domid, [pfn])

    def _page_in(self, domid, pfn):
        """A paged-out page faulted: bring it back from the store, checked."""
        slot, crc = self.ledger.slot(domid, pfn)
        store = self._stores.get(domid)
        if store is None:
            store = self._stores[domid] = self.store(domid)
        data = store.read(slot, crc)
        if data is None:
            # Never hand a bad page to the guest: it waits, and says why.
            self.ledger.pageout_failed(domid, "page %d: store record corrupt" % pfn)
            self.log.critical("clone {domid}: page-out record of page {pfn} is corrupt",
                              domid=domid, pfn=pfn)
            return
        self.clones[domid][0].load_copy(pfn, data)
        self.ledger.paged_in(domid, pfn)

    # -- operator actions

    def rebudget(self, pages):
        """A new host budget; evict down to it now if it is exceeded."""
        self.ledger.set_budget(pages)
        over = self.ledger.allocated - pages
        if over > 0:
            self.evictor.evict_host(over)
        self.grant()

    def evict_to(self, domid, pages):
        """Evict a clone down to ``pages`` resident; Deferred of the count."""
        excess = self.ledger.resident(domid) - pages
        if excess <= 0:
            return defer.succeed(0)
        return self.evictor.evict_now(domid, excess).addCallback(
            lambda _: max(0, excess - max(0, self.ledger.resident(domid) - pages)))

    def hoard(self, domid, rate):
        """Fill the clone's remaining pages in the background, ``rate``
        pages a second, until it is full or at its target."""
        return self.hoarder.hoard(domid, rate)

    def stop_hoard(self, domid):
        self.hoarder.stop(domid)
