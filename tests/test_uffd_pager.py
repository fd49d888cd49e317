"""lx_pager_serve / lx_resolve / lx_copy_page / lx_set_state against a real
userfaultfd: credits, writes (copy on write), holds, fetches, duplicate
faults, and serving another process."""
import os
import socket
import struct
import threading
import time

from twisted.trial import unittest

from xenclone import workload
from tests.test_microvm import Image, Pager, launch_clone, require_kvm, run_clone
from xenclone.interfaces import FaultKind, PageState

if os.path.exists("/dev/kvm"):
    from xenclone._linux import ffi, lib
    from xenclone.backends.kvm.microvm import CLONE_UFFD_FEATURES, CLONE_UFFD_MODES

PAGE = 4096
NPAGES = 64


class Mapping:
    """A private, uffd-registered mapping of a small image memfd (no VM):
    pages 1.. hold a pattern (seed 7), page 0 is a hole (all zero)."""

    def __init__(self):
        self.fd = os.memfd_create("image")
        os.ftruncate(self.fd, NPAGES * PAGE)
        shared = lib.lx_map_memfd(self.fd, NPAGES * PAGE, 0)
        lib.lx_fill_dataset(ffi.cast("void *", shared), NPAGES, 1, NPAGES - 1, 7, 0)
        self.sums = ffi.new("uint64_t[]", NPAGES)   # reading page 0 here would fill the hole
        lib.lx_page_sums(ffi.cast("char *", shared) + PAGE, NPAGES - 1, self.sums + 1)
        lib.lx_unmap(shared, NPAGES * PAGE)
        self.addr = lib.lx_map_memfd(self.fd, NPAGES * PAGE, 1)
        self.uffd = lib.lx_uffd_open(CLONE_UFFD_FEATURES, ffi.NULL)
        assert self.uffd >= 0 and self.addr > 0
        assert lib.lx_uffd_register(self.uffd, self.addr, NPAGES * PAGE, CLONE_UFFD_MODES) == 0
        self.pagemap = lib.lx_pagemap_open()
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
        lib.lx_page_sums(ffi.cast("char *", self.addr) + pfn * PAGE, 1, out)
        box.append(out[0])

    def read(self, pfn):
        """The page's checksum, read from a thread (served meanwhile or not)."""
        t = self.touch(pfn)
        t.join(5)
        return t.box

    def write(self, pfn, seed):
        """Overwrite one page with pattern ``seed`` from a thread (C, GIL
        released); returns the thread; .sum is what the page then sums to."""
        t = threading.Thread(target=lib.lx_fill_dataset, daemon=True,
                             args=(ffi.cast("void *", self.addr), NPAGES, pfn, 1, seed, 0))
        t.sum = pattern_sum(pfn, seed)
        t.start()
        self.touchers.append(t)
        return t

    def kind(self, pfn):
        out = ffi.new("uint8_t[1]")
        assert lib.lx_page_kinds(self.pagemap, self.addr + pfn * PAGE, 1, out) == 0
        return out[0]

    def image_sum(self, pfn):
        """The image memfd's page, read through a fresh shared mapping."""
        shared = lib.lx_map_memfd(self.fd, NPAGES * PAGE, 0)
        out = ffi.new("uint64_t[1]")
        lib.lx_page_sums(ffi.cast("char *", shared) + pfn * PAGE, 1, out)
        lib.lx_unmap(shared, NPAGES * PAGE)
        return out[0]

    def close(self):
        os.close(self.uffd)         # releases threads still waiting for a fault
        os.close(self.pagemap)
        for t in self.touchers:
            t.join()
        lib.lx_unmap(self.addr, NPAGES * PAGE)
        os.close(self.fd)


def pattern_sum(pfn, seed):
    buf = ffi.new("char[]", (pfn + 1) * PAGE)
    lib.lx_fill_dataset(buf, pfn + 1, pfn, 1, seed, 0)
    out = ffi.new("uint64_t[1]")
    lib.lx_page_sums(buf + pfn * PAGE, 1, out)
    return out[0]


