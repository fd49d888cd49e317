"""Clone MACs: locally administered unicast, stable, distinct."""

from twisted.trial import unittest

from xenclone.backends.xen.clone_mac import clone_mac


class CloneMacTests(unittest.TestCase):
    def test_bits_and_form(self):
        for i in range(2000):
            mac = clone_mac("web", "g1", i)
            first = int(mac[:2], 16)
            self.assertEqual(first & 0x02, 0x02, mac)   # locally administered
            self.assertEqual(first & 0x01, 0, mac)      # unicast
            self.assertRegex(mac, r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")

    def test_stable_and_keyed_by_all_three(self):
        self.assertEqual(clone_mac("web", "g1", 7), clone_mac("web", "g1", 7))
        macs = {clone_mac("web", "g1", 7), clone_mac("web", "g2", 7),
                clone_mac("db", "g1", 7), clone_mac("web", "g1", 8)}
        self.assertEqual(len(macs), 4)

    def test_distinct_over_many_clones_and_images(self):
        macs = {clone_mac("image-%d" % img, "g%d" % img, c)
                for img in range(50) for c in range(4000)}
        self.assertEqual(len(macs), 200000)
