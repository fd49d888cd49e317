"""A Linux master's vifs and disks given to its clones (clone_devices.py),
without Xen: the image state carries them, bless snapshots the disks (real
qemu-img) and makes no image domain, each clone's xl settings get its own
MAC and overlay, destroy keeps or removes them, discard is guarded, the
identity nodes go before the clone-id; XenBackend's launch with Xen and xl
faked; and the controller's side (``--wait-identity``, ``info``,
``destroy --keep-disks``).  The real thing is the rig's Linux job."""

import os
import shutil
import subprocess
import tempfile
import types

import attr
from twisted.internet import defer, reactor
from twisted.logger import Logger
from twisted.trial import unittest
from zope.interface import implementer

from xenclone.backends.xen import clone_devices, linux, xl
from xenclone.backends.xen.backend import XenBackend
from xenclone.backends.xen.clone_devices import DeviceClones
from xenclone.backends.xen.clone_mac import clone_mac
from xenclone.backends.xen.disk_snapshots import DiskSnapshots
from xenclone.backends.xen.image_state import LINUX, pack_state, unpack_devices, unpack_state
from xenclone.control import domain_ops
from xenclone.control.records import CloneSpec
from xenclone.interfaces import ILinuxBackend
from xenclone.wire import WireError

from tests import test_xen_linux
from tests.test_xen_linux import FakeXenStore, _LinuxBackend

MIB = 1 << 20
CONFIG = {"name": "web", "type": "pvh", "memory": 128, "kernel": "/k"}


class _Forks:
    """What DeviceClones defers to: ForkClones' image domains."""

    def prepare_image(self, image, parent=None):
        self.prepared.append(image.image_id)
        return defer.succeed(None)

    def drop_image(self, image_id):
        self.dropped.append(image_id)
        return defer.succeed(None)


class _Host(DeviceClones, _Forks):
    """Just what DeviceClones needs of XenBackend."""

    log = Logger()

    def __init__(self, root):
        self.reactor = reactor
        self.disks = DiskSnapshots(reactor, root)
        self.xs = FakeXenStore()
        self.prepared, self.dropped, self._domains = [], [], {}

    def _xenstore(self):
        return defer.succeed(self.xs)

    def _get(self, domid):
        if domid not in self._domains:
            raise WireError("no-domain", "no domain %d" % domid)
        return self._domains[domid]


def image(image_id, kept):
    return types.SimpleNamespace(image_id=image_id,
                                 vcpu_state=pack_state(CONFIG, b"hvm", LINUX, kept))


def clone(n, image_id="web"):
    return CloneSpec(40 + n, "%s.%d" % (image_id, n), n, 40 + n,
                     meta={"image": image_id, "clone_id": n, "generation": 1})


class ImageStateTests(unittest.TestCase):
    def test_devices_travel_apart_from_the_settings(self):
        kept = {"vif": ["bridge=xenbr0"], "disk": []}
        state = pack_state(CONFIG, b"hvm", LINUX, kept)
        self.assertEqual(unpack_state(state), (CONFIG, LINUX, b"hvm"))
        self.assertEqual(unpack_devices(state), kept)
        self.assertIsNone(unpack_devices(pack_state(CONFIG, b"hvm", LINUX)))

    def test_master_settings_add_only_what_it_has(self):
        self.assertEqual(clone_devices.master_settings(CONFIG, {"vif": ["bridge=b"],
                                                               "disk": []}),
                         dict(CONFIG, vif=["bridge=b"]))
        self.assertEqual(clone_devices.master_settings(CONFIG, None), CONFIG)


