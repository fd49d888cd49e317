"""A governed fork's region with fake rings (no Xen): a write that found no
frame waits for room once per page and resumes when the pager makes room,
only pages it paged out come back through the paging ring, and its own
pages are Xen's list.  Real forks under pressure: tests/test_xen_rig.py."""

import errno
import os
import shutil
import tempfile
from collections import namedtuple

from twisted.internet import task
from twisted.trial import unittest

from xenclone.backends.xen import libxc
from xenclone.backends.xen.fork_region import ForkPagedRegion
from xenclone.backends.xen.paging import PagingSource
from xenclone.interfaces import FaultKind, PageState
from xenclone.ledger import Ledger
from xenclone.pager import Pager
from xenclone.policy.sharing import SharingPolicy

from tests.fakes import FakeBackend, FakeMemoryServer, FakeRegion, FakeSource
from tests.test_xen_fork import _Maps
from tests.test_xen_paging import FakeEvtChn, FakeRing, FakeXc, Req, image

Info = namedtuple("Info", "tot_pages max_pages shr_pages paged_pages max_vcpu_id")


class SharingRing(FakeRing):
    port = 8

    def __init__(self):
        super().__init__()
        self.resumed = []

    def resume_vcpus(self, vcpus, reason):
        self.resumed.append((list(vcpus), reason))


class PortsEvtChn(FakeEvtChn):
    """A new port for each ring bound."""

    def __init__(self):
        super().__init__()
        self.ports = iter(range(40, 100))

    def bind_interdomain(self, domid, port):
        return next(self.ports)


class ForkXc(FakeXc):
    def __init__(self):
        super().__init__()
        self.info = Info(100, 100, 900, 0, 1)
        self.max_pages, self.dropped, self.asked = [], [], 0

    def domain_info(self, domid):
        self.asked += 1
        if self.info is None:
            raise libxc.XenError("xc_domain_getinfolist", errno.ESRCH)
        return self.info

    def set_max_pages(self, domid, pages):
        self.max_pages.append(pages)

    def decrease_reservation(self, domid, pfns):
        if pfns == [6]:
            raise libxc.XenError("xc_domain_decrease_reservation_exact", errno.ENOENT)
        self.dropped += pfns


class Call:
    def fork_pages(self, domid):
        return [2, 5, 0xFEFFC, 7]       # a special page past RAM among them


