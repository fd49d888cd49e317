"""Fakes of the hypervisor side, for fast tests of the core.

The interface tests run the same cases against these and the KVM backend.
"""

import os

from twisted.internet import defer
from zope.interface import implementer

from xenclone.image import Capture, OpenImage
from xenclone.wire import WireError
from xenclone.interfaces import IBackend, IFaultRegion, IFaultSource, IMemoryServer


@implementer(IFaultRegion)
class FakeRegion:
    def __init__(self, domid, npages, cache=None):
        self.domid = domid
        self.npages = npages
        self.c_region = None
        self.prefilled = []
        self.loaded = {}       # pfn -> "zero" | "shared" | bytes
        self.cache = cache     # the host's copy of the image (FakeImageData)
        self.present = set()

    def fileno(self):
        return -1

    def load_zero(self, pfn):
        self.loaded[pfn] = "zero"
        self.present.add(pfn)

    def load_shared(self, pfn):
        if self.cache is not None and pfn in self.cache.missing:
            return False
        self.loaded[pfn] = "shared"
        self.present.add(pfn)
        return True

    def load_copy(self, pfn, data):
        self.loaded[pfn] = bytes(data)
        self.present.add(pfn)

    def forget(self, pfns):
        self.present.difference_update(pfns)

    def remember(self, pfns):
        self.present.update(pfns)

    def close(self):
        self.closed = True


@implementer(IFaultSource)
class FakeSource:
    def __init__(self):
        self.deliver = None
        self.regions = {}
        self.credits = 0
        self.stopped = False

    def start(self, deliver):
        self.deliver = deliver

    def add(self, region):
        self.regions[region.domid] = region

    def remove(self, domid):
        self.regions.pop(domid, None)

    def set_credits(self, count):
        self.credits = count

    def stop(self):
        self.stopped = True


@implementer(IBackend)
class FakeBackend:
    name = "fake"

    def __init__(self):
        self.domains = {}      # domid -> state
        self.written = {}      # domid -> pages the guest wrote (never droppable)
        self.drops = []
        self.pending_drops = []
        self.hold_drops = False

    def _known(self, domid):
        if domid not in self.domains:
            raise WireError("no-domain", "no domain %r" % (domid,))

    def capabilities(self):
        return {"backend": "fake"}

    def create_master(self, spec):
        self.domains[spec.domid] = "ready"
        return defer.succeed({"domid": spec.domid, "state": "ready"})

    def capture(self, domid):
        self._known(domid)
        self.domains[domid] = "paused"
        fd = os.memfd_create("fake-master")
        return defer.succeed(Capture("fake", b"regs", fd, 0))

    def launch(self, image, clone):
        self.domains[clone.domid] = "paused" if clone.paused else "running"
        return defer.succeed(FakeRegion(clone.domid, image.npages))

    def pause(self, domid):
        return defer.maybeDeferred(self._set, domid, "paused")

    def unpause(self, domid):
        return defer.maybeDeferred(self._set, domid, "running")

    def _set(self, domid, state):
        self._known(domid)
        self.domains[domid] = state
        return {"domid": domid, "state": state}

    def destroy(self, domid):
        return defer.maybeDeferred(self._known, domid).addCallback(
            lambda _: self.domains.pop(domid))

    def page_sums(self, domid, pfns):
        return defer.maybeDeferred(self._known, domid).addCallback(lambda _: [0] * len(pfns))

    def drop_clean(self, domid, pfns, blocked=False):
        if domid not in self.domains:
            return defer.fail(WireError("no-domain", "no domain %r" % (domid,)))
        self.drops.append((domid, list(pfns), blocked))
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

    def put(self, name, capture):
        return defer.succeed({"image_id": name})

    def open(self, image_id):
        return defer.fail(KeyError(image_id))

    def fetch(self, image_id, pfn, count):
        self.fetches.append((image_id, pfn, count))
        return defer.succeed(bytes([pfn % 251]) * 4096 * count)

    def discard(self, image_id):
        return defer.succeed(None)

    def images(self):
        return defer.succeed([])


class FakeImageData:
    """An OpenImage whose cache writes are recorded instead of stored."""

    def __init__(self, npages, zero_pages=()):
        zero = bytearray(npages)
        for p in zero_pages:
            zero[p] = 1
        self.image = OpenImage("img", "gen1", "fake", b"", npages, -1, bytes(zero))
        self.stored = {}
        self.missing = set()   # pages this host's cache lacks

    def __getattr__(self, name):
        return getattr(self.image, name)

    def store_page(self, pfn, data):
        self.stored[pfn] = data
        self.missing.discard(pfn)