class CloneDeviceTests(unittest.TestCase):
    def setUp(self):
        if not shutil.which("qemu-img"):
            raise unittest.SkipTest("qemu-img is not installed (Debian package qemu-utils)")
        self.tmp = tempfile.mkdtemp(prefix="xenclone-devices-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.host = _Host(os.path.join(self.tmp, "disks"))
        self.raw = os.path.join(self.tmp, "master.img")
        with open(self.raw, "wb") as f:
            f.truncate(4 * MIB)
        self.kept = clone_devices.specs(clone_devices.parse({
            "vif": ["bridge=xenbr0,mac=00:16:3e:00:00:01,vifname=web0"],
            "disk": ["%s,raw,xvda,w" % self.raw]}))
        self.image = image("web", self.kept)

    @defer.inlineCallbacks
    def test_bless_snapshots_and_makes_no_image_domain(self):
        yield self.host.prepare_image(self.image)
        self.assertEqual(self.host.prepared, [])
        self.assertTrue(os.path.exists(os.path.join(self.tmp, "disks", "web", "xvda.raw")))
        yield self.host.prepare_image(image("plain", None))
        self.assertEqual(self.host.prepared, ["plain"])

    @defer.inlineCallbacks
    def test_each_clone_its_own_mac_bridge_and_overlay(self):
        yield self.host.prepare_image(self.image)
        one = yield self.host._clone_config(self.image, clone(1), CONFIG, "before-run")
        two = yield self.host._clone_config(self.image, clone(2), CONFIG, "lazy")
        self.assertEqual(one["vif"], ["mac=%s,bridge=xenbr0" % clone_mac("web", 1, 1)])
        self.assertNotEqual(one["vif"], two["vif"])
        for n, cfg in ((1, one), (2, two)):
            overlay = os.path.join(self.tmp, "disks", "web", "clones", str(n), "xvda.qcow2")
            self.assertEqual(cfg["disk"], ["format=qcow2,vdev=xvda,access=rw,target=" + overlay])
            info = subprocess.run(["qemu-img", "info", "-U", overlay], check=True,
                                  capture_output=True, text=True).stdout
            self.assertIn("xvda.raw", info)     # backed by the snapshot, not the master
        self.assertEqual(sorted(self.host.disks.overlays("web")), [1, 2])

    @defer.inlineCallbacks
    def test_forks_and_unfinished_blesses_are_refused(self):
        with self.assertRaises(WireError) as cm:
            yield self.host._clone_config(self.image, clone(1), CONFIG, "fork")
        self.assertIn("fork clones get none", str(cm.exception))
        with self.assertRaises(WireError) as cm:
            yield self.host._clone_config(self.image, clone(1), CONFIG, "before-run")
        self.assertEqual(cm.exception.code, "no-snapshot")
        plain = yield self.host._clone_config(image("plain", None), clone(1, "plain"), CONFIG,
                                              "fork")
        self.assertIs(plain, CONFIG)

    @defer.inlineCallbacks
    def test_destroy_keeps_when_asked_and_discard_waits_for_it(self):
        yield self.host.prepare_image(self.image)
        yield self.host._clone_config(self.image, clone(1), CONFIG, "before-run")
        yield self.host._clone_config(self.image, clone(2), CONFIG, "before-run")
        self.assertEqual(self.host._drop_disks(clone(1).meta), [])
        kept = self.host._drop_disks(clone(2).meta, keep=True)
        self.assertEqual([os.path.basename(p) for p in kept], ["xvda.qcow2"])
        with self.assertRaises(WireError) as cm:
            yield self.host.drop_image("web")
        self.assertEqual(cm.exception.code, "in-use")
        self.assertEqual(self.host.dropped, [])
        shutil.rmtree(os.path.dirname(kept[0]))
        yield self.host.drop_image("web")
        self.assertEqual(self.host.dropped, ["web"])
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "disks", "web")))

    @defer.inlineCallbacks
    def test_a_missing_disk_is_refused_before_the_suspend(self):
        os.unlink(self.raw)
        dom = types.SimpleNamespace(devices=self.kept)
        with self.assertRaises(WireError) as cm:
            yield self.host._check_devices(dom)
        self.assertIn("No such file", str(cm.exception))