class ForkPagedRegionTests(unittest.TestCase):
    def setUp(self):
        self.paging, self.sharing = FakeRing(), SharingRing()
        self.evtchn, self.xc, self.maps = PortsEvtChn(), ForkXc(), _Maps()
        self.image = image(32)
        self.addCleanup(os.close, self.image.mem_fd)
        self.region = ForkPagedRegion(self.xc, self.evtchn, self.paging, self.sharing, Call(),
                                      self.maps, 5, self.image)

    def test_an_event_on_the_sharing_port_is_served(self):
        clock = task.Clock()
        clock.addReader = clock.removeReader = lambda r: None
        source = PagingSource(clock, self.evtchn)
        got = []
        source.start(got.extend)
        source.add(self.region)
        self.sharing.queue = [Req(3, False)]
        self.evtchn.fired = [self.region.sharing_port]
        source.doRead()
        self.assertEqual(got, [(5, FaultKind.WRITE, 3)])
        source.remove(5)
        self.assertTrue(self.sharing.closed and self.paging.closed)

    def test_info_shows_a_forks_waiting_requests_and_rings(self):
        """``Pager.requests``, which ``xenclone info`` shows: for a Xen
        clone, its rings' counts; for a clone a fast path serves, none."""
        store = tempfile.mkdtemp(prefix="xenclone-store-")
        self.addCleanup(shutil.rmtree, store, True)
        pager = Pager(task.Clock(), Ledger(100, SharingPolicy(protect=0)), FakeSource(),
                      FakeBackend(), FakeMemoryServer(), store)
        pager.attach(self.region, self.image)
        self.sharing.queue = [Req(3, False)]
        self.region.take()
        requests = pager.requests(5)
        self.assertEqual(requests["room_pending"], 1)
        self.assertEqual(requests["sharing_ring"]["req_cons"], 1)
        self.assertEqual(requests["sharing_ring"]["rsp_prod"], 0)
        pager.attach(FakeRegion(6, 32), self.image)
        self.assertIsNone(pager.requests(6))

    def test_a_write_without_a_frame_waits_for_room_once_and_resumes(self):
        self.sharing.queue = [Req(3, False), Req(3, False), Req(4, False)]
        self.assertEqual(self.region.take(), [(5, FaultKind.WRITE, 3),
                                              (5, FaultKind.WRITE, 4)])
        self.assertEqual(sorted(self.region.waiting_for_room()), [3, 4])
        self.region.credit(64)
        self.assertEqual(self.xc.max_pages, [164])      # its 100 frames + 64
        self.region.credit(64)
        self.assertEqual(self.xc.max_pages, [164])      # unchanged: not set again
        self.region.unprotect(3)
        self.assertEqual([r.gfn for r in self.sharing.answered], [3, 3])
        self.assertEqual(self.region.waiting_for_room(), [4])
        counts = self.region.counters()
        self.assertEqual((counts["room_waits"], counts["room_pending"]), (2, 1))
        self.assertEqual(counts["sharing_ring"]["rsp_prod"], 2)
        self.region.credit(0)
        self.region.unprotect(4)                         # at least the frame it waits for
        self.assertEqual(self.xc.max_pages, [164, 100, 101])

    def test_the_same_credit_again_keeps_its_cap_without_asking_xen(self):
        """The pager grants on every pump: only a new credit, or room made
        now, moves the cap (from the frames the fork owns then)."""
        self.region.credit(64)
        self.xc.info = self.xc.info._replace(tot_pages=150)     # it wrote 50 pages
        asked = self.xc.asked
        self.region.credit(64)
        self.assertEqual((self.xc.max_pages, self.xc.asked), ([164], asked))
        self.region.credit(32)
        self.assertEqual(self.xc.max_pages, [164, 182])

    def test_only_a_held_page_comes_back_through_the_paging_ring(self):
        """Xen fills the rest itself; a request for a page not held is a
        touch during a nominate, answered at once."""
        self.region.hold([9])
        self.paging.queue = [Req(9, False), Req(10, False)]
        self.assertEqual(self.region.take(), [(5, FaultKind.HOLD, 9)])
        self.assertEqual([r.gfn for r in self.paging.answered], [10])
        self.region.credit(0)
        self.region.load_copy(9, b"w" * 4096)
        self.assertEqual(self.xc.max_pages, [100, 101])     # a frame for the page-in
        self.assertEqual(self.xc.loads, [(9, b"wwww")])
        self.assertEqual(self.region.states()[9], PageState.PRIVATE)

    def test_a_page_in_answers_the_writes_waiting_for_room_on_that_page(self):
        """A page Xen asks back in and for room at once: loading it gives it
        its frame, so both rings are answered and no vCPU waits on."""
        self.region.hold([9])
        self.paging.queue = [Req(9, False)]
        self.sharing.queue = [Req(9, False), Req(9, False)]
        self.assertEqual(self.region.take(), [(5, FaultKind.HOLD, 9), (5, FaultKind.WRITE, 9)])
        self.region.load_copy(9, b"w" * 4096)
        self.assertEqual([r.gfn for r in self.paging.answered], [9])
        self.assertEqual([r.gfn for r in self.sharing.answered], [9, 9])
        self.assertEqual(self.region.waiting_for_room(), [])

    def test_owned_pages_are_xens_list_within_the_guests_memory(self):
        self.assertEqual(self.region.owned(), [2, 5, 7])

    def test_reset_drops_each_held_page_alone(self):
        self.region.hold([4, 6, 8])
        self.region.drop_paged_out()
        self.assertEqual(self.xc.dropped, [4, 8])      # 6 was gone already

    def test_a_new_daemon_resumes_every_vcpu_left_waiting(self):
        self.region.resume_all()
        self.assertEqual(self.sharing.resumed, [([0, 1], "MEM_SHARING")])

    def test_a_fork_gone_under_the_pager_takes_no_credit_and_raises_nothing(self):
        self.xc.info = None
        self.region.credit(64)
        self.assertEqual(self.xc.max_pages, [])

    def test_hoard_touches_read_only(self):
        self.assertTrue(self.region.load_shared(3))
        self.assertEqual(self.maps.calls, [(5, [3], False)])