def set_state(region, pfns, state):
    prev = ffi.new("uint8_t[]", len(pfns))
    assert lib.lx_set_state(region, pfns, len(pfns), state, prev) == 0
    return list(prev)


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
        self.pager = Pager(credits=0)         # host credits: none
        self.addCleanup(self.pager.close)
        self.region = self.pager.add(self.m.uffd, self.m.addr, NPAGES, self.m.zero, credits=0)

    def assertServedWith(self, toucher, expected_sum):
        toucher.join(5)
        self.assertEqual(toucher.box, [expected_sum])

    def assertWritten(self, writer, pfn):
        writer.join(5)
        self.assertFalse(writer.is_alive())
        self.assertEqual(self.m.read(pfn), [writer.sum])

    def test_constants_match_the_interface(self):
        for name in ("SERVED", "HOLD", "FETCH", "ERROR", "ZERO", "WRITTEN", "COPY", "AROUND",
                     "AROUND_ZERO"):
            self.assertEqual(getattr(lib, "LX_" + name), getattr(FaultKind, name), name)
        # The fast path's no-credit faults are, to the pager, faults it decides.
        self.assertEqual(lib.LX_NOCREDIT, FaultKind.MISSING)
        self.assertEqual(lib.LX_NOCREDIT_WRITE, FaultKind.WRITE)
        for name in ("ABSENT", "SHARED", "HOLD", "PRIVATE", "ZERO"):
            self.assertEqual(getattr(lib, "LX_PAGE_" + name), getattr(PageState, name), name)

    def test_no_clone_credit_then_resolve(self):
        self.pager.credits[0] = 100          # host credits do not map pages
        t = self.m.touch(5)
        serve_until(self.pager, lambda: self.pager.records)
        self.assertEqual(self.pager.records, [(0, lib.LX_NOCREDIT, 5)])
        self.assertEqual(self.region.state[5], lib.LX_PAGE_ABSENT)
        self.assertTrue(t.is_alive())
        self.assertEqual(lib.lx_resolve(self.region, 5, 1, lib.LX_CONTINUE), 0)
        self.assertServedWith(t, self.m.sums[5])
        self.assertEqual(self.region.state[5], lib.LX_PAGE_SHARED)
        self.assertEqual(self.m.kind(5), lib.LX_PAGE_SHARED | lib.LX_KIND_WP)
        self.assertEqual(self.region.minor_fills, 1)

    def test_clone_credits_are_spent(self):
        self.region.credits = 2
        for pfn in (3, 4, 6):
            t = self.m.touch(pfn)
            serve_until(self.pager, lambda: len(self.pager.records) == [3, 4, 6].index(pfn) + 1)
        self.assertEqual([k for _, k, _ in self.pager.records],
                         [lib.LX_SERVED, lib.LX_SERVED, lib.LX_NOCREDIT])
        self.assertEqual(self.region.credits, 0)
        lib.lx_resolve(self.region, 6, 1, lib.LX_CONTINUE)
        self.assertServedWith(t, self.m.sums[6])

    def test_prefetch_maps_absent_pages_ahead_of_faults(self):
        """Runs in one go, present pages left as they are, a hole that is
        not a zero page (it needs a fetch) skipped; then no fault at all."""
        self.m.zero[0] = 1
        self.assertEqual(lib.lx_resolve(self.region, 8, 1, lib.LX_CONTINUE), 0)
        self.assertEqual(lib.lx_punch_hole(self.m.fd, 20 * PAGE, PAGE), 0)
        pfns = [7, 8, 9, 10, 0, 20, 21, 3]
        got = ffi.new("uint8_t[]", len(pfns))
        self.assertEqual(lib.lx_prefetch(self.region, pfns, len(pfns), got), 6)
        S, Z = lib.LX_PAGE_SHARED, lib.LX_PAGE_ZERO
        self.assertEqual(list(got), [S, 0, S, S, Z, 0, S, S])
        self.assertEqual(self.region.state[20], lib.LX_PAGE_ABSENT)
        self.assertEqual(self.m.kind(9), S | lib.LX_KIND_WP)
        self.assertEqual(self.m.kind(0), Z | lib.LX_KIND_WP)
        for pfn in (7, 9, 10, 21, 3):
            self.assertEqual(self.m.read(pfn), [self.m.sums[pfn]])
        self.assertEqual(self.region.faults, 0)
        self.assertEqual(self.region.credits, 0)     # the caller accounts for them

    def around(self, max_pages):
        self.chunk_faults = ffi.new("uint8_t[]", 1)
        self.region.around = self.chunk_faults
        self.region.around_max = max_pages

    def test_fault_around_maps_a_window_that_grows_fourfold_with_each_fault(self):
        """Image pages around a fault C served are mapped in runs (zero
        pages and present ones left to fault), one record each; the next
        fault in the chunk maps a window four times as big."""
        self.around(64)
        self.region.credits = 1000
        self.m.zero[0] = 1
        self.assertEqual(lib.lx_resolve(self.region, 9, 1, lib.LX_CONTINUE), 0)
        t = self.m.touch(5)
        serve_until(self.pager, lambda: len(self.pager.records) == 5)
        self.assertServedWith(t, self.m.sums[5])
        A, AZ = lib.LX_AROUND, lib.LX_AROUND_ZERO
        self.assertEqual(self.pager.records, [(0, lib.LX_SERVED, 5), (0, AZ, range(0, 1)),
                                              (0, A, range(1, 5)), (0, A, range(6, 9)),
                                              (0, A, range(10, 16))])
        t = self.m.touch(20)
        serve_until(self.pager, lambda: len(self.pager.records) == 8)
        self.assertServedWith(t, self.m.sums[20])
        self.assertEqual(self.pager.records[5:], [(0, lib.LX_SERVED, 20), (0, A, range(16, 20)),
                                                  (0, A, range(21, 64))])
        for pfn in (1, 7, 15, 16, 63):
            self.assertEqual(self.m.kind(pfn), lib.LX_PAGE_SHARED | lib.LX_KIND_WP)
            self.assertEqual(self.m.read(pfn), [self.m.sums[pfn]])
        # the zero page in the window is mapped too, and costs no credit
        self.assertEqual(self.region.state[0], lib.LX_PAGE_ZERO)
        self.assertEqual(self.m.kind(0), lib.LX_PAGE_ZERO | lib.LX_KIND_WP)
        self.assertEqual((self.region.faults, self.region.around_fills), (2, 61))
        self.assertEqual(self.region.credits, 1000 - 2 - 60)

    def test_a_prefetched_working_set_widens_fault_around_where_it_is_dense(self):
        self.around(512)
        self.region.credits = 1000
        self.m.zero[0] = 1
        pfns = [2, 9]
        got = ffi.new("uint8_t[]", len(pfns))
        self.assertEqual(lib.lx_prefetch(self.region, pfns, len(pfns), got), 2)
        self.assertEqual(self.chunk_faults[0], 2)
        t = self.m.touch(40)
        serve_until(self.pager, lambda: self.pager.records)
        self.assertServedWith(t, self.m.sums[40])
        serve_until(self.pager, lambda: len(self.pager.records) == 6)
        A = lib.LX_AROUND
        self.assertEqual(self.pager.records, [(0, lib.LX_SERVED, 40),      # 16 << 4: all 64 pages
                                              (0, lib.LX_AROUND_ZERO, range(0, 1)),
                                              (0, A, range(1, 2)), (0, A, range(3, 9)),
                                              (0, A, range(10, 40)), (0, A, range(41, 64))])

    def test_fault_around_keeps_a_window_of_credits_and_ends_at_a_hole(self):
        self.around(16)
        self.region.credits = 1 + 16 + 3
        self.m.zero[0] = 1
        t = self.m.touch(5)
        serve_until(self.pager, lambda: len(self.pager.records) == 3)
        self.assertServedWith(t, self.m.sums[5])
        self.assertEqual(self.pager.records, [(0, lib.LX_SERVED, 5),
                                              (0, lib.LX_AROUND_ZERO, range(0, 1)),
                                              (0, lib.LX_AROUND, range(1, 4))])
        self.assertEqual(self.region.credits, 16)
        self.region.credits = 1000
        self.assertEqual(lib.lx_punch_hole(self.m.fd, 40 * PAGE, PAGE), 0)
        t = self.m.touch(36)
        serve_until(self.pager, lambda: len(self.pager.records) == 6)
        self.assertServedWith(t, self.m.sums[36])
        self.assertEqual(self.pager.records[3:], [(0, lib.LX_SERVED, 36),
                                                  (0, lib.LX_AROUND, range(32, 36)),
                                                  (0, lib.LX_AROUND, range(37, 40))])
        self.assertEqual([self.region.state[p] for p in (40, 41, 47)], [lib.LX_PAGE_ABSENT] * 3)
        self.assertEqual(self.region.credits, 1000 - 1 - 7)

    def test_zero_page_costs_no_credit(self):
        self.m.zero[0] = 1
        t = self.m.touch(0)
        serve_until(self.pager, lambda: self.pager.records)
        self.assertEqual(self.pager.records, [(0, lib.LX_ZERO, 0)])
        self.assertServedWith(t, 0)
        self.assertEqual((self.region.zero_fills, self.region.minor_fills), (1, 0))
        self.assertEqual(self.region.state[0], lib.LX_PAGE_ZERO)
        self.assertEqual(self.m.kind(0), lib.LX_PAGE_ZERO | lib.LX_KIND_WP)

    def test_write_copies_the_image_page(self):
        self.region.credits = 1
        self.pager.credits[0] = 1
        w = self.m.write(5, 99)
        serve_until(self.pager, lambda: len(self.pager.records) == 2)
        self.assertEqual(self.pager.records, [(0, lib.LX_SERVED, 5), (0, lib.LX_WRITTEN, 5)])
        self.assertWritten(w, 5)
        self.assertEqual(self.region.state[5], lib.LX_PAGE_PRIVATE)
        self.assertEqual(self.m.kind(5), lib.LX_PAGE_PRIVATE)      # anonymous, unprotected
        self.assertEqual((self.pager.credits[0], self.region.wp_faults, self.region.cow_fills),
                         (0, 1, 1))
        self.assertEqual(self.m.image_sum(5), self.m.sums[5])      # the image is untouched

    def test_write_to_zero_page(self):
        self.m.zero[0] = 1
        self.pager.credits[0] = 1
        w = self.m.write(0, 98)
        serve_until(self.pager, lambda: len(self.pager.records) == 2)
        self.assertEqual(self.pager.records, [(0, lib.LX_ZERO, 0), (0, lib.LX_WRITTEN, 0)])
        self.assertWritten(w, 0)
        self.assertEqual(self.m.kind(0), lib.LX_PAGE_PRIVATE)
        self.assertEqual(os.lseek(self.m.fd, 0, os.SEEK_DATA), PAGE)   # still a hole

    def test_write_without_host_credit_waits(self):
        self.region.credits = 1
        w = self.m.write(7, 97)
        serve_until(self.pager, lambda: len(self.pager.records) == 2)
        self.assertEqual(self.pager.records, [(0, lib.LX_SERVED, 7), (0, lib.LX_NOCREDIT_WRITE, 7)])
        time.sleep(0.05)
        self.assertTrue(w.is_alive())
        self.assertEqual(self.region.state[7], lib.LX_PAGE_SHARED)
        self.assertEqual(lib.lx_resolve(self.region, 7, 1, lib.LX_UNPROTECT), 0)
        self.assertWritten(w, 7)
        self.assertEqual((self.region.state[7], self.region.cow_fills), (lib.LX_PAGE_PRIVATE, 1))
        self.assertEqual(self.m.image_sum(7), self.m.sums[7])

    def test_held_write_waits_until_drop_and_release(self):
        """A write to a held page waits; dropped and released, the page
        faults again through the fast path, reads the image's data, and the
        write then makes its private copy."""
        self.assertEqual(lib.lx_resolve(self.region, 9, 1, lib.LX_CONTINUE), 0)
        self.assertEqual(set_state(self.region, [9], lib.LX_PAGE_HOLD), [lib.LX_PAGE_SHARED])
        self.region.credits = self.pager.credits[0] = 1
        w = self.m.write(9, 96)
        serve_until(self.pager, lambda: self.pager.records)
        self.assertEqual(self.pager.records, [(0, lib.LX_HOLD, 9)])
        dropped = ffi.new("uint8_t[1]")
        self.assertEqual(lib.lx_drop_clean(self.m.pagemap, self.m.addr, [9], 1, dropped), 1)
        self.assertEqual(self.m.kind(9), lib.LX_PAGE_ABSENT)
        self.assertTrue(w.is_alive())
        set_state(self.region, [9], lib.LX_PAGE_ABSENT)       # release: wakes the writer
        serve_until(self.pager, lambda: len(self.pager.records) == 3)
        self.assertEqual(self.pager.records[1:], [(0, lib.LX_SERVED, 9), (0, lib.LX_WRITTEN, 9)])
        self.assertWritten(w, 9)

    def test_dropped_page_reads_the_image_again(self):
        self.region.credits = 1
        self.pager.credits[0] = 1
        self.assertEqual(lib.lx_resolve(self.region, 4, 1, lib.LX_CONTINUE), 0)
        set_state(self.region, [4], lib.LX_PAGE_HOLD)
        dropped = ffi.new("uint8_t[1]")
        self.assertEqual(lib.lx_drop_clean(self.m.pagemap, self.m.addr, [4], 1, dropped), 1)
        set_state(self.region, [4], lib.LX_PAGE_ABSENT)
        t = self.m.touch(4)
        serve_until(self.pager, lambda: self.pager.records)
        self.assertEqual(self.pager.records, [(0, lib.LX_SERVED, 4)])
        self.assertServedWith(t, self.m.sums[4])

    def test_hold_protects_a_private_page(self):
        """Held, a private page cannot change (a write waits for Python);
        remembered as private, the write goes through without a copy."""
        page = ffi.new("uint64_t[]", [3] * (PAGE // 8))
        self.assertEqual(lib.lx_copy_page(self.region, 11, page), 0)
        self.assertEqual(self.m.kind(11), lib.LX_PAGE_PRIVATE)
        self.assertEqual(set_state(self.region, [11], lib.LX_PAGE_HOLD), [lib.LX_PAGE_PRIVATE])
        self.assertEqual(self.m.kind(11), lib.LX_PAGE_PRIVATE | lib.LX_KIND_WP)
        self.pager.credits[0] = 5
        w = self.m.write(11, 95)
        serve_until(self.pager, lambda: self.pager.records)
        self.assertEqual(self.pager.records, [(0, lib.LX_HOLD, 11)])
        self.assertEqual(self.m.read(11), [3 * PAGE // 8])   # reads do not wait
        self.assertEqual(set_state(self.region, [11], lib.LX_PAGE_PRIVATE), [lib.LX_PAGE_HOLD])
        self.assertWritten(w, 11)
        self.assertEqual((self.pager.credits[0], self.region.cow_fills), (5, 0))

    def test_a_stale_protection_does_not_trap_a_writer(self):
        """A WP fault on a page C has as private (protection left from a hold
        whose state was reset) is unprotected, not just woken."""
        page = ffi.new("uint64_t[]", [3] * (PAGE // 8))
        self.assertEqual(lib.lx_copy_page(self.region, 13, page), 0)
        set_state(self.region, [13], lib.LX_PAGE_HOLD)
        self.region.state[13] = lib.LX_PAGE_PRIVATE
        w = self.m.write(13, 94)
        serve_until(self.pager, lambda: self.region.dup_wakes)
        self.assertWritten(w, 13)
        self.assertEqual(self.pager.records, [])

    def test_missing_nonzero_page_is_fetched_and_copied(self):
        t = self.m.touch(0)                   # a hole not marked zero: Python fetches
        serve_until(self.pager, lambda: self.pager.records)
        self.assertEqual(self.pager.records, [(0, lib.LX_FETCH, 0)])
        page = ffi.new("uint64_t[]", [7] * (PAGE // 8))
        self.assertEqual(lib.lx_copy_page(self.region, 0, page), 0)
        self.assertServedWith(t, 7 * PAGE // 8)
        self.assertEqual(self.region.state[0], lib.LX_PAGE_PRIVATE)
        self.assertEqual(lib.lx_copy_page(self.region, 0, page), -17)  # EEXIST

    def test_continue_on_a_hole_fails(self):
        """What load_shared sees when this host's cache lacks the page."""
        self.assertEqual(lib.lx_resolve(self.region, 0, 1, lib.LX_CONTINUE), -14)   # EFAULT
        self.assertEqual(self.region.state[0], lib.LX_PAGE_ABSENT)

    def test_hold_is_left_to_python(self):
        self.region.credits = 100
        set_state(self.region, [9], lib.LX_PAGE_HOLD)
        t = self.m.touch(9)
        serve_until(self.pager, lambda: self.pager.records)
        self.assertEqual(self.pager.records, [(0, lib.LX_HOLD, 9)])
        self.assertEqual(self.region.credits, 100)
        page = ffi.new("uint64_t[]", [1] * (PAGE // 8))  # e.g. a paged-out private page
        self.assertEqual(lib.lx_copy_page(self.region, 9, page), 0)
        self.assertServedWith(t, PAGE // 8)

    def test_duplicate_fault_gets_wake(self):
        """A fault on a page C believes mapped is only woken (here it faults
        again and again, since it really is absent, until state is fixed)."""
        self.region.credits = 100
        self.region.state[12] = lib.LX_PAGE_SHARED
        t = self.m.touch(12)
        serve_until(self.pager, lambda: self.region.dup_wakes > 1)
        self.assertEqual(self.pager.records, [])
        self.region.state[12] = lib.LX_PAGE_ABSENT
        serve_until(self.pager, lambda: self.pager.records)
        self.assertEqual(self.pager.records, [(0, lib.LX_SERVED, 12)])
        self.assertServedWith(t, self.m.sums[12])

    def test_resolve_range_and_already_present(self):
        self.assertEqual(lib.lx_resolve(self.region, 20, 4, lib.LX_CONTINUE), 0)
        self.assertEqual(lib.lx_resolve(self.region, 18, 8, lib.LX_CONTINUE), 0)  # overlaps
        self.assertEqual([self.region.state[i] for i in range(17, 27)], [0] + [1] * 8 + [0])
        self.assertEqual(self.region.minor_fills, 8)
        self.assertEqual(lib.lx_resolve(self.region, NPAGES - 1, 2, lib.LX_CONTINUE), -22)
        t = self.m.touch(21)                  # already mapped: no fault at all
        self.assertServedWith(t, self.m.sums[21])
        self.assertEqual(self.region.faults, 0)

    def test_out_full_leaves_faults_queued(self):
        self.pager.max_out = 1
        ts = [self.m.touch(pfn) for pfn in (30, 31, 32)]
        time.sleep(0.2)
        got = [self.pager.serve_once(100) for _ in range(3)]
        self.assertEqual(sorted(r[0][2] for r in got), [30, 31, 32])
        for pfn, t in zip((30, 31, 32), ts):
            lib.lx_resolve(self.region, pfn, 1, lib.LX_CONTINUE)
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
        region.state[workload.PARAMS_PFN] = lib.LX_PAGE_HOLD
        shared = lib.lx_map_memfd(image.fd, params.memory_bytes, 0)
        self.addCleanup(lib.lx_unmap, shared, params.memory_bytes)
        ours.setblocking(False)
        result = b""
        deadline = time.monotonic() + 30
        while len(result) < 4 and time.monotonic() < deadline:
            for _, kind, pfn in pager.serve_once(20):
                if kind == lib.LX_HOLD:
                    src = ffi.cast("char *", shared) + pfn * PAGE
                    self.assertEqual(lib.lx_copy_page(region, pfn, src), 0)
            try:
                result += ours.recv(4)
            except BlockingIOError:
                pass
        _, status = os.waitpid(pid, 0)
        self.assertEqual(status, 0)
        self.assertEqual(struct.unpack("<I", result)[0], workload.expected_result(params, 77, 3))
        self.assertGreater(region.minor_fills, 0)
        self.assertGreater(region.zero_fills, 0)
        self.assertIn((0, lib.LX_HOLD, workload.PARAMS_PFN), pager.records)
