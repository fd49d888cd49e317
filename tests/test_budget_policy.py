"""The host budget policies on plain Python: watermarks and bursts."""

from twisted.trial import unittest

from xenclone.policy.budget import Bursts, Watermarks

MS = 1000000


class WatermarkTests(unittest.TestCase):
    def setUp(self):
        self.w = Watermarks(ceiling=1000, low=100, high=200, floor=50)

    def test_short_host_shrinks_the_budget_until_high_would_be_met(self):
        # 60 pages available, 140 short of high: clones give back 140.
        self.assertEqual(self.w.budget(current=1000, allocated=800, available=60), 660)

    def test_between_the_watermarks_the_budget_holds(self):
        self.assertEqual(self.w.budget(current=660, allocated=660, available=150), 660)

    def test_free_memory_grows_it_back_never_past_the_ceiling(self):
        self.assertEqual(self.w.budget(current=660, allocated=660, available=300), 760)
        self.assertEqual(self.w.budget(current=900, allocated=660, available=5000), 1000)

    def test_never_below_the_floor(self):
        self.assertEqual(self.w.budget(current=1000, allocated=100, available=0), 50)

    def test_psi_pressure_shrinks_even_with_memory_available(self):
        w = Watermarks(ceiling=1000, low=100, high=200, floor=50, psi_limit=10.0)
        self.assertEqual(w.budget(1000, 800, available=5000, psi_some=25.0), 720)
        self.assertEqual(w.budget(800, 800, available=5000, psi_some=2.0), 1000)
        self.assertEqual(self.w.budget(800, 800, available=5000, psi_some=99.0), 1000)

    def test_bad_watermarks_are_refused(self):
        self.assertRaises(ValueError, Watermarks, ceiling=10, low=300, high=200, floor=1)


class BurstTests(unittest.TestCase):
    def setUp(self):
        self.b = Bursts(limit=100, burst=50, burst_ns=500 * MS)

    def test_a_clone_may_burst_for_the_burst_time(self):
        self.assertEqual(self.b.step(0, {1: 90}), {1: (150, None)})
        self.assertEqual(self.b.step(100 * MS, {1: 140}), {1: (150, None)})
        self.assertEqual(self.b.step(599 * MS, {1: 150}), {1: (150, None)})

    def test_after_it_the_clone_goes_back_to_its_limit_and_cools_down(self):
        self.b.step(0, {1: 140})
        self.assertEqual(self.b.step(500 * MS, {1: 140}), {1: (100, 100)})
        self.assertEqual(self.b.step(700 * MS, {1: 100}), {1: (100, None)})
        self.assertEqual(self.b.step(1000 * MS, {1: 100}), {1: (150, None)})

    def test_a_short_burst_resets_when_the_clone_comes_back_under(self):
        self.b.step(0, {1: 140})
        self.b.step(400 * MS, {1: 80})
        self.assertEqual(self.b.step(800 * MS, {1: 140}), {1: (150, None)})
        self.assertEqual(self.b.step(1200 * MS, {1: 140}), {1: (150, None)})

    def test_clones_are_independent_and_forgotten_when_gone(self):
        self.b.step(0, {1: 140, 2: 10})
        out = self.b.step(500 * MS, {1: 140, 2: 10})
        self.assertEqual(out, {1: (100, 100), 2: (150, None)})
        self.assertEqual(self.b.step(600 * MS, {2: 10}), {2: (150, None)})
        self.assertEqual(self.b.step(700 * MS, {1: 140}), {1: (150, None)})
