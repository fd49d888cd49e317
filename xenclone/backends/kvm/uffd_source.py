"""The KVM fault source: every clone's userfaultfd, served by C.

One thread runs ``xc_pager_serve`` (the GIL released) over an epoll set of
all clones' userfaultfds.  It maps pages into a clone while that clone has
credits, lets writes make private copies while the host has credits, and
hands the rest, with a record of what it did, to the pager in the reactor.
The reactor changes regions only with the serve loop stopped: it kicks
the loop out through an eventfd and takes the lock.  Credits it adds while
the loop runs (C spends them atomically), so a storm never waits for them.
"""

import errno
import os
import select
import struct
import threading

from twisted.logger import Logger
from zope.interface import implementer

from xenclone._linux import ffi, lib
from xenclone.interfaces import IFaultRegion, IFaultSource

MAX_OUT = 4096
FAULT = struct.Struct("=IIQ")    # struct xc_fault


def _check(rc):
    if rc < 0:
        raise OSError(-rc, os.strerror(-rc))
    return rc


@implementer(IFaultRegion)
class KvmRegion:
    """A clone's guest RAM inside the VMM host, reached through its uffd.

    The state array is shared with the C fast path; every change goes
    through C under the region's lock, with the ioctl that goes with it."""

    fill_mode = "lazy"

    def __init__(self, domid, uffd, base, npages, zero, prefilled=()):
        self.domid = domid
        self.npages = npages
        self._uffd = uffd
        self._state = ffi.new("uint8_t[]", npages)
        self._zero = zero            # cffi buffer shared by the image's clones
        # Mapped (shared) at launch, before the pager.  Their state is the
        # pager's to set: a hole punched since unmapped some of them.
        self.prefilled = list(prefilled)
        self.c_region = ffi.new("struct xc_region *")
        self.c_region.uffd = uffd
        self.c_region.base = base
        self.c_region.npages = npages
        self.c_region.state = self._state
        self.c_region.zero = zero

    @staticmethod
    def zero_buffer(zero_map):
        """The image's zero map in C memory, shared by its clones' regions."""
        return ffi.new("uint8_t[]", bytes(zero_map))

    def fileno(self):
        return self._uffd

    def counters(self):
        r = self.c_region
        return {"faults": r.faults, "minor_fills": r.minor_fills, "zero_fills": r.zero_fills,
                "dup_wakes": r.dup_wakes, "wp_faults": r.wp_faults, "cow_fills": r.cow_fills}

    def load_zero(self, pfn):
        _check(lib.xc_resolve(self.c_region, pfn, 1, lib.XC_ZEROPAGE))

    def load_shared(self, pfn):
        rc = lib.xc_resolve(self.c_region, pfn, 1, lib.XC_CONTINUE)
        if rc in (-errno.ENOENT, -errno.EFAULT):   # not in this host's image cache
            return False
        _check(rc)
        return True

    def unprotect(self, pfn):
        _check(lib.xc_resolve(self.c_region, pfn, 1, lib.XC_UNPROTECT))

    def prefetch(self, pfns):
        """Map absent pages before they fault (blocking: call it off the
        reactor).  Returns (pages mapped shared, pages mapped zero)."""
        got = ffi.new("uint8_t[]", len(pfns))
        _check(lib.xc_prefetch(self.c_region, pfns, len(pfns), got))
        shared, zero = [], []
        for pfn, state in zip(pfns, got):
            if state == lib.XC_PAGE_SHARED:
                shared.append(pfn)
            elif state == lib.XC_PAGE_ZERO:
                zero.append(pfn)
        return shared, zero

    def share(self, on):
        self.c_region.no_share = 0 if on else 1

    def load_copy(self, pfn, data):
        _check(lib.xc_copy_page(self.c_region, pfn, ffi.from_buffer(data)))

    def _set(self, pfns, state):
        pfns = list(pfns)
        prev = ffi.new("uint8_t[]", len(pfns))
        _check(lib.xc_set_state(self.c_region, pfns, len(pfns), state, prev))
        return list(prev)

    def hold(self, pfns):
        """Also write-protects private pages, so a write cannot change one
        while it is paged out. Returns the states the pages had."""
        return self._set(pfns, lib.XC_PAGE_HOLD)

    def wake_all(self):
        _check(lib.xc_resolve(self.c_region, 0, self.npages, lib.XC_WAKE))

    def release(self, pfns):
        self._set(pfns, lib.XC_PAGE_ABSENT)

    def remember(self, pfns, state):
        """A private page also gets its write protection lifted again."""
        self._set(pfns, state)

    def states(self):
        return memoryview(ffi.buffer(self._state)).toreadonly()

    def close(self):
        os.close(self._uffd)


