"""Fakes of the hypervisor side, for fast tests of the core.

The interface tests run the same cases against these and the KVM backend.
"""

import os

from twisted.internet import defer
from zope.interface import implementer

from xenclone.image import Capture, OpenImage
from xenclone.pageout_store import write_pages
from xenclone.wire import ConnectionLost, WireError
from xenclone.interfaces import (IBackend, IFaultRegion, IFaultSource, IMemoryServer, FaultKind,
                                 PageState)


def page_data(domid, pfn):
    """What the fake says a clone's private page holds."""
    return bytes([(domid * 7 + pfn) % 251]) * 4096


@implementer(IFaultRegion)
class FakeRegion:
    def __init__(self, domid, npages, cache=None):
        self.domid = domid
        self.npages = npages
        self.prefilled = []
        self.state = bytearray(npages)
        self.loaded = {}       # pfn -> "zero" | "shared" | bytes
        self.woken = []
        self.cache = cache     # the host's copy of the image (FakeImageData)
        self.closed = False
        self.sharing = True
        self.fill_mode = "lazy"

    def fileno(self):
        return -1

    def load_zero(self, pfn):
        self.loaded[pfn] = "zero"
        self.state[pfn] = PageState.ZERO

    def load_shared(self, pfn):
        if self.cache is not None and pfn in self.cache.missing:
            return False
        self.loaded[pfn] = "shared"
        self.state[pfn] = PageState.SHARED
        return True

    def unprotect(self, pfn):
        self.loaded[pfn] = "written"
        self.state[pfn] = PageState.PRIVATE

    def share(self, on):
        self.sharing = on

    def load_copy(self, pfn, data):
        self.loaded[pfn] = bytes(data)
        self.state[pfn] = PageState.PRIVATE

    def hold(self, pfns):
        before = [self.state[pfn] for pfn in pfns]
        for pfn in pfns:
            self.state[pfn] = PageState.HOLD
        return before

    def wake_all(self):
        self.woken.extend(range(self.npages))

    def release(self, pfns):
        for pfn in pfns:
            self.state[pfn] = PageState.ABSENT
        self.woken.extend(pfns)

    def remember(self, pfns, state):
        for pfn in pfns:
            self.state[pfn] = state
        self.woken.extend(pfns)

    def states(self):
        return bytes(self.state)

    def close(self):
        self.closed = True


@implementer(IFaultSource)
class FakeSource:
    def __init__(self):
        self._deliver = None
        self.regions = {}
        self.credits = 0
        self.clone_credits = {}
        self.stopped = False

    def start(self, deliver):
        self._deliver = deliver

    def deliver(self, records):
        """As the C fast path does: the page state first, then the record."""
        states = {FaultKind.SERVED: PageState.SHARED, FaultKind.ZERO: PageState.ZERO,
                  FaultKind.WRITTEN: PageState.PRIVATE, FaultKind.AROUND: PageState.SHARED,
                  FaultKind.AROUND_ZERO: PageState.ZERO}
        for domid, kind, pfn in records:
            region = self.regions.get(domid)
            if region is not None and kind in states:
                for p in pfn if kind in FaultKind.RUNS else [pfn]:
                    region.state[p] = states[kind]
        self._deliver(records)

    def add(self, region):
        self.regions[region.domid] = region

    def remove(self, domid):
        self.regions.pop(domid, None)

    def exclusively(self, fn):
        return fn()

    def set_credits(self, host, clones):
        self.credits = host
        self.clone_credits = dict(clones)

    def stop(self):
        self.stopped = True


