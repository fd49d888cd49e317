"""Eviction rounds: the pipeline's "room? -> evict" step, and holes in the cache.

A round frees room for waiting faults: from one clone (its limit: clean
pages dropped, private ones paged out) or from the host (its budget: cache
pages no clone maps, private pages paged out, image pages dropped from
every clone that maps them and then punched out of the cache).  The ledger
chooses the victims by policy, sparing pages faults wait on and pages
already being evicted.  Every victim is held first (faults on it come to
Python and wait, parked), so a write cannot land between the decision and
the drop; when the round ends the pipeline is pumped again.
"""

from collections import defaultdict

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from xenclone import ledger as L
from xenclone.interfaces import IUnwatchedWrites, PageState
from xenclone.pager.requests import Waits
from xenclone.wire import WireError

BATCH = 1024     # pages per backend request
RETRY_MIN_S, RETRY_MAX_S = 0.001, 0.5   # a round that moved nothing is retried after


def _chunks(pfns):
    return [pfns[i:i + BATCH] for i in range(0, len(pfns), BATCH)]


class _Spared:
    """Pages no round may choose: faults wait on them, or a round has them."""

    def __init__(self, faults, in_flight):
        self.faults, self.in_flight = faults, in_flight

    def __contains__(self, key):
        return key in self.faults or key in self.in_flight


