"""What a finished clone's data pages must hold: the image's data set with
the clone's own writes, word sums regenerated in C, against the same pages
built word by word in Python from the workload's mirror."""

import struct

from twisted.trial import unittest

from xenclone import memory_check, workload


class ExpectedMemoryTests(unittest.TestCase):
    def test_every_data_page_with_the_clones_writes(self):
        params = workload.Params.for_memory(8, write_pages=50)
        writes = workload.clone_writes(params, 3, 99)
        self.assertEqual(len({p for p, _ in writes}), 50)
        pfns = list(memory_check.data_pfns(params))
        got = memory_check.ExpectedMemory(params, 3, 99).sums(pfns)
        for pfn, s in zip(pfns, got):
            page = bytearray(workload.image_page(params, pfn))
            for (p, w), value in writes.items():
                if p == pfn:
                    struct.pack_into("<I", page, 4 * w, value)
            self.assertEqual(s, workload.page_sum(bytes(page)), "page %d" % pfn)

    def test_another_clones_memory_does_not_pass(self):
        params = workload.Params.for_memory(8, write_pages=50)
        pfns = sorted(workload.pages_written(params, 3, 99))
        self.assertNotEqual(memory_check.ExpectedMemory(params, 3, 99).sums(pfns),
                            memory_check.ExpectedMemory(params, 4, 100).sums(pfns))
