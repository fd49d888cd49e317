"""The pager pipeline over fakes: every step of the claim, no kernel."""

from twisted.internet import defer
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from xenclone.interfaces import IBackend, IFaultRegion, IFaultSource, IMemoryServer, FaultKind
from xenclone.ledger import Ledger
from xenclone.pager import Pager
from xenclone.policy.clock import ClockPolicy

from tests.fakes import FakeBackend, FakeImageData, FakeMemoryServer, FakeRegion, FakeSource

S, N, F = FaultKind.SERVED, FaultKind.NOCREDIT, FaultKind.FETCH


class PagerTests(unittest.TestCase):
    def setUp(self):
        self.source = FakeSource()
        self.backend = FakeBackend()
        self.backend.domains.update({1: "running", 2: "running"})
        self.memserver = FakeMemoryServer()
        self.ledger = Ledger(10, ClockPolicy(protect=0), credit_batch=4)
        self.pager = Pager(self.ledger, self.source, self.backend, self.memserver)
        self.image = FakeImageData(64, zero_pages=[0])
        self.r1, self.r2 = FakeRegion(1, 64, self.image), FakeRegion(2, 64, self.image)
        self.pager.attach(self.r1, self.image)
        self.pager.attach(self.r2, self.image)

    def test_fakes_implement_the_interfaces(self):
        verifyObject(IFaultSource, self.source)
        verifyObject(IBackend, self.backend)
        verifyObject(IMemoryServer, self.memserver)
        verifyObject(IFaultRegion, self.r1)

    def test_credits_granted_at_attach(self):
        self.assertEqual(self.source.credits, 4)

    def test_served_pages_are_accounted(self):
        self.source.deliver([(1, S, 3), (1, S, 4), (2, S, 3)])
        self.assertEqual(self.ledger.clone_stats(1)["resident_pages"], 2)
        self.assertEqual(self.ledger.host_stats()["used_pages"], 3)

    def test_nocredit_fault_loads_when_room_exists(self):
        self.source.deliver([(1, N, 5), (1, N, 0)])
        self.assertEqual(self.r1.loaded, {5: "shared", 0: "zero"})
        self.assertEqual(self.ledger.clone_stats(1)["resident_pages"], 2)

    def test_no_room_evicts_from_any_clone_then_loads(self):
        self.source.deliver([(2, S, p) for p in range(1, 11)])
        self.assertEqual(self.ledger.take_credits(), 0)
        self.source.deliver([(1, N, 20)])
        # victims came from clone 2 (the only resident pages), oldest first
        domid, pfns, blocked = self.backend.drops[0]
        self.assertEqual(domid, 2)
        self.assertIn(1, pfns)
        self.assertFalse(blocked)
        self.assertEqual(self.r1.loaded, {20: "shared"})
        self.assertNotIn(1, self.r2.present)

    def test_a_written_page_is_kept_and_marked_private(self):
        self.source.deliver([(2, S, p) for p in range(1, 11)])
        self.backend.written[2] = set(range(1, 11))
        self.source.deliver([(1, N, 20)])
        self.assertEqual(self.r1.loaded, {})
        self.assertEqual(self.ledger.clone_stats(2)["private_pages"], 10)
        self.assertEqual(self.ledger.clone_stats(2)["resident_pages"], 10)
        self.assertTrue(self.pager.stalled)

    def test_eviction_of_a_clone_blocked_in_a_fault_says_so(self):
        self.source.deliver([(1, S, p) for p in range(1, 11)])
        self.source.deliver([(1, N, 30)])
        self.assertTrue(self.backend.drops[0][2])

    def test_no_fault_is_lost_while_eviction_is_in_flight(self):
        self.backend.hold_drops = True
        self.source.deliver([(2, S, p) for p in range(1, 11)])
        self.source.deliver([(1, N, 20)])
        self.source.deliver([(1, N, 21)])
        self.assertEqual(len(self.backend.pending_drops), 1)
        self.assertEqual(self.source.credits, 0)
        d, dropped = self.backend.pending_drops.pop()
        d.callback(dropped)
        self.assertEqual(set(self.r1.loaded), {20, 21})

    def test_page_missing_from_host_cache_is_fetched_then_loaded(self):
        self.image.missing.add(9)
        self.source.deliver([(1, N, 9)])
        self.assertEqual(self.memserver.fetches, [("img", 9, 1)])
        self.assertEqual(self.image.stored[9], bytes([9]) * 4096)
        self.assertEqual(self.r1.loaded, {9: "shared"})

    def test_fetch_kind_from_fast_path(self):
        self.source.deliver([(2, F, 7)])
        self.assertEqual(self.memserver.fetches, [("img", 7, 1)])
        self.assertEqual(self.r2.loaded, {7: "shared"})

    def test_detach_forgets_pending_faults_and_pages(self):
        self.source.deliver([(2, S, p) for p in range(1, 11)])
        self.backend.hold_drops = True
        self.source.deliver([(1, N, 20)])
        self.pager.detach(1)
        d, dropped = self.backend.pending_drops.pop()
        d.callback(dropped)
        self.assertEqual(self.r1.loaded, {})
        self.assertNotIn(1, self.source.regions)
        self.assertIsNone(self.pager.stats(1))

    def test_faults_of_unknown_clones_are_ignored(self):
        self.source.deliver([(99, S, 1)])
        self.assertEqual(self.ledger.host_stats()["used_pages"], 0)

    def test_pages_prefilled_at_launch_are_accounted(self):
        r3 = FakeRegion(3, 64, self.image)
        r3.prefilled = [1, 15]
        self.pager.attach(r3, self.image)
        self.assertEqual(self.ledger.clone_stats(3)["resident_pages"], 2)
        self.assertEqual(r3.present, {1, 15})