class Evictor:
    log = Logger()

    def __init__(self, pager, sync):
        self.pager = pager
        self.ledger = pager.ledger
        self.backend = pager.backend
        self.faults = pager.faults
        self.sync = sync
        self.stalled = None            # why faults wait with nothing to evict
        self._rounds = set()           # ("clone", domid) / ("host",) rounds in flight
        self._in_flight = set()        # (domid, pfn) a round works on
        self.punch_seq, self._punched = 0, {}   # (image id, pfn) -> seq when its hole was made
        self._spared = _Spared(self.faults, self._in_flight)
        self._retry_s = RETRY_MIN_S     # after a round that moved nothing
        self._logged = set()            # failures logged since a round last moved pages

    @property
    def _clones(self):
        return self.pager.clones

    @property
    def flying(self):
        """(domid, pfn) the rounds work on now (read, never change)."""
        return self._in_flight

    def in_flight(self, domid, pfn):
        return (domid, pfn) in self._in_flight

    def punched_since(self, image_id, pfn, since=None):
        """Whether the cache let the page go at or after ``since`` (default: now)."""
        since = self.punch_seq if since is None else since
        return self._punched.get((image_id, pfn), -1) >= since

    # -- rounds

    def evict_clone(self, domid, wanted):
        if ("clone", domid) in self._rounds:
            return
        victims = self.ledger.clone_victims(domid, max(wanted, self.ledger.credit_batch),
                                            self._spared)
        if not victims:
            self._stall("clone %d is at its limit with nothing it may evict" % domid)
            return
        self._run(("clone", domid), lambda: self._evict_keys(victims, L.DROP_CLEAN))

    def evict_host(self, wanted):
        if ("host",) in self._rounds:
            return
        want = max(wanted, self.ledger.credit_batch)
        # Cached pages a clone waits to copy are not free to go.
        copying = {(self._clones[d][1].image_id, p) for d, p in self.faults.copying()}
        free = self.ledger.unmapped_cache(want, copying)
        victims = self.ledger.host_victims(want - len(free), self._spared)
        if not free and not victims:
            self._stall("host budget reached with nothing to evict")
            return
        self.log.debug("host round: {free} cache pages, {victims} victims for {wanted} faults",
                       free=len(free), victims=len(victims), wanted=wanted)
        self._run(("host",), lambda: ([self._uncache(free)] if free else [])
                  + self._evict_keys(victims, L.DROP_SHARED))

    def evict_now(self, domid, count):
        """An operator's eviction of ``count`` pages from a clone; Deferred."""
        victims = self.ledger.clone_victims(domid, count)
        return defer.gatherResults(self._evict_keys(victims, L.DROP_CLEAN))

    def _stall(self, why):
        if self.stalled != why:
            self.log.warn("faults wait: {why}", why=why)
        self.stalled = why

    def _run(self, tag, make_ops):
        self.stalled = None
        self._rounds.add(tag)
        before = self.ledger.host_stats()
        ops = make_ops()

        def done(result):
            self._rounds.discard(tag)
            if isinstance(result, Failure):      # a bug: the ops handle what they expect
                self._log_once(result.value.subFailure, "eviction {tag} failed", tag=tag)
            moved = self.ledger.host_stats() != before
            self.log.debug("round {tag} ends: {moved}", tag=tag,
                           moved="moved" if moved else "nothing moved")
            if not moved:
                # Nothing moved (a page not yet free to go, or a failure):
                # try again in a moment, longer each time, rather than spin.
                self.pager.reactor.callLater(self._retry_s, self.pager.pump)
                self._retry_s = min(2 * self._retry_s, RETRY_MAX_S)
            else:
                self._retry_s, self._logged = RETRY_MIN_S, set()
                self.pager.pump()

        defer.gatherResults(ops, consumeErrors=True).addBoth(done)

    def _evict_keys(self, victims, shared_class):
        """Deferreds evicting (domid, pfn) keys, grouped by how."""
        drop, out, shared = defaultdict(list), defaultdict(list), defaultdict(set)
        for domid, pfn in victims:
            kind = self.ledger.kind(domid, pfn)
            if kind == L.PRIVATE:
                out[domid].append(pfn)
            elif shared_class == L.DROP_SHARED:
                shared[self.ledger.image_of(domid)].add(pfn)
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

    # -- how pages go

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
            if IUnwatchedWrites.providedBy(self.backend):
                private |= set(dropped.written)     # writes found only now
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
            self.faults.unpark(domid, pfns, Waits.EVICTION)
            return dropped

        def failed(f):
            if domid in self._clones:
                by_state = defaultdict(list)
                for pfn, state in before.items():
                    by_state[state].append(pfn)
                for state, group in by_state.items():
                    region.remember(group, state)
            self._failed(domid, f)
            return []

        return d.addCallbacks(account, failed)

    def _page_out(self, domid, pfns):
        region, _ = self._clones[domid]
        region.hold(pfns)
        slots = self.ledger.take_slots(domid, len(pfns))
        d = self._flying(domid, pfns, self.backend.page_out(
            domid, pfns, slots, self.pager.store_path(domid), self.sync))

        def account(crcs):
            if domid in self._clones:
                out = [(p, s, c) for p, s, c in zip(pfns, slots, crcs) if c is not None]
                stayed = [(p, s) for p, s, c in zip(pfns, slots, crcs) if c is None]
                if out:
                    self.ledger.paged_out(domid, *map(list, zip(*out)))
                self.pager.pageout_retry.succeeded(domid)
                # A fault that came during the page-out: loaded back now.
                paged = {p for p, _, _ in out}
                for pfn in self.faults.unpark(domid, pfns, Waits.EVICTION):
                    if pfn in paged:
                        self.faults.wait_host(domid, pfn, Waits.PAGE_IN)
                if stayed:      # touched meanwhile: still private, in memory
                    self.ledger.free_slots(domid, [s for _, s in stayed])
                    region.remember([p for p, _ in stayed], PageState.PRIVATE)

        def failed(f):
            if domid in self._clones:
                region.remember(pfns, PageState.PRIVATE)    # wakes waiters
                self.faults.unpark(domid, pfns, Waits.EVICTION)
                self.ledger.free_slots(domid, slots)
                self.pager.pageout_retry.failed(domid, f)
            self._failed(domid, f)

        return d.addCallbacks(account, failed)

    @defer.inlineCallbacks
    def _drop_shared(self, image_id, pfns):
        """Drop image pages from every clone that maps them, then from the
        host's cache.  The clones' copies stay held until the cache let go,
        so none can map the page again in between."""
        by_clone = defaultdict(list)
        for pfn in pfns:
            for domid in self.ledger.mappers(image_id, pfn):
                by_clone[domid].append(pfn)
        results = yield defer.gatherResults(
            [self._drop(domid, p, L.DROP_SHARED, release=False) for domid, p in by_clone.items()])
        try:
            gone = [p for p in pfns if not self.ledger.mapped(image_id, p)]
            if gone:
                yield self._uncache([(image_id, p) for p in gone])
        finally:
            # Whatever happened to the cache, the held pages go back to
            # faulting normally: a held page never stays held.
            for (domid, _), dropped in zip(by_clone.items(), results):
                if domid in self._clones:
                    self._clones[domid][0].release(dropped)
                    self.faults.unpark(domid, dropped, Waits.EVICTION)

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
                if image_id not in self.pager.images:
                    continue            # discarded meanwhile
                # A clone attached since may map some now.
                pfns = [p for p in pfns if not self.ledger.mapped(image_id, p)]
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
                self.pager.images[image_id].drop_pages(pfns)
                self.ledger.uncached(image_id, pfns)
                for p in pfns:
                    self._punched[(image_id, p)] = self.punch_seq
            self.punch_seq += 1

        self.pager.source.exclusively(punch)

    def _writing(self, domid, pfns):
        """Pages a write was let through to: private in C, or held by a
        page-out (the ledger's private).  Until the kernel shows the copy,
        the clone may still map the image's page."""
        states = self._clones[domid][0].states()
        return [p for p in pfns if states[p] == PageState.PRIVATE or (
            states[p] == PageState.HOLD and self.ledger.kind(domid, p) == L.PRIVATE)]

    def _failed(self, domid, f):
        if f.check(WireError) and f.value.code in ("busy", "no-domain"):
            self.log.debug("clone {domid}: not evicted now: {why}", domid=domid, why=f.value)
        elif f.check(WireError) and f.value.code in ("pageout-failed", "pageout-full"):
            self.log.error("clone {domid}: page-out stopped, nothing dropped: {why}",
                           domid=domid, why=f.value)
        else:
            self._log_once(f, "clone {domid}: eviction failed", domid=domid)

    def _log_once(self, f, fmt, **fields):
        """A failure the retries would repeat is logged once, until a
        round moves pages again."""
        key = (fmt, repr(sorted(fields.items())), repr(f.value))
        if key not in self._logged:
            self._logged.add(key)
            self.log.failure(fmt, f, **fields)
