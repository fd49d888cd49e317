"""The pager over forks the hypervisor fills (fakes, no Xen): the ledger
learns what they wrote from the hypervisor's list, a write that found no
frame waits for room and gets it, and when there is none a page some clone
wrote is paged out first; a fork's shared pages are never victims."""

import shutil
import tempfile

from twisted.internet.task import Clock
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from xenclone import ledger as L
from xenclone.pager.fork_frames import INTERVAL
from xenclone.interfaces import FaultKind, IForkBackend, IForkRegion
from xenclone.ledger import Ledger
from xenclone.pager import Pager
from xenclone.policy.sharing import SharingPolicy

from tests.fakes import FakeBackend, FakeImageData, FakeMemoryServer, FakeRegion, FakeSource

NW = FaultKind.WRITE


@implementer(IForkRegion)
class FakeFork(FakeRegion):
    """A fork: the pages it owns are the hypervisor's list."""

    def __init__(self, domid, npages):
        super().__init__(domid, npages)
        self.fill_mode = "fork"
        self.own, self.credits, self.room = [], [], []

    def owned(self):
        return list(self.own)

    def write(self, *pfns):
        for pfn in pfns:
            self.own.append(pfn)
            self.loaded[pfn] = "written"

    def credit(self, pages):
        self.credits.append(pages)

    def unprotect(self, pfn):
        self.room.append(pfn)
        self.write(pfn)


@implementer(IForkBackend)
class ForkBackend(FakeBackend):
    """A backend whose image is held by an image domain."""

    def image_domains(self):
        return {"img": {"domid": 2}}


class PagerForkTests(unittest.TestCase):
    def setUp(self):
        self.store = tempfile.mkdtemp(prefix="xenclone-store-")
        self.addCleanup(shutil.rmtree, self.store, True)
        self.clock, self.source, self.backend = Clock(), FakeSource(), FakeBackend()
        self.backend.states.update({3: "running", 4: "running"})
        # Its pages are in the image domain: none in this host's cache.
        self.image = FakeImageData(64)
        self.image.missing.update(range(64))
        self.ledger = Ledger(100, SharingPolicy(protect=0), credit_batch=4)
        self.pager = Pager(self.clock, self.ledger, self.source, self.backend,
                           FakeMemoryServer(), self.store)
        self.f3, self.f4 = FakeFork(3, 64), FakeFork(4, 64)
        for fork in (self.f3, self.f4):
            self.backend.regions[fork.domid] = fork
            self.pager.attach(fork, self.image)
        self.ledger.uncached("img", range(64))
        self.base = self.ledger.allocated

    def test_the_fake_is_a_fork_region(self):
        verifyObject(IForkRegion, self.f3)

    def test_what_a_fork_wrote_is_learned_and_what_it_gave_up_leaves(self):
        self.f3.write(5, 6)
        self.clock.advance(INTERVAL)
        self.assertEqual([self.ledger.kind(3, p) for p in (5, 6)], [L.PRIVATE, L.PRIVATE])
        self.assertEqual(self.ledger.allocated, self.base + 2)
        self.f3.own.remove(5)                   # e.g. its balloon gave it back
        self.clock.advance(INTERVAL)
        self.assertNotEqual(self.ledger.kind(3, 5), L.PRIVATE)
        self.assertEqual(self.ledger.allocated, self.base + 1)

    def test_a_fork_is_a_victim_only_by_page_out(self):
        self.assertEqual(self.ledger.clone_stats(3)["flags"]["evict"], [L.PAGE_OUT])

    def test_a_write_waiting_for_room_goes_on_when_there_is_room(self):
        self.source.deliver([(4, NW, 9)])
        self.assertEqual(self.f4.room, [9])
        self.assertEqual(self.ledger.kind(4, 9), L.PRIVATE)
        self.assertEqual(self.backend.pageouts, [])

    def test_without_room_a_written_page_is_paged_out_first(self):
        self.f3.write(5, 6, 7)
        self.clock.advance(INTERVAL)
        self.ledger.budget_pages = self.ledger.allocated     # no room left
        self.source.deliver([(4, NW, 9)])
        [(domid, pfns)] = [(d, p) for d, p, *_ in self.backend.pageouts]
        self.assertEqual(domid, 3)
        self.assertTrue(set(pfns) <= {5, 6, 7})
        self.assertEqual(self.f4.room, [9])
        self.assertTrue(all(self.ledger.kind(3, p) == L.PAGED_OUT for p in pfns))

    def test_over_budget_the_next_look_pages_out(self):
        self.f3.write(*range(10, 20))
        self.ledger.budget_pages = self.base + 4
        self.clock.advance(INTERVAL)
        self.assertTrue(self.backend.pageouts)
        self.assertLessEqual(self.ledger.allocated, self.ledger.budget_pages)

    def test_forks_get_the_hosts_credit(self):
        self.assertEqual(self.source.credits, 4)

    def test_a_hoard_leaves_what_the_fork_wrote(self):
        """A hoard touches only pages the fork does not own: one it wrote
        (learned from the list) is not taken for an absent page."""
        self.f3.write(5)
        self.clock.advance(INTERVAL)
        done = self.pager.hoard(3, 1000)
        for _ in range(20):
            self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(done), 3)
        self.assertEqual(self.f3.loaded[5], "written")
        self.assertEqual(self.ledger.kind(3, 5), L.PRIVATE)
        self.assertEqual(self.f3.loaded[6], "shared")

    def test_a_hoarded_fork_of_an_image_domain_takes_no_room_from_another(self):
        """A hoard maps every page of the image, which this host also
        caches: the image domain holds the image, so neither that cache
        nor the hoarded fork's shared pages are in the hypervisor's budget,
        and another fork's write gets room."""
        cached = FakeImageData(64)
        ledger = Ledger(100, SharingPolicy(protect=0), credit_batch=4)
        backend = ForkBackend()
        backend.states.update({5: "running", 6: "running"})
        pager = Pager(self.clock, ledger, FakeSource(), backend, FakeMemoryServer(), self.store)
        f5, f6 = FakeFork(5, 64), FakeFork(6, 64)
        for fork in (f5, f6):
            backend.regions[fork.domid] = fork
            pager.attach(fork, cached)
        done = pager.hoard(5, 1000)
        for _ in range(20):
            self.clock.advance(0.1)
        self.successResultOf(done)
        self.assertEqual(ledger.allocated, 0)
        ledger.budget_pages = 1
        pager.source.deliver([(6, NW, 9)])
        self.assertEqual(f6.room, [9])
        self.assertIsNone(pager.stalled)

    def test_the_looks_stop_with_the_last_fork(self):
        self.pager.detach(3)
        self.pager.detach(4)
        self.assertFalse(self.pager._fork_look.running)
