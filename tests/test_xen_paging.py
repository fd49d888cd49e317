"""The lazy Xen region's request bookkeeping, with fake rings (no Xen):
every request is answered exactly once, faults reach the pager once per
page, and waiting faults go back to the pager when their page changes."""

import errno
import os
from collections import namedtuple

from twisted.internet import task
from twisted.trial import unittest

from xenclone.backends.xen import libxc
from xenclone.backends.xen.paging import PagedRegion, PagingSource
from xenclone.image import OpenImage
from xenclone.interfaces import PAGE_SIZE, FaultKind, PageState

Req = namedtuple("Req", "gfn dropped evict_fails", defaults=(False,))


class FakeRing:
    port = 7

    def __init__(self):
        self.queue, self.answered, self.closed = [], [], False
        self.taken = 0

    def take(self):
        out, self.queue = self.queue[:3], self.queue[3:]    # in batches, as the ring
        self.taken += len(out)
        return out

    def indices(self):
        return {"req_prod": self.taken + len(self.queue), "req_cons": self.taken,
                "rsp_prod": len(self.answered), "rsp_event": len(self.answered) + 1}

    def respond(self, reqs):
        self.answered.extend(reqs)

    def close(self):
        self.closed = True


class FakeEvtChn:
    def __init__(self):
        self.notified, self.fired = 0, []

    def bind_interdomain(self, domid, port):
        return 40 + domid

    def fileno(self):
        return -1

    def notify(self, port):
        self.notified += 1

    def pending(self):
        return self.fired.pop(0)

    def unmask(self, port):
        pass

    def unbind(self, port):
        pass


class FakeXc:
    def __init__(self, present=()):
        self.loads, self.present = [], set(present)

    def paging_load(self, domid, gfn, data):
        if gfn in self.present:
            raise libxc.XenError("xc_mem_paging_load", errno.ENOENT)
        self.loads.append((gfn, bytes(data[:4])))


def image(npages, cached=()):
    """An image whose memfd holds ``cached`` pages (page n filled with n)."""
    fd = os.memfd_create("test-image")
    os.ftruncate(fd, npages * PAGE_SIZE)
    for pfn in cached:
        os.pwrite(fd, bytes([pfn]) * PAGE_SIZE, pfn * PAGE_SIZE)
    return OpenImage("img", "g1", "xen-pvh-x86", b"", npages, fd, bytes(npages))


