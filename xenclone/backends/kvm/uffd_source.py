"""The KVM fault source: every clone's userfaultfd, served by C.

A native thread runs ``lx_pager_serve`` over an epoll set of all clones'
userfaultfds, never waiting for Python: its records go into a ring that
the reactor empties when an eventfd says there are some.  It maps pages
into a clone while that clone has credits, lets writes make private copies
while the host has credits, and hands the rest, with a record of what it
did, to the pager in the reactor.  The reactor changes regions only with
the thread paused; credits it adds while the thread runs (C spends them
atomically), so a storm never waits for them."""

import errno
import os
import select

from twisted.logger import Logger
from twisted.internet.interfaces import IReadDescriptor
from zope.interface import implementer

from xenclone._linux import ffi, lib
from xenclone.interfaces import (
    FaultKind, IFaultAroundRegion, IFaultCounters, IFaultRegion, IFaultSource, INativeFaultRegion,
    IPrefetchRegion)

MAX_OUT = 4096      # records taken from the ring at a time
RING = 1 << 16      # records C may serve ahead of the reactor


def _check(rc):
    if rc < 0:
        raise OSError(-rc, os.strerror(-rc))
    return rc


@implementer(IFaultRegion, IFaultCounters, INativeFaultRegion, IFaultAroundRegion,
             IPrefetchRegion)
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
        self._around = None          # fault-around's per-chunk fault counts
        # Mapped (shared) at launch, before the pager.  Their state is the
        # pager's to set: a hole punched since unmapped some of them.
        self.prefilled = list(prefilled)
        self.c_region = ffi.new("struct lx_region *")
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
                "dup_wakes": r.dup_wakes, "wp_faults": r.wp_faults, "cow_fills": r.cow_fills,
                "around_fills": r.around_fills}

    def load_zero(self, pfn):
        _check(lib.lx_resolve(self.c_region, pfn, 1, lib.LX_ZEROPAGE))

    def load_shared(self, pfn):
        rc = lib.lx_resolve(self.c_region, pfn, 1, lib.LX_CONTINUE)
        if rc in (-errno.ENOENT, -errno.EFAULT):   # not in this host's image cache
            return False
        _check(rc)
        return True

    def unprotect(self, pfn):
        _check(lib.lx_resolve(self.c_region, pfn, 1, lib.LX_UNPROTECT))

    def prefetch(self, pfns):
        """Map absent pages before they fault (blocking: call it off the
        reactor).  Returns (pages mapped shared, pages mapped zero)."""
        got = ffi.new("uint8_t[]", len(pfns))
        _check(lib.lx_prefetch(self.c_region, pfns, len(pfns), got))
        shared, zero = [], []
        for pfn, state in zip(pfns, got):
            if state == lib.LX_PAGE_SHARED:
                shared.append(pfn)
            elif state == lib.LX_PAGE_ZERO:
                zero.append(pfn)
        return shared, zero

    def share(self, on):
        self.c_region.no_share = 0 if on else 1

    def fault_around(self, max_pages):
        """C maps up to ``max_pages`` (a power of two, 0 = off) of the
        image around a fault it serves; see ``around`` in fault_serve.c."""
        if self._around is None:
            self._around = ffi.new("uint8_t[]", self.npages // lib.LX_AROUND_CHUNK + 1)
            self.c_region.around = self._around
        self.c_region.around_max = max_pages

    def load_copy(self, pfn, data):
        _check(lib.lx_copy_page(self.c_region, pfn, ffi.from_buffer(data)))

    def _set(self, pfns, state):
        pfns = list(pfns)
        prev = ffi.new("uint8_t[]", len(pfns))
        _check(lib.lx_set_state(self.c_region, pfns, len(pfns), state, prev))
        return list(prev)

    def hold(self, pfns):
        """Also write-protects private pages, so a write cannot change one
        while it is paged out. Returns the states the pages had."""
        return self._set(pfns, lib.LX_PAGE_HOLD)

    def wake_all(self):
        _check(lib.lx_resolve(self.c_region, 0, self.npages, lib.LX_WAKE))

    def release(self, pfns):
        self._set(pfns, lib.LX_PAGE_ABSENT)

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
            lib.lx_add_credits(self.counter, delta)
            self.granted += delta


@implementer(IFaultSource, IReadDescriptor)
class UffdFaultSource:
    """Also the reactor's reader of the serve thread's notify eventfd."""

    log = Logger()

    def __init__(self, reactor, max_regions=4096):
        self.reactor = reactor
        self._epoll = select.epoll()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._notify = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        _check(lib.lx_epoll_add(self._epoll.fileno(), self._wake, lib.LX_WAKE_DATA))
        self._regions = ffi.new("struct lx_region *[]", max_regions)
        self._slots = [None] * max_regions    # slot -> KvmRegion
        self._by_domid = {}
        self._host_credits = ffi.new("int64_t *")
        self._host_grant = _Grant(self._host_credits)   # pages made private (WRITTEN)
        self._grants = {}                               # domid -> pages mapped (SERVED)
        self._ring = ffi.new("struct lx_fault[]", RING)
        self._out = ffi.new("struct lx_fault[]", MAX_OUT)
        self._groups = ffi.new("struct lx_group[]", MAX_OUT)
        self._pfns = ffi.new("uint64_t[]", MAX_OUT)
        self._server = ffi.new("struct lx_server *")
        self._pending = []      # records taken while C was paused, not delivered yet
        self._deliver = None

    def start(self, deliver):
        self._deliver = deliver
        _check(lib.lx_server_start(self._server, self._epoll.fileno(), self._wake, self._notify,
                                   self._regions, 0, self._host_credits, self._ring, RING))
        self.reactor.addReader(self)

    def fileno(self):
        return self._notify

    def doRead(self):
        try:
            os.eventfd_read(self._notify)
        except BlockingIOError:
            pass
        err = lib.lx_server_error(self._server)
        if err:
            self.log.error("pager serve loop: {err}", err=os.strerror(err))
        self._take()
        records, self._pending = self._pending, []
        if records:
            self._delivered(records)

    def logPrefix(self):
        return "uffd-pager"

    def connectionLost(self, reason):
        pass

    def _take(self):
        """Records C served into _pending, grouped: (domid, kind, pfns)
        with a list of the pages of one clone and kind, in the order they
        were served; a run mapped around a fault as (domid, AROUND or
        AROUND_ZERO, range).  The slots are those they were served with:
        slots change only while C is paused, and only once the ring is
        empty.  C's kinds are ``FaultKind``'s numbers (its no-credit
        faults are MISSING and WRITE), so they pass as they are."""
        groups, pfns, slots = self._groups, self._pfns, self._slots
        while True:
            n = lib.lx_server_take(self._server, self._out, MAX_OUT)
            for i in range(lib.lx_group_records(self._out, n, groups, pfns)):
                g = groups[i]
                first, count, kind = g.first, g.count, g.kind
                self._pending.append((slots[g.region].domid, kind,
                                      range(first, first + count) if kind in FaultKind.RUNS
                                      else ffi.unpack(pfns + first, count)))
            if n < MAX_OUT:
                return

    def _delivered(self, records):
        for domid, kind, pfns in records:
            if kind == lib.LX_SERVED or kind == lib.LX_AROUND:
                grant = self._grants.get(domid)
                if grant is not None:
                    grant.seen += len(pfns)
            elif kind == lib.LX_WRITTEN:
                self._host_grant.seen += len(pfns)
        self._deliver(records)

    def exclusively(self, fn):
        """Run ``fn`` with the serve loop out of C (and its records taken,
        delivered on the reactor's next turn)."""
        lib.lx_server_pause(self._server)
        try:
            self._take()
            if self._pending:
                os.eventfd_write(self._notify, 1)
            return fn()
        finally:
            lib.lx_server_resume(self._server)

    def add(self, region):
        def add():
            slot = self._slots.index(None)
            self._slots[slot] = region
            self._regions[slot] = region.c_region
            self._server.nregions = max(self._server.nregions, slot + 1)
            self._by_domid[region.domid] = slot
            self._grants[region.domid] = _Grant(ffi.addressof(region.c_region, "credits"))
            _check(lib.lx_epoll_add(self._epoll.fileno(), region.fileno(), slot))

        self.exclusively(add)

    def remove(self, domid):
        def remove():
            slot = self._by_domid.pop(domid, None)
            if slot is None:
                return None
            region = self._slots[slot]
            self._epoll.unregister(region.fileno())
            self._slots[slot] = None
            self._grants.pop(domid)
            self._regions[slot] = ffi.NULL
            while self._server.nregions and self._slots[self._server.nregions - 1] is None:
                self._server.nregions -= 1
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
        lib.lx_server_stop(self._server)
        if self._deliver is not None:
            self.reactor.removeReader(self)
