"""MicroVM against the real kernel: master → image → clones served by the
C pager fast path from a real userfaultfd."""
import os
import select
import subprocess
import threading
import time

from twisted.trial import unittest

from xenclone import workload
from xenclone.interfaces import FaultKind

if os.path.exists("/dev/kvm"):
    from xenclone._linux import ffi, lib
    from xenclone.backends.kvm.microvm import MicroVM, host_features

GUEST_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "guest")
GUEST_BIN = os.path.join(GUEST_DIR, "build", "guest.bin")
MEMORY_MIB = 16


def require_kvm():
    if not os.path.exists("/dev/kvm"):
        raise unittest.SkipTest("/dev/kvm absent")
    if not os.path.exists(GUEST_BIN):
        subprocess.run(["make", "-s", "-C", GUEST_DIR], check=True)


class Image:
    """A blessed master: its vCPU state, and its non-zero pages copied into a
    fresh memfd (zero pages stay holes, so clones MISSING-fault on them)."""

    def __init__(self, params):
        self.params = params
        npages = params.memory_pages
        master_fd = os.memfd_create("master")
        os.ftruncate(master_fd, params.memory_bytes)
        master = MicroVM.of(master_fd, npages, private=False)
        try:
            with open(GUEST_BIN, "rb") as f:
                master.setup_master(params, f.read())
            self.ready = master.run_until_exit(lambda port: 0)
            self.bless = master.run_until_exit(lambda port: 0)
            self.state = master.state()
            self.fd = os.memfd_create("image")
            os.ftruncate(self.fd, params.memory_bytes)
            image = lib.lx_map_memfd(self.fd, params.memory_bytes, 0)
            self.zero = ffi.new("uint8_t[]", npages)
            self.nonzero = lib.lx_copy_nonzero(ffi.cast("void *", master.addr),
                                               ffi.cast("void *", image), npages, self.zero)
            self.sums = master.page_sums()
            lib.lx_unmap(image, params.memory_bytes)
        finally:
            master.close()
            os.close(master_fd)

    def close(self):
        os.close(self.fd)


class Pager:
    """lx_pager_serve in a thread over one or more regions; records what it
    saw. ``credits`` are the host's (copy on write), ``add`` takes a clone's."""

    def __init__(self, credits=1 << 40, max_out=256):
        self.epoll = select.epoll()
        self.wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        lib.lx_epoll_add(self.epoll.fileno(), self.wake_fd, lib.LX_WAKE_DATA)
        self.regions = []
        self.region_array = ffi.new("struct lx_region *[]", 1)
        self.credits = ffi.new("int64_t *", credits)
        self.out = ffi.new("struct lx_fault[]", max_out)
        self.max_out = max_out
        self.records = []
        self._stop = False
        self._thread = None

    def add(self, uffd, base, npages, zero, credits=1 << 40):
        r = ffi.new("struct lx_region *", dict(uffd=uffd, base=base, npages=npages, zero=zero,
                                               credits=credits))
        r.state = state = ffi.new("uint8_t[]", npages)
        self.regions.append((r, state))
        self.region_array = ffi.new("struct lx_region *[]", [r for r, _ in self.regions])
        self.check(lib.lx_epoll_add(self.epoll.fileno(), uffd, len(self.regions) - 1))
        if self._thread:        # a running serve call must see the new array
            os.eventfd_write(self.wake_fd, 1)
        return r

    @staticmethod
    def check(rc):
        if rc < 0:
            raise OSError(-rc, os.strerror(-rc))
        return rc

    def serve_once(self, timeout_ms):
        n = self.check(lib.lx_pager_serve(
            self.epoll.fileno(), self.region_array, len(self.regions), self.wake_fd,
            self.credits, self.out, self.max_out, timeout_ms))
        got = [(o.region, o.kind, range(o.pfn, o.pfn + o.count) if o.kind in FaultKind.RUNS
                else o.pfn) for o in (self.out[i] for i in range(n))]
        self.records.extend(got)
        return got

    def start(self):
        def loop():
            while not self._stop:
                self.serve_once(1000)
        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop(self):
        self._stop = True
        os.eventfd_write(self.wake_fd, 1)
        if self._thread:
            self._thread.join()

    def close(self):
        self.epoll.close()
        os.close(self.wake_fd)


