"""The Python mirror of the guest workload and its data-set formula."""
import os

from twisted.trial import unittest

from xenclone import workload
from xenclone.workload import Params, expected_result, pages_touched


class ParamsTests(unittest.TestCase):
    def test_for_memory(self):
        p = Params.for_memory(64)
        self.assertEqual(p.memory_pages, 16384)
        self.assertEqual(p.data_first_pfn, workload.DATA_FIRST_PFN)
        self.assertEqual(p.data_first_pfn + p.data_npages, p.memory_pages)
        self.assertAlmostEqual(p.common_reads / p.data_npages, 0.02, places=3)
        self.assertAlmostEqual(p.clone_reads / p.data_npages, 0.08, places=3)
        self.assertEqual((p.write_pages, p.zero_every), (8, 16))

    def test_pack_is_the_params_page_layout(self):
        p = Params.for_memory(16, seed=99, hostile=7)
        self.assertEqual(workload.PARAMS_STRUCT.unpack(p.pack()),
                         (workload.PARAMS_MAGIC, 32, p.data_npages, p.common_reads,
                          p.clone_reads, p.write_pages, 99, 7))

    def test_too_small(self):
        self.assertRaises(ValueError, Params.for_memory, 0)

    def test_zero_pages(self):
        p = Params.for_memory(16)
        self.assertTrue(p.is_zero_page(32))
        self.assertTrue(p.is_zero_page(workload.PARAMS_PFN))
        self.assertTrue(p.is_zero_page(p.memory_pages))
        self.assertFalse(p.is_zero_page(33))
        self.assertEqual(p.image_word(48, 5), 0)
        self.assertEqual(p.image_word(49, 5), workload.word(p.seed, 49, 5))


class ExpectedResultTests(unittest.TestCase):
    p = Params.for_memory(16)

    def test_deterministic(self):
        self.assertEqual(expected_result(self.p, 3, 4), expected_result(self.p, 3, 4))

    def test_depends_on_id_input_seed_and_data(self):
        base = expected_result(self.p, 1, 0)
        self.assertNotEqual(base, expected_result(self.p, 2, 0))
        self.assertNotEqual(base, expected_result(self.p, 1, 1))
        self.assertNotEqual(base, expected_result(Params.for_memory(16, seed=1), 1, 0))
        self.assertNotEqual(base, expected_result(Params.for_memory(16, zero_every=0), 1, 0))
        answers = {expected_result(self.p, i, 0) for i in range(50)}
        self.assertEqual(len(answers), 50)

    def test_result_is_uint32(self):
        self.assertLessEqual(expected_result(self.p, 0xFFFFFFFF, 0xFFFFFFFF), 0xFFFFFFFF)

    def test_pages_touched(self):
        touched = pages_touched(self.p, 1, 0)
        data = [t for t in touched if t >= self.p.data_first_pfn]
        self.assertLessEqual(len(data), self.p.common_reads + self.p.clone_reads + 8)
        self.assertGreater(len(data), self.p.clone_reads // 2)
        self.assertIn(workload.PARAMS_PFN, touched)
        self.assertIn(workload.STACK_PFN, touched)
        self.assertLess(len(touched), self.p.memory_pages)


class MixTests(unittest.TestCase):
    def test_known_values(self):
        # Pinned so a change in the formula is a visible decision.
        self.assertEqual([workload.mix(0, 0, 0), workload.mix(1, 2, 3)], [0, 595333698])
        self.assertNotEqual(workload.mix(1, 2, 3), workload.mix(1, 2, 4))

    def test_same_as_c(self):
        if not os.path.exists("/dev/kvm"):
            raise unittest.SkipTest("/dev/kvm absent")
        from xenclone._linux import lib
        for seed in (0, 0xFFFFFFFF, 0x5EED1234):
            for p in (0, 33, 65535, 0xFFFFFFFF):
                for w in (0, 1, 1023):
                    self.assertEqual(lib.lx_mix(seed, p, w), workload.mix(seed, p, w))
