"""One set of cases for every IBackend: the fake (fast) and the real KVM
backend (a real VMM host process, real KVM, real userfaultfd)."""

import os
import shutil
import tempfile
import zlib

from twisted.internet import defer, reactor, task
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from xenclone import workload
from xenclone.control.records import CloneSpec, MasterSpec
from xenclone.image import OpenImage
from xenclone.interfaces import DomainState, FaultKind, IBackend, IFaultRegion, PageState
from xenclone.wire import WireError

from tests.fakes import FakeBackend

NPAGES = 4096


class BackendContract:
    """Mixed into a TestCase whose ``make_backend`` returns a Deferred."""

    @defer.inlineCallbacks
    def setUp(self):
        self.backend = yield self.make_backend()

    @defer.inlineCallbacks
    def _image(self, domid=1):
        params = workload.Params.for_memory(NPAGES // 256)
        yield self.backend.create_master(MasterSpec(domid, "m%d" % domid, NPAGES,
                                                    workload.dataclasses.asdict(params)))
        cap = yield self.backend.capture(domid)
        self.addCleanup(os.close, cap.mem_fd)
        return OpenImage("img", "g1", cap.arch, cap.vcpu_state, NPAGES, cap.mem_fd,
                         holes(cap.mem_fd, NPAGES))

    def test_provides_the_interface(self):
        verifyObject(IBackend, self.backend)

    @defer.inlineCallbacks
    def test_capture_gives_state(self):
        image = yield self._image()
        self.assertTrue(image.vcpu_state)
        self.assertTrue(image.arch)

    @defer.inlineCallbacks
    def test_launch_gives_a_fault_region(self):
        image = yield self._image()
        region = yield self.backend.launch(image, CloneSpec(2, "c", 1, 7, paused=True))
        verifyObject(IFaultRegion, region)
        self.assertEqual((region.domid, region.npages), (2, NPAGES))
        # What the backend mapped at launch is the pager's to account (a
        # hole may have unmapped it since): the region claims none of it.
        self.assertEqual(set(region.states()), {PageState.ABSENT})
        yield self.backend.destroy(2)

    @defer.inlineCallbacks
    def test_pause_unpause_destroy(self):
        # Nobody serves this clone's faults: pause and destroy must still
        # answer, as they must while a pager is down.
        image = yield self._image()
        region = yield self.backend.launch(image, CloneSpec(2, "c", 1, 7, paused=True))
        yield self.backend.unpause(2)
        yield self.backend.pause(2)
        region.close()
        yield self.backend.destroy(2)
        with self.assertRaises(WireError) as cm:
            yield self.backend.pause(2)
        self.assertEqual(cm.exception.code, "no-domain")

    @defer.inlineCallbacks
    def test_drop_clean_answers_a_subset(self):
        image = yield self._image()
        yield self.backend.launch(image, CloneSpec(2, "c", 1, 7, paused=True))
        dropped = yield self.backend.drop_clean(2, [100, 101])
        self.assertTrue(set(dropped) <= {100, 101})
        yield self.backend.destroy(2)

    @defer.inlineCallbacks
    def test_scan_counts_every_page(self):
        image = yield self._image()
        yield self.backend.launch(image, CloneSpec(2, "c", 1, 7, paused=True))
        counts = yield self.backend.scan(2)
        self.assertEqual(set(counts), {"shared", "private", "zero", "absent"})
        self.assertEqual(sum(counts.values()), NPAGES)
        self.assertEqual(counts["private"], 0)
        yield self.backend.destroy(2)

    @defer.inlineCallbacks
    def test_page_out_checks_its_request(self):
        image = yield self._image()
        region = yield self.backend.launch(image, CloneSpec(2, "c", 1, 7, paused=True))
        store = os.path.join(tempfile.gettempdir(), "xenclone-contract-%d.pages" % os.getpid())
        self.addCleanup(lambda: os.path.exists(store) and os.unlink(store))
        self.assertEqual((yield self.backend.page_out(2, [], [], store, False)), [])
        for pfns, slots, path in [([1], [0], "relative.pages"), ([1, 2], [0], store),
                                  ([NPAGES], [0], store)]:
            with self.assertRaises(WireError) as cm:
                yield self.backend.page_out(2, pfns, slots, path, False)
            self.assertEqual(cm.exception.code, "bad-request")
        region.hold([100])           # held, but never written: nothing to page out
        with self.assertRaises(WireError) as cm:
            yield self.backend.page_out(2, [100], [0], store, False)
        self.assertEqual(cm.exception.code, "not-held")
        with self.assertRaises(WireError) as cm:
            yield self.backend.page_out(4242, [], [], store, False)
        self.assertEqual(cm.exception.code, "no-domain")
        region.close()
        yield self.backend.destroy(2)

    @defer.inlineCallbacks
    def test_unknown_domain_is_refused(self):
        for call in (self.backend.destroy, self.backend.unpause, self.backend.capture):
            with self.assertRaises(WireError) as cm:
                yield call(4242)
            self.assertEqual(cm.exception.code, "no-domain")


def holes(fd, npages):
    """The zero map of a memfd: 1 for each page that is a hole."""
    zero = bytearray(b"\1" * npages)
    off, end = 0, npages * 4096
    while off < end:
        try:
            data = os.lseek(fd, off, os.SEEK_DATA)
        except OSError:           # ENXIO: only holes from here
            break
        hole = os.lseek(fd, data, os.SEEK_HOLE)
        zero[data // 4096:(hole + 4095) // 4096] = bytes((hole + 4095) // 4096 - data // 4096)
        off = hole
    return bytes(zero)


class FakeBackendContract(BackendContract, unittest.TestCase):
    def make_backend(self):
        return defer.succeed(FakeBackend())


class KvmBackendContract(BackendContract, unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def make_backend(self):
        if not os.access("/dev/kvm", os.R_OK | os.W_OK):
            raise unittest.SkipTest("no /dev/kvm on this host")
        from xenclone.backends.kvm.backend import KvmBackend
        from xenclone.helpers import HelperProcess
        from xenclone.wire import FrameProtocol
        tmp = self.tmp = tempfile.mkdtemp(prefix="xenclone-contract-", dir="/var/tmp")
        if not os.environ.get("XENCLONE_KEEP_TMP"):
            self.addCleanup(shutil.rmtree, tmp, True)
        helper = HelperProcess(reactor, "VMM host", "xenclone.backends.kvm.vmmhost_main", [],
                               os.path.join(tmp, "vmm.sock"), os.path.join(tmp, "vmm.log"))
        link = yield helper.connect(FrameProtocol)
        pid = self.vmm_pid = (yield link.request("ping"))["pid"]
        self.addCleanup(lambda: os.kill(pid, 15))
        self.addCleanup(link.close)
        return KvmBackend(link)

    def _private_maps(self, fd):
        """How many private mappings of memfd ``fd`` the VMM host has."""
        ino = os.fstat(fd).st_ino
        with open("/proc/%d/maps" % self.vmm_pid) as f:
            return sum(1 for line in f
                       if line.split()[1].endswith("p") and int(line.split()[4]) == ino)

    @defer.inlineCallbacks
    def _until(self, check, what):
        for _ in range(500):
            if check():
                return
            yield task.deferLater(reactor, 0.01, lambda: None)
        self.fail(what)

    @defer.inlineCallbacks
    def _run_clone(self, domid, region):
        """Run a paused clone to its answer under the real fault source."""
        from xenclone.backends.kvm.uffd_source import UffdFaultSource
        region.remember(region.prefilled, PageState.SHARED)     # as the pager does
        source = UffdFaultSource(reactor)
        source.start(lambda records: None)
        self.addCleanup(source.stop)
        source.add(region)
        source.set_credits(NPAGES, {domid: NPAGES})
        yield self.backend.unpause(domid)
        for _ in range(3000):
            [dom] = [d for d in (yield self.backend.domains()) if d["domid"] == domid]
            if dom["state"] == DomainState.DONE:
                return dom["result"]
            yield task.deferLater(reactor, 0.01, lambda: None)
        self.fail("clone %d did not finish" % domid)

    @defer.inlineCallbacks
    def test_spares_map_the_image_last_launched_until_it_is_forgotten(self):
        """After a launch, clones-to-be are made with that image mapped; the
        next clone runs in one and answers right; forget_image lets the
        rest of them go, so they no longer keep the image."""
        from xenclone.backends.kvm.vmmhost import SPARE_VMS
        image = yield self._image()
        yield self.backend.launch(image, CloneSpec(2, "c", 1, 7, paused=True))
        yield self._until(lambda: self._private_maps(image.mem_fd) == 1 + SPARE_VMS,
                          "no spares made for the image")
        region = yield self.backend.launch(image, CloneSpec(3, "d", 5, 6, paused=True))
        self.addCleanup(self.backend.destroy, 3)
        self.assertEqual(region.npages, NPAGES)
        params = workload.Params.for_memory(NPAGES // 256)
        self.assertEqual((yield self._run_clone(3, region)), workload.expected_result(params, 5, 6))
        yield self.backend.destroy(2)
        self.backend.forget_image(image)
        yield self._until(lambda: self._private_maps(image.mem_fd) == 1,
                          "spares still map a forgotten image")

    @defer.inlineCallbacks
    def test_run_page_out_and_back(self):
        """A clone runs under the real fault source; its written pages are
        held, paged out to a store and faulted back exactly."""
        from xenclone.backends.kvm.uffd_source import UffdFaultSource
        image = yield self._image()
        region = yield self.backend.launch(image, CloneSpec(2, "c", 3, 4, paused=True))
        self.addCleanup(self.backend.destroy, 2)
        region.remember(region.prefilled, PageState.SHARED)     # as the pager does
        stored = {}           # pfn -> bytes to load back when it faults
        kinds = set()

        def deliver(records):
            for _, kind, pfns in records:       # the source's: pfns a list (or range)
                kinds.add(kind)
                for pfn in pfns if kind == FaultKind.HOLD else ():
                    if pfn in stored:
                        region.load_copy(pfn, stored.pop(pfn))

        source = UffdFaultSource(reactor)
        source.start(deliver)
        self.addCleanup(source.stop)
        source.add(region)
        source.set_credits(NPAGES, {2: NPAGES})
        yield self.backend.unpause(2)
        for _ in range(3000):
            if [d for d in (yield self.backend.domains()) if d["domid"] == 2][0]["state"] \
                    == DomainState.DONE:
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        private = [i for i, s in enumerate(region.states()) if s == PageState.PRIVATE]
        self.assertTrue(private)
        self.assertLessEqual({FaultKind.SERVED, FaultKind.ZERO, FaultKind.WRITTEN}, kinds)
        self.assertEqual((yield self.backend.scan(2))["private"], len(private))
        sums = yield self.backend.page_sums(2, private)
        self.assertEqual(set(region.hold(private)), {PageState.PRIVATE})
        store = os.path.join(self.tmp, "c2.pages")
        crcs = yield self.backend.page_out(2, private, list(range(len(private))), store, True)
        self.assertEqual((yield self.backend.scan(2))["private"], 0)
        with open(store, "rb") as f:
            for pfn, crc in zip(private, crcs):
                stored[pfn] = f.read(4096)
                self.assertEqual(zlib.crc32(stored[pfn]), crc)
        self.assertEqual((yield self.backend.page_sums(2, private)), sums)
        self.assertEqual(stored, {})
        self.assertEqual((yield self.backend.scan(2))["private"], len(private))