def launch_clone(image, ahead=None):
    """A clone of ``image``; in VM ``ahead`` if one was made before the launch."""
    clone = ahead or MicroVM(image.params.memory_pages)
    clone.map_memory(image.fd, private=True)
    uffd = clone.register_uffd()
    clone.set_state(image.state)
    return clone, uffd


def run_clone(clone, clone_id, input):
    """Run a clone to DONE; returns (result, first-instruction t_ns)."""
    values = {workload.PORT_CLONE_ID: clone_id, workload.PORT_INPUT: input}
    result = clone.run_until_exit(values.__getitem__)
    assert (result.kind, result.port) == ("io_out", workload.PORT_RESULT), result
    done = clone.run_until_exit(values.__getitem__)
    assert (done.kind, done.port, done.value) == ("io_out", workload.PORT_DONE, 0), done
    return result.value, clone.in_t_ns[workload.PORT_CLONE_ID]


class ImageTestCase(unittest.TestCase):
    params = workload.Params.for_memory(MEMORY_MIB)

    def setUp(self):
        require_kvm()
        self.image = Image(self.params)
        self.addCleanup(self.image.close)
        self.pager = Pager()
        self.addCleanup(self.pager.close)

    def clone(self):
        clone, uffd = launch_clone(self.image)
        self.addCleanup(clone.close)
        region = self.pager.add(uffd, clone.addr, clone.npages, self.image.zero)
        return clone, region


class MasterTests(ImageTestCase):
    def test_master_ready_then_hlt(self):
        self.assertEqual(self.image.ready[:3], ("io_out", workload.PORT_READY, 1))
        self.assertEqual(self.image.bless.kind, "hlt")
        self.assertEqual(len(self.image.state), lib.mvm_state_size())

    def test_image_has_data_and_zero_pages(self):
        p = self.params
        zero = [self.image.zero[i] for i in range(p.memory_pages)]
        for pfn in (p.data_first_pfn, p.data_first_pfn + 16, workload.PARAMS_PFN + 1):
            self.assertEqual(zero[pfn], 1, pfn)
        for pfn in (workload.PARAMS_PFN, p.data_first_pfn + 1, p.memory_pages - 1):
            self.assertEqual(zero[pfn], 0, pfn)
        self.assertEqual(self.image.nonzero, p.memory_pages - sum(zero))

    def test_bad_state_blob_rejected(self):
        vm, _ = launch_clone(self.image)
        self.addCleanup(vm.close)
        self.assertRaises(OSError, vm.set_state, b"\0" * len(self.image.state))