class _Grant:
    """Credits for one C counter, counted since it started: C may have spent
    all it was granted, so what it may spend beyond the records the pager
    has seen is granted - seen.  Setting that to n adds the difference to
    the counter, the serve loop running."""

    def __init__(self, counter):
        self.counter = counter      # int64_t * that C spends from
        self.granted = self.seen = 0

    def set(self, n):
        delta = self.seen + n - self.granted
        if delta:
            lib.xc_add_credits(self.counter, delta)
            self.granted += delta


@implementer(IFaultSource)
class UffdFaultSource:
    log = Logger()

    def __init__(self, reactor, max_regions=4096):
        self.reactor = reactor
        self._epoll = select.epoll()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        _check(lib.xc_epoll_add(self._epoll.fileno(), self._wake, lib.XC_WAKE_DATA))
        self._regions = ffi.new("struct xc_region *[]", max_regions)
        # slot -> KvmRegion; replaced, never changed, so that a batch keeps
        # the slots it was served with
        self._slots = (None,) * max_regions
        self._by_domid = {}
        self._nregions = 0
        self._host_credits = ffi.new("int64_t *")
        self._host_grant = _Grant(self._host_credits)   # pages made private (WRITTEN)
        self._grants = {}                               # domid -> pages mapped (SERVED)
        self._out = ffi.new("struct xc_fault[]", MAX_OUT)
        self._cond = threading.Condition()
        self._holders = 0
        self._stopping = False
        self._thread = None
        self._deliver = None

    def start(self, deliver):
        self._deliver = deliver
        self._thread = threading.Thread(target=self._serve, name="uffd-pager", daemon=True)
        self._thread.start()

    def _serve(self):
        while True:
            with self._cond:
                while self._holders and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                n = lib.xc_pager_serve(self._epoll.fileno(), self._regions, self._nregions,
                                       self._wake, self._host_credits, self._out, MAX_OUT, 100)
                # Little to do holding the GIL: the reactor decodes.
                batch = ffi.buffer(self._out, max(n, 0) * FAULT.size)[:]
                slots = self._slots
            if n < 0:
                self.log.error("pager serve loop: {err}", err=os.strerror(-n))
                continue
            if batch:
                self.reactor.callFromThread(self._delivered, batch, slots)

    def _delivered(self, batch, slots):
        records = [(slots[r].domid, kind, pfn) for r, kind, pfn in FAULT.iter_unpack(batch)]
        for domid, kind, _ in records:
            if kind == lib.XC_SERVED:
                grant = self._grants.get(domid)
                if grant is not None:
                    grant.seen += 1
            elif kind == lib.XC_WRITTEN:
                self._host_grant.seen += 1
        self._deliver(records)

    def exclusively(self, fn):
        """Run ``fn`` with the serve loop out of C."""
        self._holders += 1
        os.eventfd_write(self._wake, 1)
        with self._cond:
            try:
                return fn()
            finally:
                self._holders -= 1
                self._cond.notify_all()

    def add(self, region):
        def add():
            slot = self._slots.index(None)
            self._slots = self._slots[:slot] + (region,) + self._slots[slot + 1:]
            self._regions[slot] = region.c_region
            self._nregions = max(self._nregions, slot + 1)
            self._by_domid[region.domid] = slot
            self._grants[region.domid] = _Grant(ffi.addressof(region.c_region, "credits"))
            _check(lib.xc_epoll_add(self._epoll.fileno(), region.fileno(), slot))

        self.exclusively(add)

    def remove(self, domid):
        def remove():
            slot = self._by_domid.pop(domid, None)
            if slot is None:
                return None
            region = self._slots[slot]
            self._epoll.unregister(region.fileno())
            self._slots = self._slots[:slot] + (None,) + self._slots[slot + 1:]
            self._grants.pop(domid)
            self._regions[slot] = ffi.NULL
            while self._nregions and self._slots[self._nregions - 1] is None:
                self._nregions -= 1
            return region

        region = self.exclusively(remove)
        if region is not None:
            region.close()

    def set_credits(self, host, clones):
        self._host_grant.set(host)
        for domid, n in clones.items():
            grant = self._grants.get(domid)
            if grant is not None:
                grant.set(n)

    def stop(self):
        self._stopping = True
        os.eventfd_write(self._wake, 1)
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
