"""The host memory service applies the budget policies on a clock: the
kernel's figures (here given) in, the ledger's budget and caps out."""

import shutil
import tempfile

from twisted.internet.task import Clock
from twisted.trial import unittest

from xenclone.control.hostmemory import HostMemoryService
from xenclone.interfaces import FaultKind
from xenclone.ledger import Ledger
from xenclone.pager import Pager
from xenclone.policy.budget import Bursts, Watermarks
from xenclone.policy.sharing import SharingPolicy

from tests.fakes import FakeBackend, FakeImageData, FakeMemoryServer, FakeRegion, FakeSource


class HostMemoryTests(unittest.TestCase):
    def setUp(self):
        store = tempfile.mkdtemp(prefix="xenclone-store-")
        self.addCleanup(shutil.rmtree, store, True)
        self.clock = Clock()
        self.source = FakeSource()
        backend = FakeBackend()
        backend.states[1] = "running"
        self.ledger = Ledger(100, SharingPolicy(protect=0), credit_batch=4)
        self.pager = Pager(self.clock, self.ledger, self.source, backend, FakeMemoryServer(),
                           store)
        image = FakeImageData(64)
        self.pager.attach(FakeRegion(1, 64, image), image)
        self.available = [1000]

    def _service(self, bursts=None):
        w = Watermarks(ceiling=100, low=200, high=300, floor=8)
        svc = HostMemoryService(self.clock, self.pager, w, bursts,
                                read_available=lambda: self.available[0], read_psi=lambda: None)
        svc.startService()
        self.addCleanup(svc.stopService)
        return svc

    def test_budget_follows_available_memory_and_comes_back(self):
        svc = self._service()
        self.available[0] = 250                   # between the watermarks: holds
        self.clock.advance(1)
        self.assertEqual(self.ledger.budget_pages, 100)
        self.available[0] = 150                   # short by 150 below high
        self.clock.advance(1)
        self.assertEqual(self.ledger.budget_pages, 8)      # 63 - 150, floored
        self.assertEqual(svc.state()["available_pages"], 150)
        self.available[0] = 1000
        self.clock.advance(1)
        self.assertEqual(self.ledger.budget_pages, 100)

    def test_operator_budget_is_the_ceiling(self):
        svc = self._service()
        svc.set_ceiling(80)
        self.clock.advance(1)
        self.assertEqual(self.ledger.budget_pages, 80)

    def test_a_burst_ends_with_eviction_to_the_limit(self):
        self._service(Bursts(limit=4, burst=4, burst_ns=500000000))
        self.source.deliver([(1, FaultKind.SERVED, p) for p in range(1, 8)])
        self.clock.advance(0.1)
        self.assertEqual(self.ledger.clone_stats(1)["burst_cap_pages"], 8)
        self.assertEqual(self.ledger.resident(1), 7)
        self.clock.pump([0.1] * 5)
        self.assertEqual(self.ledger.clone_stats(1)["burst_cap_pages"], 4)
        self.assertLessEqual(self.ledger.resident(1), 4)