class IdentityTests(unittest.TestCase):
    def setUp(self):
        self.host = _Host(self.mktemp())

    def test_identity_nodes_before_the_clone_id(self):
        written = []
        self.host.xs.on_write = lambda path, value: written.append(path)
        self.successResultOf(self.host._tell_linux_clone(self.host.xs, 9, 3))
        base = linux.home(9) + "/xenclone/"
        self.assertEqual(written[-1], base + "clone-id")
        self.assertLess(written.index(base + "entropy"), written.index(base + "clone-id"))

    def test_renewed_or_not_at_a_look(self):
        self.host._domains[9] = types.SimpleNamespace(role="clone", kind=LINUX, name="web.1")
        self.host._domains[3] = types.SimpleNamespace(role="master", kind=LINUX, name="web")
        self.assertEqual(self.successResultOf(self.host.identity(9)),
                         {"identity": "not renewed"})
        self.host.xs.nodes[linux.home(9) + "/xenclone/identity"] = b"renewed"
        self.host.xs.nodes[linux.home(9) + "/xenclone/identity-detail"] = b'{"hostname": "w-1"}'
        told = self.successResultOf(self.host.identity(9))
        self.assertEqual((told["identity"], told["detail"]), ("renewed", {"hostname": "w-1"}))
        self.assertEqual(self.failureResultOf(self.host.identity(3), WireError).value.code,
                         "unsupported")


@implementer(ILinuxBackend)
class _IdentityBackend(_LinuxBackend):
    """The second clone launched has no agent."""

    def __init__(self):
        super().__init__()
        self.destroyed, self.launched = [], []

    def launch(self, image, clone):
        self.launched.append(clone.domid)
        return super().launch(image, clone)

    def identity(self, domid, wait=0):
        self.waited = wait
        if domid == self.launched[1]:
            return defer.succeed({"identity": "not renewed"})
        return defer.succeed({"identity": "renewed", "detail": {"hostname": "h"},
                              "seconds": 1.5})

    def destroy(self, domid, keep_disks=False):
        self.destroyed.append((domid, keep_disks))
        return super().destroy(domid).addCallback(
            lambda _: {"domid": domid, "kept_disks": ["/d/%d.qcow2" % domid] if keep_disks
                       else []})


class ControllerTests(unittest.TestCase):
    """The controller's side, on a blessed Linux master's image."""

    controller = test_xen_linux.TakeOverTests.controller

    def launched(self, **msg):
        backend = _IdentityBackend()
        c = self.controller(backend)
        self.successResultOf(c.op_bless({"domain": "rig-pvh", "name": "web"}))
        c.open_image = lambda image_id: defer.succeed(types.SimpleNamespace(
            image_id="web", meta={"memory_mib": 128, "params": None}, origin=None,
            generation=1, npages=16))
        c.pager.attach = lambda *a: None
        launched = self.successResultOf(c.op_launch(dict({"image": "web", "count": 2}, **msg)))
        return c, backend, launched["clones"]

    def test_wait_identity_says_which_clones_renewed(self):
        c, backend, clones = self.launched()
        self.assertNotIn("identity", clones[0])
        c, backend, clones = self.launched(wait_identity=30)
        self.assertEqual(backend.waited, 30)
        self.assertEqual([(x["identity"], x["identity_s"]) for x in clones],
                         [("renewed", 1.5), ("not renewed", None)])
        info = self.successResultOf(c.op_info({"domain": clones[0]["domid"]}))
        self.assertEqual((info["identity"], info["identity_detail"]),
                         ("renewed", {"hostname": "h"}))

    def test_identity_seconds_count_from_each_clones_launch(self):
        """The first clone waited while the second launched: its handshake
        time counts from its own launch, not from the start of the wait."""
        ticks = iter(range(0, 1000, 10))
        self.patch(domain_ops, "time", types.SimpleNamespace(
            monotonic=lambda: next(ticks), monotonic_ns=lambda: 0))
        c, backend, clones = self.launched(wait_identity=30)
        self.assertEqual([x["identity_s"] for x in clones], [21.5, None])

    def test_bad_wait_identity(self):
        c = self.controller(_IdentityBackend())
        with self.assertRaises(WireError) as cm:
            c.op_launch({"image": "web", "wait_identity": -1})
        self.assertEqual(cm.exception.code, "bad-argument")

    def test_destroy_keeps_disks_only_when_asked(self):
        c, backend, clones = self.launched()
        one, two = clones[0]["domid"], clones[1]["domid"]
        self.assertEqual(self.successResultOf(c.op_destroy({"domain": one})),
                         {"domid": one, "name": "web.1"})
        kept = self.successResultOf(c.op_destroy({"domain": two, "keep_disks": True}))
        self.assertEqual(kept["kept_disks"], ["/d/%d.qcow2" % two])
        self.assertEqual(backend.destroyed, [(one, False), (two, True)])


