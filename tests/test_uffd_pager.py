"""xc_pager_serve / xc_resolve / xc_copy_page against a real userfaultfd:
credits, holds, fetches, duplicate faults, and serving another process."""
import os
import socket
import struct
import threading
import time

from twisted.trial import unittest

from xenclone import workload
from tests.test_microvm import Image, Pager, launch_clone, require_kvm, run_clone

if os.path.exists("/dev/kvm"):
    from xenclone._linux import ffi, lib

PAGE = 4096
NPAGES = 64


class Mapping:
    """A private, uffd-registered mapping of a small image memfd (no VM):
    pages 1.. hold a pattern, page 0 is a hole (all zero)."""

    def __init__(self):
        self.fd = os.memfd_create("image")
        os.ftruncate(self.fd, NPAGES * PAGE)
        shared = lib.xc_map_memfd(self.fd, NPAGES * PAGE, 0)
        lib.xc_fill_dataset(ffi.cast("void *", shared), NPAGES, 1, NPAGES - 1, 7, 0)
        self.sums = ffi.new("uint64_t[]", NPAGES)   # reading page 0 here would fill the hole
        lib.xc_page_sums(ffi.cast("char *", shared) + PAGE, NPAGES - 1, self.sums + 1)
        lib.xc_unmap(shared, NPAGES * PAGE)
        self.addr = lib.xc_map_memfd(self.fd, NPAGES * PAGE, 1)
        self.uffd = lib.xc_uffd_open(lib.UFFD_FEATURE_MISSING_SHMEM | lib.UFFD_FEATURE_MINOR_SHMEM,
                                     ffi.NULL)
        assert self.uffd >= 0 and self.addr > 0
        assert lib.xc_uffd_register(
            self.uffd, self.addr, NPAGES * PAGE,
            lib.UFFDIO_REGISTER_MODE_MISSING | lib.UFFDIO_REGISTER_MODE_MINOR) == 0
        self.zero = ffi.new("uint8_t[]", NPAGES)
        self.touchers = []

    def touch(self, pfn):
        """Read one page from a thread (C, GIL released); returns the thread,
        whose .box gets the page's checksum once the page was served."""
        box = []
        t = threading.Thread(target=self._sum, args=(box, pfn), daemon=True)
        t.box = box
        t.start()
        self.touchers.append(t)
        return t

    def _sum(self, box, pfn):
        out = ffi.new("uint64_t[1]")
        lib.xc_page_sums(ffi.cast("char *", self.addr) + pfn * PAGE, 1, out)
        box.append(out[0])

    def close(self):
        os.close(self.uffd)         # releases threads still waiting for a fault
        for t in self.touchers:
            t.join()
        lib.xc_unmap(self.addr, NPAGES * PAGE)
        os.close(self.fd)


