"""bench/criu_workload.c, the CRIU peer's process, answers as the guest does
(xenclone/workload.py), so the bench can check CRIU clones the same way."""
import os
import shutil
import struct
import subprocess
import tempfile

from twisted.trial import unittest

from xenclone import workload

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIM = os.path.join(ROOT, "libxc_shim", "src", "linux")
SOURCES = [os.path.join(ROOT, "bench", "criu_workload.c"), os.path.join(SHIM, "pages.c")]


class CriuWorkloadTests(unittest.TestCase):
    def setUp(self):
        if shutil.which("gcc") is None:
            raise unittest.SkipTest("no gcc")
        self.dir = tempfile.mkdtemp(prefix="xc-criu-workload-")
        self.addCleanup(shutil.rmtree, self.dir)
        self.exe = os.path.join(self.dir, "criu_workload")
        subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-I", SHIM, "-o", self.exe] + SOURCES,
                       check=True)

    def answer(self, params, clone_id, input):
        p = params
        args = [str(v) for v in (p.memory_pages, p.data_first_pfn, p.data_npages,
                                 p.common_reads, p.clone_reads, p.write_pages, p.seed,
                                 p.zero_every)]
        proc = subprocess.Popen([self.exe] + args, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        out, _ = proc.communicate(struct.pack("<II", clone_id, input), timeout=60)
        self.assertEqual(proc.returncode, 0)
        self.assertEqual(out[:3], b"RGD")
        return struct.unpack("<I", out[3:7])[0]

    def test_answers_as_the_guest(self):
        for percent in (10, 100):
            p = workload.Params.for_memory(16, read_percent=percent, seed=1)
            for clone_id in (1, 8):
                self.assertEqual(self.answer(p, clone_id, 1000 + clone_id),
                                 workload.expected_result(p, clone_id, 1000 + clone_id))

    def test_bad_arguments(self):
        bad = subprocess.run([self.exe, "16", "32"], capture_output=True)
        self.assertEqual(bad.returncode, 2)
        self.assertIn(b"usage", bad.stderr)
        word = subprocess.run([self.exe] + "16 32 x 1 1 1 1 16".split(), capture_output=True)
        self.assertEqual(word.returncode, 2)
        self.assertIn(b"not a 32-bit number: x", word.stderr)
        outside = subprocess.run([self.exe] + "100 32 100 1 1 1 1 16".split(),
                                 capture_output=True)
        self.assertEqual(outside.returncode, 2)
        self.assertIn(b"outside", outside.stderr)
