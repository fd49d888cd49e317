"""The pager pipeline: the claim of the product, shared by every backend.

    clone touches page -> fetchable from the memory server? -> fetch ->
    room in host memory? if not, evict a page chosen by policy, from any
    clone -> load the page into the clone -> the clone runs on.

The backend's fault source serves the common case in C at full speed while
the ledger's credits last, and reports what it did in batches.  Whatever
needs a decision comes here:

- no room in the clone (its limit): evict from that clone, then map;
- no room on the host for a write or a fetch: evict from any clone, then go;
- a page the host does not cache: fetch it from the memory server;
- a held page: paged out (read it back from the page-out store) or being
  evicted (its fault is answered when the eviction ends).

Python decides; C moves pages.  Every eviction holds its pages first, so a
write cannot sneak in between the decision and the drop.
"""

import os
import zlib
from collections import defaultdict

from twisted.internet import defer, task, threads
from twisted.logger import Logger
from twisted.python.failure import Failure

from xenclone import ledger as L, pageout_index
from xenclone.fork_frames import INTERVAL as FORK_INTERVAL, ForkFrames
from xenclone.pageout_retry import PageOutRetry
from xenclone.interfaces import PAGE_SIZE, FaultKind, IForkRegion, PageState
from xenclone.runs import runs
from xenclone.wire import WireError


BATCH = 1024     # pages per backend request
BRING_IN = 256   # pages per fetch when a whole image is brought in (the server's most)
RETRY_FIRST, RETRY_MAX = 0.05, 5.0     # seconds between fetch retries (backoff)


# What a fast-path record says the page became; a record whose page is no
# longer in that state is stale.
_FAST_PATH_STATE = {FaultKind.SERVED: PageState.SHARED, FaultKind.ZERO: PageState.ZERO,
                    FaultKind.WRITTEN: PageState.PRIVATE, FaultKind.AROUND: PageState.SHARED,
                    FaultKind.AROUND_ZERO: PageState.ZERO}


# The ledger's kind -> the (fast path state, kernel kind) pairs that agree
# with it.  A held page may be mid-eviction (a page-out the kernel has done
# but the pager has not heard back from); a private page whose write has not
# landed is still the image's page in the kernel.
_S, _H, _P, _Z, _A = (PageState.SHARED, PageState.HOLD, PageState.PRIVATE, PageState.ZERO,
                      PageState.ABSENT)
_AGREE = {
    L.SHARED: {(_S, _S), (_H, _S), (_H, _A)},
    L.PRIVATE: {(_P, _P), (_P, _S), (_P, _Z), (_H, _P), (_H, _S), (_H, _Z), (_H, _A)},
    L.ZERO: {(_Z, _Z), (_H, _Z), (_H, _A)},
    L.PAGED_OUT: {(_H, _A)},
    L.EVICTED: {(_A, _A), (_H, _A)},
    None: {(_A, _A), (_H, _A)},
}


def _still(run, states, now):
    """The pages of a run still in state ``now``: the run itself if all are."""
    if bytes(states[run.start:run.stop]).count(now) == len(run):
        return run
    return [p for p in run if states[p] == now]