def serve_until(pager, predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out; records: %r" % pager.records)
        pager.serve_once(20)


class PagerTests(unittest.TestCase):
    def setUp(self):
        require_kvm()
        self.m = Mapping()
        self.addCleanup(self.m.close)
        self.pager = Pager(credits=0)
        self.addCleanup(self.pager.close)
        self.region = self.pager.add(self.m.uffd, self.m.addr, NPAGES, self.m.zero)

    def assertServedWith(self, toucher, expected_sum):
        toucher.join(5)
        self.assertEqual(toucher.box, [expected_sum])

    def test_no_credit_then_resolve(self):
        t = self.m.touch(5)
        serve_until(self.pager, lambda: self.pager.records)
        self.assertEqual(self.pager.records, [(0, lib.XC_NOCREDIT, 5)])
        self.assertEqual(self.region.state[5], lib.XC_PAGE_ABSENT)
        self.assertTrue(t.is_alive())
        self.pager.credits[0] = 10
        self.assertEqual(lib.xc_resolve(self.region, 5, 1, lib.XC_CONTINUE), 0)
        self.assertServedWith(t, self.m.sums[5])
        self.assertEqual(self.region.state[5], lib.XC_PAGE_PRESENT)
        self.assertEqual(self.region.minor_fills, 1)

    def test_credits_are_spent(self):
        self.pager.credits[0] = 2
        for pfn in (3, 4, 6):
            t = self.m.touch(pfn)
            serve_until(self.pager, lambda: len(self.pager.records) == [3, 4, 6].index(pfn) + 1)
        self.assertEqual([k for _, k, _ in self.pager.records],
                         [lib.XC_SERVED, lib.XC_SERVED, lib.XC_NOCREDIT])
        self.assertEqual(self.pager.credits[0], 0)
        lib.xc_resolve(self.region, 6, 1, lib.XC_CONTINUE)
        self.assertServedWith(t, self.m.sums[6])

    def test_zero_page_served_by_zeropage(self):
        self.pager.credits[0] = 1
        self.m.zero[0] = 1
        t = self.m.touch(0)
        serve_until(self.pager, lambda: self.pager.records)
        self.assertEqual(self.pager.records, [(0, lib.XC_SERVED, 0)])
        self.assertServedWith(t, 0)
        self.assertEqual((self.region.zero_fills, self.region.minor_fills), (1, 0))

    def test_missing_nonzero_page_is_fetched_and_copied(self):
        self.pager.credits[0] = 1
        t = self.m.touch(0)                   # a hole not marked zero: Python fetches
        serve_until(self.pager, lambda: self.pager.records)
        self.assertEqual(self.pager.records, [(0, lib.XC_FETCH, 0)])
        page = ffi.new("uint64_t[]", [7] * (PAGE // 8))
        self.assertEqual(lib.xc_copy_page(self.region, 0, page), 0)
        self.assertServedWith(t, 7 * PAGE // 8)
        self.assertEqual(lib.xc_copy_page(self.region, 0, page), -17)  # EEXIST

    def test_hold_is_left_to_python(self):
        self.pager.credits[0] = 100
        self.region.state[9] = lib.XC_PAGE_HOLD
        t = self.m.touch(9)
        serve_until(self.pager, lambda: self.pager.records)
        self.assertEqual(self.pager.records, [(0, lib.XC_HOLD, 9)])
        self.assertEqual(self.pager.credits[0], 100)
        page = ffi.new("uint64_t[]", [1] * (PAGE // 8))  # e.g. a paged-out private page
        self.assertEqual(lib.xc_copy_page(self.region, 9, page), 0)
        self.assertServedWith(t, PAGE // 8)

    def test_duplicate_fault_gets_wake(self):
        """A fault on a page C believes present is only woken (here it faults
        again and again, since it really is absent, until state is fixed)."""
        self.pager.credits[0] = 100
        self.region.state[12] = lib.XC_PAGE_PRESENT
        t = self.m.touch(12)
        serve_until(self.pager, lambda: self.region.dup_wakes > 1)
        self.assertEqual(self.pager.records, [])
        self.region.state[12] = lib.XC_PAGE_ABSENT
        serve_until(self.pager, lambda: self.pager.records)
        self.assertEqual(self.pager.records, [(0, lib.XC_SERVED, 12)])
        self.assertServedWith(t, self.m.sums[12])

    def test_resolve_range_and_already_present(self):
        self.assertEqual(lib.xc_resolve(self.region, 20, 4, lib.XC_CONTINUE), 0)
        self.assertEqual(lib.xc_resolve(self.region, 18, 8, lib.XC_CONTINUE), 0)  # overlaps
        self.assertEqual([self.region.state[i] for i in range(17, 27)], [0] + [1] * 8 + [0])
        self.assertEqual(self.region.minor_fills, 8)
        self.assertEqual(lib.xc_resolve(self.region, NPAGES - 1, 2, lib.XC_CONTINUE), -22)
        t = self.m.touch(21)                  # already mapped: no fault at all
        self.assertServedWith(t, self.m.sums[21])
        self.assertEqual(self.region.faults, 0)

    def test_out_full_leaves_faults_queued(self):
        self.pager.credits[0] = 0
        self.pager.max_out = 1
        ts = [self.m.touch(pfn) for pfn in (30, 31, 32)]
        time.sleep(0.2)
        got = [self.pager.serve_once(100) for _ in range(3)]
        self.assertEqual(sorted(r[0][2] for r in got), [30, 31, 32])
        self.pager.credits[0] = 3
        for pfn, t in zip((30, 31, 32), ts):
            lib.xc_resolve(self.region, pfn, 1, lib.XC_CONTINUE)
            self.assertServedWith(t, self.m.sums[pfn])

    def test_wake_fd_returns(self):
        os.eventfd_write(self.pager.wake_fd, 1)
        t0 = time.monotonic()
        self.assertEqual(self.pager.serve_once(5000), [])
        self.assertLess(time.monotonic() - t0, 1.0)

    def test_timeout_returns_zero(self):
        t0 = time.monotonic()
        self.assertEqual(self.pager.serve_once(50), [])
        self.assertGreaterEqual(time.monotonic() - t0, 0.045)


def _child_vmm(image, sock, clone_id, input):
    """Runs in a forked child: the VMM owns the clone; only its uffd leaves."""
    status = 1
    try:
        clone, uffd = launch_clone(image)
        socket.send_fds(sock, [struct.pack("<QQ", clone.addr, clone.npages)], [uffd])
        result, _ = run_clone(clone, clone_id, input)
        sock.sendall(struct.pack("<I", result))
        status = 0
    finally:
        os._exit(status)


class CrossProcessTests(unittest.TestCase):
    def test_pager_serves_a_vmm_in_another_process(self):
        require_kvm()
        params = workload.Params.for_memory(16)
        image = Image(params)
        self.addCleanup(image.close)
        pager = Pager()
        self.addCleanup(pager.close)
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        pid = os.fork()
        if pid == 0:
            ours.close()
            _child_vmm(image, theirs, 77, 3)
        theirs.close()
        msg, fds, _, _ = socket.recv_fds(ours, 16, 1)
        addr, npages = struct.unpack("<QQ", msg)
        self.addCleanup(os.close, fds[0])
        region = pager.add(fds[0], addr, npages, image.zero)
        # The params page comes by UFFDIO_COPY from our own copy of the image.
        region.state[workload.PARAMS_PFN] = lib.XC_PAGE_HOLD
        shared = lib.xc_map_memfd(image.fd, params.memory_bytes, 0)
        self.addCleanup(lib.xc_unmap, shared, params.memory_bytes)
        ours.setblocking(False)
        result = b""
        deadline = time.monotonic() + 30
        while len(result) < 4 and time.monotonic() < deadline:
            for _, kind, pfn in pager.serve_once(20):
                if kind == lib.XC_HOLD:
                    src = ffi.cast("char *", shared) + pfn * PAGE
                    self.assertEqual(lib.xc_copy_page(region, pfn, src), 0)
            try:
                result += ours.recv(4)
            except BlockingIOError:
                pass
        _, status = os.waitpid(pid, 0)
        self.assertEqual(status, 0)
        self.assertEqual(struct.unpack("<I", result)[0], workload.expected_result(params, 77, 3))
        self.assertGreater(region.minor_fills, 0)
        self.assertGreater(region.zero_fills, 0)
        self.assertIn((0, lib.XC_HOLD, workload.PARAMS_PFN), pager.records)
