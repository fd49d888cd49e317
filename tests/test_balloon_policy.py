"""Balloon targets from the hypervisor's free memory (policy only)."""

from twisted.trial import unittest

from xenclone.policy.balloon import Balloonable, Balloons

MIB = 256


def clone(target, nominal=128 * MIB, ceiling=None):
    return Balloonable(nominal=nominal, ceiling=nominal if ceiling is None else ceiling,
                       target=target)


class BalloonTests(unittest.TestCase):
    def setUp(self):
        self.p = Balloons(low=100 * MIB, high=200 * MIB, floor_percent=50)

    def test_between_the_watermarks_targets_hold(self):
        self.assertEqual(self.p.targets(150 * MIB, {1: clone(100 * MIB)}), {})

    def test_below_low_the_high_watermarks_lack_is_asked_for(self):
        out = self.p.targets(80 * MIB, {1: clone(128 * MIB), 2: clone(128 * MIB)})
        self.assertEqual(out, {1: 68 * MIB, 2: 68 * MIB})   # 120 MiB lacking, 60 each

    def test_in_proportion_to_what_each_holds_above_its_floor(self):
        out = self.p.targets(90 * MIB, {1: clone(128 * MIB), 2: clone(96 * MIB)})
        # rooms 64 and 32 MiB; 110 MiB lacking is more than both: down to the floors
        self.assertEqual(out, {1: 64 * MIB, 2: 64 * MIB})
        out = self.p.targets(95 * MIB, {1: clone(128 * MIB), 2: clone(96 * MIB),
                                        3: clone(512 * MIB, nominal=512 * MIB)})
        # rooms 64, 32, 256 (352); 105 MiB lacking
        self.assertEqual(sum(c - out[d] for d, c in
                             ((1, 128 * MIB), (2, 96 * MIB), (3, 512 * MIB))),
                         105 * MIB + 2)        # rounded up, per clone
        self.assertLess(128 * MIB - out[1], 512 * MIB - out[3])

    def test_never_below_the_floor(self):
        out = self.p.targets(0, {1: clone(64 * MIB), 2: clone(70 * MIB)})
        self.assertEqual(out, {2: 64 * MIB})

    def test_above_high_targets_grow_back_to_the_ceiling(self):
        out = self.p.targets(210 * MIB, {1: clone(64 * MIB), 2: clone(128 * MIB),
                                         3: clone(64 * MIB, ceiling=80 * MIB)})
        # 10 MiB spare over lacks of 64 and 16 MiB
        self.assertEqual(out, {1: 64 * MIB + 8 * MIB, 3: 64 * MIB + 2 * MIB})
        out = self.p.targets(1000 * MIB, {1: clone(64 * MIB),
                                          3: clone(64 * MIB, ceiling=80 * MIB)})
        self.assertEqual(out, {1: 128 * MIB, 3: 80 * MIB})

    def test_operators_ceiling_below_the_floor_is_the_floor(self):
        c = clone(32 * MIB, ceiling=32 * MIB)
        self.assertEqual(self.p.floor(c), 32 * MIB)
        self.assertEqual(self.p.targets(0, {1: c}), {})

    def test_bad_settings(self):
        self.assertRaises(ValueError, Balloons, low=10, high=5, floor_percent=50)
        self.assertRaises(ValueError, Balloons, low=1, high=5, floor_percent=0)