class CloneTests(ImageTestCase):
    def test_clones_answer_expected_results(self):
        self.pager.start()
        self.addCleanup(self.pager.stop)
        p = self.params
        answers = set()
        for clone_id, input in [(1, 0), (2, 0), (3, 12345), (0xFFFFFFFF, 7)]:
            clone, region = self.clone()
            result, _ = run_clone(clone, clone_id, input)
            self.assertEqual(result, workload.expected_result(p, clone_id, input))
            answers.add(result)
            touched = workload.pages_touched(p, clone_id, input)
            self.assertLessEqual(region.minor_fills + region.zero_fills, len(touched))
            self.assertLess(region.faults, p.memory_pages // 4)
            self.assertGreater(region.zero_fills, 0)
            self.assertGreater(region.minor_fills, 0)
            self.assertEqual(region.bad_faults, 0)
        self.assertEqual(len(answers), 4)
        kinds = {kind for _, kind, _ in self.pager.records}
        self.assertEqual(kinds, {lib.LX_SERVED, lib.LX_ZERO, lib.LX_WRITTEN})

    def test_a_clone_in_a_vm_made_ahead_answers_right(self):
        """A VM made before the launch, its vCPU thread already waiting at
        the gate, runs the clone only once the gate opens, and runs it as
        a VM made at launch does."""
        self.pager.start()
        self.addCleanup(self.pager.stop)
        ahead = MicroVM(self.params.memory_pages, gated=True)
        self.addCleanup(ahead.close)
        got = []
        vcpu = threading.Thread(target=lambda: got.append(run_clone(ahead, 9, 99)), daemon=True)
        vcpu.start()
        clone, uffd = launch_clone(self.image, ahead)
        self.pager.add(uffd, clone.addr, clone.npages, self.image.zero)
        vcpu.join(0.2)
        self.assertTrue(vcpu.is_alive())       # at the gate
        opened = time.monotonic_ns()
        clone.open_gate()
        vcpu.join(30)
        [(result, t_first)] = got
        self.assertEqual(result, workload.expected_result(self.params, 9, 99))
        self.assertGreater(t_first, opened)

    def test_a_kick_lets_a_vcpu_out_of_its_gate(self):
        vm = MicroVM(self.params.memory_pages, gated=True)
        self.addCleanup(vm.close)
        exits = []
        vcpu = threading.Thread(target=lambda: exits.append(vm.run_until_exit(lambda p: 0)),
                                daemon=True)
        vcpu.start()
        time.sleep(0.05)
        vm.kick(vcpu.ident)
        vcpu.join(10)
        self.assertEqual([e.kind for e in exits], ["kicked"])

    def test_every_write_is_seen(self):
        """The pages C saw written are exactly those the kernel shows private."""
        self.pager.start()
        self.addCleanup(self.pager.stop)
        clone, region = self.clone()
        run_clone(clone, 3, 4)
        self.pager.stop()     # its last records are in
        states = bytes(ffi.buffer(region.state, clone.npages))
        kinds = clone.kinds()
        private = [i for i, k in enumerate(kinds) if k & ~lib.LX_KIND_WP == lib.LX_PAGE_PRIVATE]
        self.assertEqual(private, [i for i, s in enumerate(states) if s == lib.LX_PAGE_PRIVATE])
        self.assertEqual(region.cow_fills, len(private))
        self.assertEqual(region.wp_faults, len(private))
        written = [(k, p) for _, k, p in self.pager.records if k == lib.LX_WRITTEN]
        self.assertEqual(sorted(p for _, p in written), private)
        for i, s in enumerate(states):    # everything else C mapped is protected
            if s in (lib.LX_PAGE_SHARED, lib.LX_PAGE_ZERO):
                self.assertEqual(kinds[i], s | lib.LX_KIND_WP, i)
        counts = clone.scan()
        self.assertEqual(counts, {"shared": states.count(lib.LX_PAGE_SHARED),
                                  "private": len(private),
                                  "zero": states.count(lib.LX_PAGE_ZERO),
                                  "absent": states.count(lib.LX_PAGE_ABSENT)})

    def test_clone_writes_stay_private(self):
        self.pager.start()
        self.addCleanup(self.pager.stop)
        clone, _ = self.clone()
        run_clone(clone, 9, 9)
        image = MicroVM.of(self.image.fd, self.params.memory_pages, private=False)
        self.addCleanup(image.close)
        self.assertEqual(image.page_sums(), self.image.sums)
        self.assertNotEqual(clone.page_sums(), self.image.sums)

    def test_kick_before_run_is_sticky(self):
        """A kick that lands outside KVM_RUN makes the next run return at once."""
        clone, _ = self.clone()
        clone.kick(threading.get_ident())
        self.assertEqual(clone.run_until_exit(lambda port: 0).kind, "kicked")
        self.pager.start()
        self.addCleanup(self.pager.stop)
        result, _ = run_clone(clone, 5, 6)
        self.assertEqual(result, workload.expected_result(self.params, 5, 6))

    def test_kick_a_clone_blocked_on_a_fault(self):
        """The kick takes effect at the latest when the fault is served (on
        kvm-pvm a vCPU waiting for a uffd fault is not interruptible), and
        the clone then runs on to the right answer."""
        clone, _ = self.clone()
        exits = []
        values = {workload.PORT_CLONE_ID: 5, workload.PORT_INPUT: 6}
        t = threading.Thread(target=lambda: exits.append(clone.run_until_exit(values.get)))
        t.start()
        time.sleep(0.1)
        clone.kick(t.ident)
        self.pager.start()
        self.addCleanup(self.pager.stop)
        t.join(10)
        self.assertFalse(t.is_alive())
        self.assertEqual(exits[0].kind, "kicked")
        result, _ = run_clone(clone, 5, 6)
        self.assertEqual(result, workload.expected_result(self.params, 5, 6))

    def test_drop_clean_keeps_written_pages(self):
        self.pager.start()
        self.addCleanup(self.pager.stop)
        clone, region = self.clone()
        run_clone(clone, 4, 4)
        self.pager.stop()     # from here on, touching an unfilled page would hang
        states = bytes(ffi.buffer(region.state, clone.npages))
        written = [i for i, s in enumerate(states) if s == lib.LX_PAGE_PRIVATE]
        clean = [i for i, s in enumerate(states) if s in (lib.LX_PAGE_SHARED, lib.LX_PAGE_ZERO)]
        before = {i: clone.page_sums(i, 1)[0] for i in written}
        self.assertTrue(written)
        self.assertTrue(clean)
        dropped = clone.drop_clean(written + clean)
        self.assertEqual(sorted(dropped), sorted(clean))
        self.assertEqual(self._present(clone, clean), [False] * len(clean))
        self.assertEqual(self._present(clone, written), [True] * len(written))
        self.assertEqual([clone.page_sums(i, 1)[0] for i in written],
                         [before[i] for i in written])

    def test_dropped_pages_fault_back_with_image_data(self):
        """Held, dropped and released, clean pages fault again and read the
        image's data; written pages keep the clone's."""
        self.pager.start()
        self.addCleanup(self.pager.stop)
        clone, region = self.clone()
        run_clone(clone, 6, 1)
        states = bytes(ffi.buffer(region.state, clone.npages))
        clean = [i for i, s in enumerate(states) if s == lib.LX_PAGE_SHARED]
        written = [i for i, s in enumerate(states) if s == lib.LX_PAGE_PRIVATE]
        before = clone.page_sums()
        pfns = ffi.new("uint64_t[]", clean)
        self.assertEqual(lib.lx_set_state(region, pfns, len(clean), lib.LX_PAGE_HOLD, ffi.NULL), 0)
        self.assertEqual(sorted(clone.drop_clean(clean + written)), clean)
        self.assertEqual(lib.lx_set_state(region, pfns, len(clean), lib.LX_PAGE_ABSENT, ffi.NULL), 0)
        served = region.minor_fills
        self.assertEqual(clone.page_sums(), before)
        self.pager.stop()     # C counts a fill after the reader woke
        self.assertEqual(region.minor_fills - served, len(clean))
        self.assertEqual([clone.page_sums(i, 1)[0] for i in clean], [self.image.sums[i] for i in clean])
        self.assertNotEqual([before[i] for i in written], [self.image.sums[i] for i in written])

    @staticmethod
    def _present(vm, pfns):
        with open("/proc/self/pagemap", "rb") as f:
            out = []
            for pfn in pfns:
                f.seek((vm.addr // 4096 + pfn) * 8)
                out.append(bool(int.from_bytes(f.read(8), "little") >> 63))
            return out


class HostFeaturesTests(unittest.TestCase):
    def test_features(self):
        require_kvm()
        f = host_features()
        self.assertTrue(f["kvm"])
        self.assertTrue(f["minor_shmem"])
        self.assertTrue(f["missing_shmem"])
        self.assertTrue(f["wp_shmem"])