class PagedRegionTests(unittest.TestCase):
    def setUp(self):
        self.ring, self.evtchn, self.xc = FakeRing(), FakeEvtChn(), FakeXc()
        self.image = image(32, cached=[1])
        self.addCleanup(os.close, self.image.mem_fd)
        self.region = PagedRegion(self.xc, self.evtchn, self.ring, 5, self.image)

    def test_one_fault_per_page_and_every_request_answered(self):
        """Xen may ask several times for one page: one fault for the
        pager, and loading the page answers every request."""
        self.ring.queue = [Req(3, False), Req(3, False), Req(9, False), Req(3, False)]
        self.assertEqual(self.region.take(),
                         [(5, FaultKind.MISSING, 3), (5, FaultKind.MISSING, 9)])
        self.region.load_copy(3, b"abcd" * 1024)
        self.assertEqual([r.gfn for r in self.ring.answered], [3, 3, 3])
        self.region.load_zero(9)
        self.assertEqual(len(self.ring.answered), 4)
        self.assertEqual(self.xc.loads, [(3, b"abcd"), (9, bytes(4))])
        self.assertEqual(self.region.states()[3], PageState.PRIVATE)
        self.assertEqual(self.region.states()[9], PageState.ZERO)
        self.assertEqual(len(self.region.service_us), 2)

    def test_counters_show_the_pages_that_wait_and_the_ring(self):
        """What ``xenclone info`` shows of a stuck clone: the pages whose
        requests wait for the pager, and the ring's indices."""
        self.ring.queue = [Req(3, False), Req(3, False)]
        self.region.take()
        counts = self.region.counters()
        self.assertEqual((counts["requests"], counts["faults"], counts["pending_pages"]), (2, 1, 1))
        self.assertEqual(counts["ring"]["req_cons"], 2)
        self.assertEqual(counts["ring"]["rsp_prod"], 0)
        self.region.load_zero(3)
        counts = self.region.counters()
        self.assertEqual(counts["pending_pages"], 0)
        self.assertEqual(counts["ring"]["rsp_prod"], 2)

    def test_dropped_and_foreign_pages_are_answered_at_once(self):
        self.ring.queue = [Req(2, True), Req(1000, False)]
        self.assertEqual(self.region.take(), [])
        self.assertEqual(len(self.ring.answered), 2)
        self.assertGreater(self.evtchn.notified, 0)

    def test_a_touch_before_the_evict_is_answered_at_once(self):
        """An eviction holds the page and maps it from a thread; a guest
        touch before its evict (EVICT_FAIL) gets the page back at once,
        or that map (waiting for the answer) and the fault (waiting for
        the eviction) would wait for each other."""
        self.region.deliver = self.fail
        self.region.hold([8])
        self.ring.queue = [Req(8, False, True)]
        self.assertEqual(self.region.take(), [])
        self.assertEqual([r.gfn for r in self.ring.answered], [8])
        self.assertEqual(self.region.counters()["touched_while_evicted"], 1)
        self.assertEqual(self.region.states()[8], PageState.HOLD)   # the eviction decides

    def test_page_xen_kept_is_answered_without_the_pager(self):
        """A touch of a nominated page before its evict: Xen kept the
        frame; the region knows the page is there and only resumes."""
        self.region.keep([4])
        self.ring.queue = [Req(4, False)]
        self.assertEqual(self.region.take(), [])
        self.assertEqual(len(self.ring.answered), 1)

    def test_load_of_a_page_xen_kept_still_resumes(self):
        self.xc.present.add(6)
        self.ring.queue = [Req(6, False)]
        self.region.take()
        self.region.load_copy(6, bytes(PAGE_SIZE))
        self.assertEqual(len(self.ring.answered), 1)
        self.assertEqual(self.region.counters()["load_kept"], 1)

    def test_held_page_faults_as_hold_and_comes_back_when_released(self):
        redelivered = []
        self.region.deliver = redelivered.extend
        self.region.hold([8])
        self.ring.queue = [Req(8, False)]
        self.assertEqual(self.region.take(), [(5, FaultKind.HOLD, 8)])
        self.region.release([8])
        self.assertEqual(redelivered, [(5, FaultKind.MISSING, 8)])
        self.assertEqual(self.ring.answered, [])

    def test_held_page_kept_after_all_is_answered(self):
        """An eviction that failed gives the page back: the wait ends."""
        self.region.deliver = self.fail
        self.region.hold([8])
        self.ring.queue = [Req(8, False)]
        self.region.take()
        self.region.remember([8], PageState.PRIVATE)
        self.assertEqual(len(self.ring.answered), 1)

    def test_image_page_loads_only_from_the_cache(self):
        """A page the host's cache lacks (a hole) must be fetched first."""
        self.ring.queue = [Req(1, False), Req(2, False)]
        self.region.take()
        self.assertTrue(self.region.load_shared(1))
        self.assertFalse(self.region.load_shared(2))
        self.assertEqual(self.xc.loads, [(1, bytes([1]) * 4)])
        self.assertEqual([r.gfn for r in self.ring.answered], [1])
        self.assertEqual(self.region.states()[1], PageState.SHARED)


class PagingSourceTests(unittest.TestCase):
    def test_requests_before_add_are_served_on_add(self):
        clock = task.Clock()
        clock.addReader = clock.removeReader = lambda r: None
        evtchn, ring = FakeEvtChn(), FakeRing()
        img = image(16)
        self.addCleanup(os.close, img.mem_fd)
        region = PagedRegion(FakeXc(), evtchn, ring, 5, img)
        source = PagingSource(clock, evtchn)
        got = []
        source.start(got.extend)
        ring.queue = [Req(1, False)]
        evtchn.fired = [region.port]
        source.doRead()          # not added yet: the request waits on the ring
        self.assertEqual(got, [])
        source.add(region)
        self.assertEqual(got, [(5, FaultKind.MISSING, 1)])
        ring.queue = [Req(2, False)]
        evtchn.fired = [region.port]
        source.doRead()
        self.assertEqual(got[-1], (5, FaultKind.MISSING, 2))
        source.remove(5)
        self.assertTrue(ring.closed)
