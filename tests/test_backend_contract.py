"""One set of cases for every IBackend: the fake (fast) and the real KVM
backend (a real VMM host process, real KVM, real userfaultfd)."""

import os
import shutil
import tempfile

from twisted.internet import defer, reactor
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from xenclone import workload
from xenclone.control.controller import CloneSpec, MasterSpec
from xenclone.image import OpenImage
from xenclone.interfaces import IBackend, IFaultRegion
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
                         bytes(NPAGES))

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
        dropped = yield self.backend.drop_clean(2, [100, 101], blocked=False)
        self.assertTrue(set(dropped) <= {100, 101})
        yield self.backend.destroy(2)

    @defer.inlineCallbacks
    def test_unknown_domain_is_refused(self):
        for call in (self.backend.destroy, self.backend.unpause, self.backend.capture):
            with self.assertRaises(WireError) as cm:
                yield call(4242)
            self.assertEqual(cm.exception.code, "no-domain")


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
        tmp = tempfile.mkdtemp(prefix="xenclone-contract-")
        if not os.environ.get("XENCLONE_KEEP_TMP"):
            self.addCleanup(shutil.rmtree, tmp, True)
        helper = HelperProcess(reactor, "VMM host", "xenclone.backends.kvm.vmmhost", [],
                               os.path.join(tmp, "vmm.sock"), os.path.join(tmp, "vmm.log"))
        link = yield helper.connect(FrameProtocol)
        pid = (yield link.request("ping"))["pid"]
        self.addCleanup(lambda: os.kill(pid, 15))
        self.addCleanup(link.close)
        return KvmBackend(link)