@implementer(IBackend)
class FakeBackend:
    name = "fake"
    fill_mode = "lazy"

    def __init__(self):
        self.states = {}      # domid -> state
        self.regions = {}      # domid -> FakeRegion of launched clones
        self.written = {}      # domid -> pages the guest wrote (never droppable)
        self.drops = []
        self.pageouts = []
        self.pageout_error = None
        self.pending_drops = []
        self.hold_drops = False
        self.pending_kinds = []     # (Deferred, kinds) while hold_kinds
        self.hold_kinds = False

    def _known(self, domid):
        if domid not in self.states:
            raise WireError("no-domain", "no domain %r" % (domid,))

    def capabilities(self):
        return {"backend": "fake"}

    def create_master(self, spec):
        self.states[spec.domid] = "ready"
        return defer.succeed({"domid": spec.domid, "state": "ready"})

    def capture(self, domid):
        self._known(domid)
        self.states[domid] = "paused"
        fd = os.memfd_create("fake-master")
        return defer.succeed(Capture("fake", b"regs", fd, 0))

    def launch(self, image, clone):
        self.states[clone.domid] = "paused" if clone.paused else "running"
        region = FakeRegion(clone.domid, image.npages)
        self.regions[clone.domid] = region
        return defer.succeed(region)

    def domains(self):
        return defer.succeed([{"domid": d, "state": s, "meta": {}} for d, s in self.states.items()])

    def reattach(self, domid, image):
        def region(_):
            region = FakeRegion(domid, image.npages)
            self.regions[domid] = region
            return region, [PageState.ABSENT] * image.npages

        return defer.maybeDeferred(self._known, domid).addCallback(region)

    def pause(self, domid):
        return defer.maybeDeferred(self._set, domid, "paused")

    def unpause(self, domid):
        return defer.maybeDeferred(self._set, domid, "running")

    def _set(self, domid, state):
        self._known(domid)
        self.states[domid] = state
        return {"domid": domid, "state": state}

    def destroy(self, domid):
        return defer.maybeDeferred(self._known, domid).addCallback(
            lambda _: self.states.pop(domid))

    def page_kinds(self, domid, pfns):
        region = self.regions.get(domid)
        kinds = [region.state[p] if region is not None else 0 for p in pfns]
        if self.hold_kinds:
            d = defer.Deferred()
            self.pending_kinds.append((d, kinds))
            return d
        return defer.succeed(kinds)

    def page_sums(self, domid, pfns):
        return defer.maybeDeferred(self._known, domid).addCallback(lambda _: [0] * len(pfns))

    def page_out(self, domid, pfns, slots, store_path, sync):
        if domid not in self.states:
            return defer.fail(WireError("no-domain", "no domain %r" % (domid,)))
        region = self.regions.get(domid)
        npages = region.npages if region is not None else 2**32
        if (not os.path.isabs(store_path) or len(pfns) != len(slots)
                or not all(0 <= p < npages for p in pfns)):
            return defer.fail(WireError("bad-request", "bad page-out request"))
        if region is not None and any(region.loaded.get(p) is None for p in pfns):
            return defer.fail(WireError("not-held", "not held private pages: %s" % pfns))
        if self.pageout_error:
            code = "pageout-full" if "No space" in self.pageout_error else "pageout-failed"
            return defer.fail(WireError(code, self.pageout_error))
        self.pageouts.append((domid, list(pfns)))
        data = b"".join(page_data(domid, pfn) for pfn in pfns)
        return defer.succeed(write_pages(store_path, pfns, slots, data, sync))

    def scan(self, domid):
        def count(_):
            region = self.regions.get(domid)
            npages = region.npages if region is not None else 0
            return {"shared": 0, "private": 0, "zero": 0, "absent": npages}

        return defer.maybeDeferred(self._known, domid).addCallback(count)

    def drop_clean(self, domid, pfns):
        if domid not in self.states:
            return defer.fail(WireError("no-domain", "no domain %r" % (domid,)))
        self.drops.append((domid, list(pfns)))
        dropped = [p for p in pfns if p not in self.written.get(domid, ())]
        if self.hold_drops:
            d = defer.Deferred()
            self.pending_drops.append((d, dropped))
            return d
        return defer.succeed(dropped)


@implementer(IMemoryServer)
class FakeMemoryServer:
    def __init__(self):
        self.fetches = []
        self.down = False       # fetches fail as on a lost link

    def put(self, name, capture):
        return defer.succeed({"image_id": name})

    def open(self, image_id):
        return defer.fail(KeyError(image_id))

    def fetch(self, image_id, pfn, count):
        self.fetches.append((image_id, pfn, count))
        if self.down:
            return defer.fail(ConnectionLost("cannot reach the memory server"))
        return defer.succeed(bytes([pfn % 251]) * 4096 * count)

    def discard(self, image_id):
        return defer.succeed(None)

    def images(self):
        return defer.succeed([])

    def domain(self, action, force=False):
        return defer.succeed({"running": False, "memory_mib": 0})


class FakeImageData:
    """An OpenImage whose cache writes are recorded instead of stored."""

    def __init__(self, npages, zero_pages=()):
        zero = bytearray(npages)
        for p in zero_pages:
            zero[p] = 1
        self.image = OpenImage("img", "gen1", "fake", b"", npages, -1, bytes(zero))
        self.stored = {}
        self.dropped = []
        self.missing = set()   # pages this host's cache lacks

    def __getattr__(self, name):
        return getattr(self.image, name)

    def store_page(self, pfn, data):
        self.stored[pfn] = data
        self.missing.discard(pfn)

    def cached_pages(self):
        return [p for p in range(self.image.npages)
                if not self.image.zero[p] and p not in self.missing]

    def read_page(self, pfn):
        assert pfn not in self.missing, "read of an uncached image page"
        return self.stored.get(pfn, bytes([pfn % 251]) * 4096)

    def drop_pages(self, pfns):
        self.missing.update(pfns)
        self.dropped.extend(pfns)