class _Xc:
    def __init__(self):
        self.calls = []

    def hvm_setcontext(self, domid, record):
        self.calls.append(("setcontext", domid))

    def unpause(self, domid):
        self.calls.append(("unpause", domid))

    def version(self):
        return "4.17.5"


class BackendLaunchTests(unittest.TestCase):
    """XenBackend's launch of a clone filled before it runs, Xen and xl
    faked: what ``xl create -p`` is given, and what is undone."""

    def setUp(self):
        if not shutil.which("qemu-img"):
            raise unittest.SkipTest("qemu-img is not installed (Debian package qemu-utils)")
        tmp = tempfile.mkdtemp(prefix="xenclone-launch-")
        self.addCleanup(shutil.rmtree, tmp, True)
        raw = os.path.join(tmp, "master.img")
        with open(raw, "wb") as f:
            f.truncate(MIB)
        b = self.backend = XenBackend.__new__(XenBackend)
        b.reactor, b.work_dir, b._domains, b.fill, b.mem_paging = reactor, tmp, {}, "auto", False
        b.disks = DiskSnapshots(reactor, os.path.join(tmp, "disks"))
        b.images = types.SimpleNamespace(available=False, refused="no MEM_SHARING",
                                         domid=lambda image_id: None)
        b.xc, b.fm, b.xs = _Xc(), None, FakeXenStore()
        b._xenstore = lambda: defer.succeed(b.xs)
        b._thread = lambda fn, *args: defer.maybeDeferred(fn, *args)
        b._fill = lambda domid, image: []
        self.created = []
        b._create = lambda config: (self.created.append(config), defer.succeed(12))[1]
        kept = {"vif": ["bridge=xenbr0"], "disk": ["%s,raw,xvda,w" % raw]}
        self.image = types.SimpleNamespace(
            image_id="web", arch="xen-pvh-x86", npages=16, server_domain=None, pages=None,
            vcpu_state=pack_state(CONFIG, b"hvm", LINUX, kept))

    @defer.inlineCallbacks
    def test_the_clone_is_created_with_its_devices_and_identity(self):
        written = []
        self.backend.xs.on_write = lambda path, value: written.append(path)
        yield self.backend.prepare_image(self.image)
        region = yield self.backend.launch(self.image, clone(1))
        self.assertEqual(region.domid, 12)
        [config] = self.created
        self.assertEqual(config["name"], "web.1")
        self.assertEqual(config["vif"], ["mac=%s,bridge=xenbr0" % clone_mac("web", 1, 1)])
        self.assertIn("clones/1/xvda.qcow2", config["disk"][0])
        self.assertEqual(written[-1], "/local/domain/12/xenclone/clone-id")
        self.assertIn("/local/domain/12/xenclone/entropy", written)
        self.assertEqual(self.backend.xc.calls, [("setcontext", 12), ("unpause", 12)])
        destroyed = []
        self.patch(xl, "destroy",
                   lambda reactor, domid: (destroyed.append(domid), defer.succeed(""))[1])
        self.backend._info = lambda dom: object()
        done = yield self.backend.destroy(12, keep_disks=True)
        self.assertEqual(destroyed, [12])
        self.assertEqual([os.path.basename(p) for p in done["kept_disks"]], ["xvda.qcow2"])

    @defer.inlineCallbacks
    def test_a_failed_launch_leaves_no_overlay(self):
        yield self.backend.prepare_image(self.image)
        self.backend._create = lambda config: defer.fail(WireError("xl-failed", "no bridge"))
        with self.assertRaises(WireError):
            yield self.backend.launch(self.image, clone(1))
        self.assertEqual(self.backend.disks.overlays("web"), {})

    @defer.inlineCallbacks
    def test_fork_is_refused_for_an_image_with_devices(self):
        self.backend.images.available = True
        with self.assertRaises(WireError) as cm:
            yield self.backend.launch(self.image, attr.evolve(clone(1), fill="fork"))
        self.assertEqual(cm.exception.code, "no-fork")
        self.assertEqual(self.created, [])