def _chunks(pfns):
    return [pfns[i:i + BATCH] for i in range(0, len(pfns), BATCH)]


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
        self.sync = sync
        self._clones = {}              # domid -> (region, image)
        self._images = {}              # image id -> its OpenImage (this host's cache)
        self._want_map = {}            # (domid, pfn): waits for room in the clone
        self._want_host = {}           # (domid, pfn) -> "write" | "fetch" | "copy" | "pagein"
        self._evicting = set()         # ("clone", domid) / ("host",) rounds in flight
        self._fetching = set()
        self._stores = {}              # domid -> read fd of its page-out store
        self._hoards = {}
        self._held = set()             # faults on pages an eviction holds
        self._stopped, self._in_flight = False, set()   # (domid, pfn) an eviction works on
        self._punch_seq, self._punched = 0, {}   # (image id, pfn) -> seq when its hole was made
        self.pageout_retry = PageOutRetry(reactor, ledger, self._pump)
        self.forks = ForkFrames(ledger)     # forks' own frames, from the hypervisor
        self._fork_look = task.LoopingCall(self._look_at_forks)
        self._fork_look.clock = reactor
        self.stalled = None            # why faults wait with nothing to evict
        self._unreachable = set()      # (domid, pfn) whose fetch failed: retried later
        self._retry, self._backoff = None, RETRY_FIRST    # the pending fetch retry, its delay
        self.waiting_for_memserver = set()   # clones with a fault that waits on it
        self.on_waiting = lambda domid, waiting: None   # the controller's hook
        self.observe = lambda records: None   # sees every fault record first (working sets)
        self.recorded = lambda image: False   # whether a new clone's faults are recorded
        source.start(self.on_faults)

    # -- clones

    @property
    def punch_seq(self):
        """Read before a launch, passed to ``attach``: holes punched after
        it unmapped what the backend mapped at launch."""
        return self._punch_seq

    def attach(self, region, image, since=None, share=True):
        """Serve a launched clone's faults.  ``share`` False (share.onfetch
        off) gives it private copies of image pages, never shared ones."""
        zero = image.zero
        self.track_image(image)
        self.ledger.add_clone(region.domid, image.image_id, region.npages)
        self._clones[region.domid] = (region, image)
        self._unpaged(region)
        self.set_fault_around(region.domid, 0 if share and self.recorded(image) else None)
        self.set_knobs(region.domid, share=share)
        # Pages the backend mapped at launch, unless the cache let them go
        # since (a hole unmaps them): those fault again.
        since = self._punch_seq if since is None else since
        shared = [p for p in region.prefilled if not zero[p]
                  and self._punched.get((image.image_id, p), -1) < since]
        region.remember(shared, PageState.SHARED)
        self.ledger.mapped_shared(region.domid, shared)
        self.source.add(region)
        self._grant()

    def _unpaged(self, region):
        """A clone filled before it ran holds frames of its own that the
        hypervisor cannot take (only its balloon can give some back): never
        a victim.  A fork the pager governs gives up only what it wrote, by
        page-out: dropping a page it shares frees nothing."""
        if IForkRegion.providedBy(region):
            self.ledger.set_knobs(region.domid, classes=(L.PAGE_OUT,))
            self.forks.add(region)
            if not self._fork_look.running:
                self._fork_look.start(FORK_INTERVAL, now=False)
        elif region.fill_mode != "lazy":
            self.ledger.set_knobs(region.domid, classes=())

    def _look_at_forks(self, domids=None):
        """The ledger learns what forks wrote; over budget, evict."""
        self.forks.sync(domids, busy=self._in_flight)
        over = self.ledger.allocated - self.ledger.budget_pages
        if over > 0:
            self._evict_host(over)
        self._grant()

    def reattach(self, region, image, kinds, paged_out, share=True):
        """Take back a clone a previous daemon served.  Its pages are what
        the kernel shows (``kinds``, one per page); an absent page the
        page-out index holds (``paged_out``: pfn -> (slot, crc)) is paged
        out.  Faults that waited meanwhile are served once it is added."""
        domid = region.domid
        self.track_image(image)
        self.ledger.add_clone(domid, image.image_id, region.npages)
        self._clones[domid] = (region, image)
        self._unpaged(region)
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
        self._grant()
        region.wake_all()

    def set_fault_around(self, domid, pages=None):
        """A clone's largest fault-around window (None: the daemon's).  A
        clone whose faults are recorded as a working set gets none."""
        region = self._clones[domid][0] if domid in self._clones else None
        if hasattr(region, "fault_around"):     # a fault source that serves in C
            region.fault_around(self.fault_around if pages is None else pages)

    def track_image(self, image):
        """This host caches the image (from bless, or its first open): its
        resident pages count in the budget from now on."""
        self._images[image.image_id] = image
        if image.image_id not in self.ledger.images:
            self.ledger.add_image(image.image_id, image.npages, image.cached_pages())
            self.rebudget(self.ledger.budget_pages)

    def set_knobs(self, domid, target=None, limit=None, classes=None, share=None):
        """A clone's settings (``LedgerError`` if out of range).  Faults
        that waited on the old ones go on at once, e.g. a clone stuck at
        its limit when its page-out store failed, given a higher limit.
        share.onfetch: pages mapped already stay as they are."""
        self.ledger.set_knobs(domid, target=target, limit=limit, classes=classes, share=share)
        if share is not None:
            self._clones[domid][0].share(share)
        self._pump()

    def attached(self, domid):
        """(region, image) of a clone the pager serves."""
        return self._clones[domid]

    def detach(self, domid):
        if self._clones.pop(domid, None) is None:
            return
        self.stop_hoard(domid)
        self.pageout_retry.forget(domid)
        self.forks.remove(domid)
        if not self.forks and self._fork_look.running:
            self._fork_look.stop()
        self.source.remove(domid)
        self.ledger.remove_clone(domid)
        for wants in (self._want_map, self._want_host):
            for key in [k for k in wants if k[0] == domid]:
                del wants[key]
        self._held = {k for k in self._held if k[0] != domid}
        self._unreachable = {k for k in self._unreachable if k[0] != domid}
        self.waiting_for_memserver.discard(domid)
        fd = self._stores.pop(domid, None)
        if fd is not None:
            os.close(fd)
        pageout_index.remove(self.store_path(domid))
        self._pump()

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

    def forget_image(self, image_id):
        self._images.pop(image_id, None)
        if self.ledger.images.get(image_id) is not None:
            self.ledger.remove_image(image_id)

    def waiting(self):
        """Faults waiting for a decision, by what they wait for."""
        counts = {"map": len(self._want_map), "evicting": len(self._held),
                  "memserver": len(self._unreachable)}
        for want in self._want_host.values():
            counts[want] = counts.get(want, 0) + 1
        return counts

    def stats(self, domid):
        if not self.ledger.has_clone(domid):
            return None
        stats = self.ledger.clone_stats(domid)
        stats["hoarding"] = domid in self._hoards
        counters = getattr(self._clones[domid][0], "counters", None)
        if counters is not None:    # the faults the guest saw, as C counted them
            stats["guest_faults"] = counters()["faults"]
        return stats

    def prefetch(self, domid, pfns):
        """Map a clone's pages before it faults on them (a recorded working
        set): as many as its room allows, in the given order, copied by C
        off the reactor.  Deferred of the number mapped."""
        region = self._clones[domid][0]
        room = self.ledger.clone_room(domid)
        if not hasattr(region, "prefetch") or room <= 0:
            return defer.succeed(0)
        d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                      region.prefetch, list(pfns)[:room])

        def account(mapped):
            shared, zero = mapped
            if domid in self._clones:
                # A hole punched meanwhile unmapped some: those fault again.
                states = region.states()
                shared = [p for p in shared if states[p] == PageState.SHARED]
                zero = [p for p in zero if states[p] == PageState.ZERO]
                self.ledger.mapped_shared(domid, shared, how="prefetch")
                self.ledger.mapped_zero(domid, zero, how="prefetch")
                self._grant()
            return len(shared) + len(zero)

        return d.addCallback(account)

    def audit(self, domid, kernel):
        """Pages where the ledger, the fast path's state and the kernel's
        ``kernel`` kinds (one per page) disagree: (pfn, ledger, state,
        kernel).  Exact once the clone is quiet; while it runs, records on
        their way show as brief disagreements."""
        states = self._clones[domid][0].states()
        kind = self.ledger.clone(domid).kind
        return [(pfn, kind.get(pfn), states[pfn], k) for pfn, k in enumerate(kernel)
                if (states[pfn], k) not in _AGREE[kind.get(pfn)]]

    def store_path(self, domid):
        return os.path.join(self.store_dir, "clone-%d.pages" % domid)

    # -- the fault path

    def on_faults(self, records):
        """A batch from the fast path: (domid, kind, pfn) tuples, where
        pfn may be a list of one clone's pages of that kind (a storm's, in
        one record), and a fault-around record's is a range."""
        self.observe(records)
        by_kind = defaultdict(lambda: defaultdict(list))
        for domid, kind, pfn in records:
            if kind == FaultKind.AROUND or isinstance(pfn, int):
                by_kind[kind][domid].append(pfn)      # fault-around: runs, kept whole
            else:       # a list, or zero pages around a fault: mostly 1-page runs
                by_kind[kind][domid] += pfn
        for kind, by_clone in by_kind.items():
            for domid in list(by_clone):
                if domid not in self._clones:
                    del by_clone[domid]
                elif kind in _FAST_PATH_STATE:
                    # A page held or evicted since the fast path decided:
                    # the record is stale.  The eviction accounted for it
                    # (a write allowed but not landed was dropped with the
                    # page).
                    states, now = self._clones[domid][0].states(), _FAST_PATH_STATE[kind]
                    if kind == FaultKind.AROUND:
                        by_clone[domid] = [_still(run, states, now) for run in by_clone[domid]]
                    else:
                        by_clone[domid] = [p for p in by_clone[domid] if states[p] == now]
        for domid, pfns in by_kind[FaultKind.SERVED].items():
            self.ledger.mapped_shared(domid, pfns)
            if self._want_map:
                for pfn in pfns:     # a retried fault the fast path served
                    self._want_map.pop((domid, pfn), None)
        for domid, mapped in by_kind[FaultKind.AROUND].items():
            for run in mapped:
                self.ledger.mapped_shared(domid, run, how="around")
        for domid, pfns in by_kind[FaultKind.AROUND_ZERO].items():
            self.ledger.mapped_zero(domid, pfns, how="around")
        for domid, pfns in by_kind[FaultKind.ZERO].items():
            self.ledger.mapped_zero(domid, pfns)
        for domid, pfns in by_kind[FaultKind.WRITTEN].items():
            self.ledger.written(domid, pfns)
        # A fork waits for room: what it wrote so far counts first.
        waiting_forks = [d for d in by_kind[FaultKind.NOCREDIT_WRITE] if d in self.forks]
        if waiting_forks:
            self.forks.sync(waiting_forks, busy=self._in_flight)
        for kind, want in ((FaultKind.NOCREDIT, None), (FaultKind.ERROR, None), (FaultKind.COPY, None),
                           (FaultKind.NOCREDIT_WRITE, "write"), (FaultKind.FETCH, "fetch")):
            for domid, pfns in by_kind[kind].items():
                for pfn in pfns:
                    if want is None:
                        self._want_map[(domid, pfn)] = None
                    else:
                        self._want_host[(domid, pfn)] = want
        for domid, pfns in by_kind[FaultKind.HOLD].items():
            for pfn in pfns:
                if self.ledger.kind(domid, pfn) == L.PAGED_OUT:
                    self._want_host[(domid, pfn)] = "pagein"
                else:   # being evicted: answered when the eviction ends
                    self._held.add((domid, pfn))
        self._pump()

    def stop(self):
        """The daemon stops: no more decisions (the clones' faults wait)."""
        self._stopped = True
        if self._fork_look.running:
            self._fork_look.stop()
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        for domid in list(self._hoards):
            self.stop_hoard(domid)

    def _pump(self):
        """Serve what waits while there is room; evict where there is none."""
        if self._stopped:
            return
        for key in list(self._want_host):
            if self.ledger.host_room() <= 0:
                break
            self._host_go(key, self._want_host.pop(key))
        for key in list(self._want_map):
            domid, pfn = key
            if domid not in self._clones or self.ledger.clone_room(domid) <= 0:
                continue
            del self._want_map[key]
            self._map(domid, pfn)
        if self._want_host:
            self._evict_host(len(self._want_host))
        for domid in {k[0] for k in self._want_map}:
            self._evict_clone(domid, sum(1 for k in self._want_map if k[0] == domid))
        self._grant()

    def _grant(self):
        host, clones = self.ledger.take_credits()
        if self._want_host:
            host = 0                  # first come, first served
        for domid, _ in self._want_map:
            clones[domid] = 0
        self.source.set_credits(host, clones)

    def _map(self, domid, pfn):
        region, image = self._clones[domid]
        if region.states()[pfn] != PageState.ABSENT:
            return      # the fast path got there first (a retried fault)
        if image.zero[pfn]:
            region.load_zero(pfn)
            self.ledger.mapped_zero(domid, [pfn])
        elif not self.ledger.clone(domid).share:
            if self.ledger.host_room() > 0:
                self._copy(domid, pfn)
            else:
                self._want_host[(domid, pfn)] = "copy"
        elif region.load_shared(pfn):
            self.ledger.mapped_shared(domid, [pfn])
        else:
            self._want_host[(domid, pfn)] = "fetch"

    def _host_go(self, key, want):
        domid, pfn = key
        if domid not in self._clones:
            return
        region, image = self._clones[domid]
        if want == "write" and domid in self.forks:
            region.unprotect(pfn)       # the hypervisor allocates it now
            self.ledger.written(domid, [pfn])
        elif want == "write":
            # A page being evicted is not touched: the eviction's end wakes
            # the writer, who faults again.
            state = region.states()[pfn]
            if (key not in self._in_flight and state in (PageState.SHARED, PageState.ZERO)
                    and self.ledger.kind(domid, pfn) in (L.SHARED, L.ZERO)):
                region.unprotect(pfn)
                self.ledger.written(domid, [pfn])
            # else the page left meanwhile: its writer was woken, faults again
        elif want == "fetch":
            self._fetch(domid, pfn)
        elif want == "copy":
            self._copy(domid, pfn)
        else:
            self._page_in(domid, pfn)

    def _fetch(self, domid, pfn):
        """The host does not hold this image page: fetch it, then map it."""
        region, image = self._clones[domid]
        if (image.image_id, pfn) in self._fetching:
            self._want_map[(domid, pfn)] = None   # mapped once the fetch lands
            return
        self._fetching.add((image.image_id, pfn))
        d = self.memserver.fetch(image.image_id, pfn, 1)

        def fill(data):
            image.store_page(pfn, data)
            self.ledger.cached(image.image_id, [pfn])
            self._backoff = RETRY_FIRST
            if domid in self._clones:
                self._want_map[(domid, pfn)] = None
            self._reachable(domid)

        def failed(f):
            self._fetch_failed((domid, pfn), f)

        def done(_):
            self._fetching.discard((image.image_id, pfn))
            self._pump()

        d.addCallbacks(fill, failed).addBoth(done)

    def _fetch_failed(self, key, f):
        """The memory server is gone, hung or cut off: the fault waits, and
        the fetch is retried with backoff (its client reconnects, or
        restarts the local server)."""
        if not self._unreachable and self._retry is None:
            self.log.warn("memory server unreachable ({why}): faults wait, retrying",
                          why=f.getErrorMessage())
        self._unreachable.add(key)
        domid = key[0]
        if domid in self._clones and domid not in self.waiting_for_memserver:
            self.waiting_for_memserver.add(domid)
            self.on_waiting(domid, True)
        if self._retry is None:
            self._retry = self.reactor.callLater(self._backoff, self._retry_fetches)
            self._backoff = min(self._backoff * 2, RETRY_MAX)

    def _retry_fetches(self):
        self._retry = None
        keys, self._unreachable = self._unreachable, set()
        for key in keys:
            if key[0] in self._clones:
                self._want_host[key] = "fetch"
        self._pump()

    def _reachable(self, domid):
        """A fetch for this clone landed: it no longer waits on the server
        unless another of its fetches still does."""
        if domid in self.waiting_for_memserver and not any(
                k[0] == domid for k in self._unreachable):
            self.waiting_for_memserver.discard(domid)
            self.on_waiting(domid, False)

    def _copy(self, domid, pfn):
        """A clone that does not share gets its own copy of an image page,
        from this host's cache (fetched first if the cache lacks it)."""
        region, image = self._clones[domid]
        if region.states()[pfn] != PageState.ABSENT:
            return
        if pfn not in self.ledger.images[image.image_id].cached:
            self._fetch(domid, pfn)
            return
        region.load_copy(pfn, image.read_page(pfn))
        self.ledger.written(domid, [pfn])

    def _page_in(self, domid, pfn):
        """A paged-out page faulted: bring it back from the store, checked."""
        region, _ = self._clones[domid]
        slot, crc = self.ledger.slot(domid, pfn)
        fd = self._stores.get(domid)
        if fd is None:
            fd = self._stores[domid] = os.open(self.store_path(domid), os.O_RDONLY | os.O_CLOEXEC)
        data = os.pread(fd, PAGE_SIZE, slot * PAGE_SIZE)
        if len(data) != PAGE_SIZE or zlib.crc32(data) != crc:
            # Never hand a bad page to the guest: it waits, and says why.
            self.ledger.pageout_failed(domid, "page %d: store record corrupt" % pfn)
            self.log.critical("clone {domid}: page-out record of page {pfn} is corrupt",
                              domid=domid, pfn=pfn)
            return
        region.load_copy(pfn, data)
        self.ledger.paged_in(domid, pfn)

    # -- eviction

    def _evict_clone(self, domid, wanted):
        if ("clone", domid) in self._evicting:
            return
        victims = self.ledger.clone_victims(domid, max(wanted, self.ledger.credit_batch),
                                            self._waiting())
        if not victims:
            self._stall("clone %d is at its limit with nothing it may evict" % domid)
            return
        self._run(("clone", domid), lambda: self._evict_keys(victims, L.DROP_CLEAN))

    def _evict_host(self, wanted):
        if ("host",) in self._evicting:
            return
        want = max(wanted, self.ledger.credit_batch)
        # Cached pages a clone waits to copy are not free to go.
        copying = {(self._clones[d][1].image_id, p) for (d, p), w in self._want_host.items()
                   if w == "copy"}
        free = self.ledger.unmapped_cache(want, copying)
        victims = self.ledger.host_victims(want - len(free), self._waiting())
        if not free and not victims:
            self._stall("host budget reached with nothing to evict")
            return
        self._run(("host",), lambda: ([self._uncache(free)] if free else [])
                  + self._evict_keys(victims, L.DROP_SHARED))

    def _waiting(self):
        """Pages with a fault waiting on them, or already being evicted:
        never choose those."""
        return set(self._want_host) | set(self._want_map) | self._in_flight

    def _stall(self, why):
        if self.stalled != why:
            self.log.warn("faults wait: {why}", why=why)
        self.stalled = why

    def _run(self, tag, make_ops):
        self.stalled = None
        self._evicting.add(tag)
        before = self.ledger.host_stats()
        ops = make_ops()

        def done(result):
            self._evicting.discard(tag)
            if isinstance(result, Failure):      # a bug: the ops handle what they expect
                self.log.failure("eviction {tag} failed", result.value.subFailure, tag=tag)
            if self.ledger.host_stats() == before:
                # Nothing moved (a page not yet free to go): try again in a
                # moment rather than spin.
                self.reactor.callLater(0.001, self._pump)
            else:
                self._pump()

        defer.gatherResults(ops, consumeErrors=True).addBoth(done)

    def _evict_keys(self, victims, shared_class):
        """Deferreds evicting (domid, pfn) keys, grouped by how."""
        drop, out, shared = defaultdict(list), defaultdict(list), defaultdict(set)
        for domid, pfn in victims:
            kind = self.ledger.kind(domid, pfn)
            if kind == L.PRIVATE:
                out[domid].append(pfn)
            elif shared_class == L.DROP_SHARED:
                shared[self.ledger.clone(domid).image_id].add(pfn)
            else:
                drop[domid].append(pfn)
        ops = [self._drop(d, c, L.DROP_CLEAN) for d, p in drop.items() for c in _chunks(p)]
        ops += [self._page_out(d, c) for d, p in out.items() for c in _chunks(p)]
        ops += [self._drop_shared(i, c) for i, p in shared.items() for c in _chunks(sorted(p))]
        return ops

    def _flying(self, domid, pfns, d):
        keys = {(domid, p) for p in pfns}
        self._in_flight |= keys

        def landed(result):
            self._in_flight -= keys
            return result

        return d.addBoth(landed)

    def _drop(self, domid, pfns, cls, release=True):
        region, _ = self._clones[domid]
        before = dict(zip(pfns, region.hold(pfns)))
        d = self._flying(domid, pfns, self.backend.drop_clean(domid, pfns))

        def account(dropped):
            if domid not in self._clones:
                return []
            kept = set(pfns).difference(dropped)
            # The fast path had made these private before the hold.  The
            # kernel kept those written; those it dropped were never written
            # (the writer had not come back yet): no copy existed to lose.
            # The ledger may not have seen such a write yet (its record is
            # on its way, and will be found stale).
            private = {p for p in pfns if before[p] == PageState.PRIVATE}
            # A backend that cannot write-protect (Xen) finds writes only now.
            private |= set(getattr(dropped, "written", ()))
            written = sorted(private & kept)
            if written:
                region.remember(written, PageState.PRIVATE)
                self.ledger.written(domid, written)
            # The rest held no write: dropped, or already unmapped by a hole.
            dropped = sorted(set(pfns) - set(written))
            unwritten = [p for p in dropped if self.ledger.kind(domid, p) == L.PRIVATE]
            self.ledger.unwritten(domid, unwritten)
            self.ledger.dropped_clean(domid, sorted(set(dropped) - set(unwritten)), cls)
            if release:
                region.release(dropped)     # wakes whoever faulted meanwhile
            self._held.difference_update((domid, p) for p in pfns)
            return dropped

        def failed(f):
            if domid in self._clones:
                by_state = defaultdict(list)
                for pfn, state in before.items():
                    by_state[state].append(pfn)
                for state, group in by_state.items():
                    region.remember(group, state)
            self._eviction_failed(domid, f)
            return []

        return d.addCallbacks(account, failed)

    def _page_out(self, domid, pfns):
        region, _ = self._clones[domid]
        region.hold(pfns)
        slots = [self.ledger.slot_for(domid) for _ in pfns]
        d = self._flying(domid, pfns, self.backend.page_out(
            domid, pfns, slots, self.store_path(domid), self.sync))

        def account(crcs):
            if domid in self._clones:
                self.ledger.paged_out(domid, pfns, slots, crcs)
                self.pageout_retry.succeeded(domid)
                for pfn in pfns:     # a fault that came during the page-out
                    if (domid, pfn) in self._held:
                        self._held.discard((domid, pfn))
                        self._want_host[(domid, pfn)] = "pagein"

        def failed(f):
            if domid in self._clones:
                region.remember(pfns, PageState.PRIVATE)    # wakes waiters
                self._held.difference_update((domid, p) for p in pfns)
                self.ledger.clone(domid).free_slots.extend(slots)
                self.pageout_retry.failed(domid, f)
            self._eviction_failed(domid, f)

        return d.addCallbacks(account, failed)

    @defer.inlineCallbacks
    def _drop_shared(self, image_id, pfns):
        """Drop image pages from every clone that maps them, then from the
        host's cache.  The clones' copies stay held until the cache let go,
        so none can map the page again in between."""
        img = self.ledger.images[image_id]
        by_clone = defaultdict(list)
        for pfn in pfns:
            for domid in img.mappers(pfn):
                by_clone[domid].append(pfn)
        results = yield defer.gatherResults(
            [self._drop(domid, p, L.DROP_SHARED, release=False) for domid, p in by_clone.items()])
        try:
            gone = [p for p in pfns if not img.mapcount[p]]
            if gone:
                yield self._uncache([(image_id, p) for p in gone])
        finally:
            # Whatever happened to the cache, the held pages go back to
            # faulting normally: a held page never stays held.
            for (domid, _), dropped in zip(by_clone.items(), results):
                if domid in self._clones:
                    self._clones[domid][0].release(dropped)
                    self._held.difference_update((domid, p) for p in dropped)

    @defer.inlineCallbacks
    def _uncache(self, keys):
        """Let the host's cache go of image pages.  A hole unmaps the page
        from every clone at once, so it is made with no fault being served,
        and any clone that maps the page (even by a record not seen yet)
        faults on it again, to fetch it.  A page some clone was allowed to
        write is punched only once the kernel shows that clone's private
        copy: until the write lands, the clone still maps the cache's page
        (a page-out that found it gone would fail, the page lost to it)."""
        by_image = defaultdict(list)
        for image_id, pfn in keys:
            by_image[image_id].append(pfn)
        landed = set()      # (domid, pfn) whose private copy the kernel showed
        for image_id, pfns in by_image.items():
            for domid, (region, image) in list(self._clones.items()):
                if image.image_id != image_id:
                    continue
                writing = self._writing(domid, pfns)
                for i in range(0, len(writing), 4096):
                    part = writing[i:i + 4096]
                    kinds = yield self.backend.page_kinds(domid, part)
                    landed.update((domid, p) for p, k in zip(part, kinds)
                                  if k == PageState.PRIVATE)

        def punch():
            for image_id, pfns in by_image.items():
                if image_id not in self._images:
                    continue            # discarded meanwhile
                # A clone attached since may map some now.
                mapcount = self.ledger.images[image_id].mapcount
                pfns = [p for p in pfns if not mapcount[p]]
                # Checked here, with no fault served: a write allowed since
                # the kernel was asked is not known to have landed.
                for domid, (region, image) in self._clones.items():
                    if image.image_id == image_id:
                        writing = set(self._writing(domid, pfns))
                        pfns = [p for p in pfns if p not in writing or (domid, p) in landed]
                for region, image in self._clones.values():
                    if image.image_id == image_id:
                        states = region.states()
                        region.release([p for p in pfns if states[p] == PageState.SHARED])
                self._images[image_id].drop_pages(pfns)
                self.ledger.uncached(image_id, pfns)
                for p in pfns:
                    self._punched[(image_id, p)] = self._punch_seq
            self._punch_seq += 1

        self.source.exclusively(punch)

    def _writing(self, domid, pfns):
        """Pages a write was let through to: private in C, or held by a
        page-out (the ledger's private).  Until the kernel shows the copy,
        the clone may still map the image's page."""
        states = self._clones[domid][0].states()
        return [p for p in pfns if states[p] == PageState.PRIVATE or (
            states[p] == PageState.HOLD and self.ledger.kind(domid, p) == L.PRIVATE)]

    def _eviction_failed(self, domid, f):
        if f.check(WireError) and f.value.code in ("busy", "no-domain"):
            self.log.debug("clone {domid}: not evicted now: {why}", domid=domid, why=f.value)
        elif f.check(WireError) and f.value.code in ("pageout-failed", "pageout-full"):
            self.log.error("clone {domid}: page-out stopped, nothing dropped: {why}",
                           domid=domid, why=f.value)
        else:
            self.log.failure("clone {domid}: eviction failed", f, domid=domid)

    # -- operator actions

    def rebudget(self, pages):
        """A new host budget; evict down to it now if it is exceeded."""
        self.ledger.budget_pages = pages
        over = self.ledger.allocated - pages
        if over > 0:
            self._evict_host(over)
        self._grant()

    def evict_to(self, domid, pages):
        """Evict a clone down to ``pages`` resident; Deferred of the count."""
        acct = self.ledger.clone(domid)
        excess = acct.resident - pages
        if excess <= 0:
            return defer.succeed(0)
        victims = self.ledger.clone_victims(domid, excess)
        return defer.gatherResults(self._evict_keys(victims, L.DROP_CLEAN)).addCallback(
            lambda _: max(0, excess - max(0, self.ledger.clone(domid).resident - pages)))

    def hoard(self, domid, rate):
        """Fill the clone's remaining pages in the background, ``rate``
        pages a second, until it is full or at its target."""
        self.stop_hoard(domid)
        done = defer.Deferred()
        per_tick = max(1, rate // 10)
        region, image = self._clones[domid]
        cursor = [0]

        def tick():
            acct = self.ledger.clone(domid)
            states = region.states()
            moved = 0
            while cursor[0] < region.npages and moved < per_tick:
                cap = acct.target if acct.target is not None else acct.npages
                if acct.resident >= cap or self.ledger.clone_room(domid) <= 0:
                    break
                pfn = cursor[0]
                cursor[0] += 1
                if states[pfn] == PageState.ABSENT:
                    self._map(domid, pfn)
                    moved += 1
                elif self.ledger.kind(domid, pfn) == L.PAGED_OUT:
                    self._want_host[(domid, pfn)] = "pagein"
                    moved += 1
            if cursor[0] >= region.npages or moved < per_tick:
                self.stop_hoard(domid)
            self._pump()

        loop = task.LoopingCall(tick)
        loop.clock = self.reactor
        self._hoards[domid] = (loop, done)
        loop.start(0.1)
        return done

    def stop_hoard(self, domid):
        entry = self._hoards.pop(domid, None)
        if entry is not None:
            loop, done = entry
            if loop.running:
                loop.stop()
            done.callback(domid)
