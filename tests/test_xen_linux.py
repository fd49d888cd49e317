"""Linux PVH masters without Xen: the suspend protocol against a fake
XenStore and fake Xen flags (ack, withdrawal, a last-minute ack, timeouts),
readiness, the settings of a domain taken over from ``xl list -l`` (PV and
devices refused), and the controller's take-over on ``bless``.  The real
thing is the rig's Linux job (tests/test_xen_rig.py)."""

import json
import shutil
import tempfile

from twisted.internet import defer, task
from twisted.trial import unittest
from zope.interface import implementer

from xenclone.backends.xen import linux
from xenclone.control.controller import Controller
from xenclone.image import Capture
from xenclone.interfaces import IDomainNumbering, ILinuxBackend
from xenclone.ledger import Ledger
from xenclone.pager import Pager
from xenclone.policy.sharing import SharingPolicy
from xenclone.wire import WireError
from xenclone.xenstore.wire import XenStoreError

from tests.fakes import FakeBackend, FakeMemoryServer, FakeSource

DOMID = 5
SHUTDOWN = "/local/domain/5/control/shutdown"


class FakeXenStore:
    """A dict of nodes; ``on_write(path, value)`` plays the guest."""

    def __init__(self):
        self.nodes, self.perms, self.resumed = {}, {}, []
        self.on_write = None
        self.tx_hook = None     # run inside a transaction, before its read

    def read(self, path):
        if path not in self.nodes:
            return defer.fail(XenStoreError("ENOENT"))
        return defer.succeed(self.nodes[path])

    def write(self, path, value):
        self.nodes[path] = value.encode() if isinstance(value, str) else value
        if self.on_write:
            self.on_write(path, self.nodes[path])
        return defer.succeed(None)

    def set_perms(self, path, perms):
        self.perms[path] = perms
        return defer.succeed(None)

    def transaction(self, fn):
        if self.tx_hook:
            self.tx_hook()
        return defer.maybeDeferred(fn, self)

    def resume(self, domid):
        self.resumed.append(domid)
        return defer.succeed(None)


class _Info:
    def __init__(self, reason):
        self.shutdown_reason = reason


class FakeXc:
    def __init__(self):
        self.reason = None
        self.resumed = []

    def domain_info(self, domid):
        return _Info(self.reason)

    def resume(self, domid, fast):
        self.resumed.append((domid, fast))


class SuspendTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.xs, self.xc = FakeXenStore(), FakeXc()

    def suspend(self):
        return linux.suspend(self.clock, self.xs, self.xc, DOMID, "lx")

    def run_for(self, seconds):
        self.clock.pump([linux.POLL] * int(seconds / linux.POLL + 1))

    def guest_acks_at(self, ack_s, suspend_s=None):
        """The guest clears the node at ack_s and suspends at suspend_s."""
        def at_write(path, value):
            if path == SHUTDOWN and value == b"suspend":
                self.clock.callLater(ack_s, self.xs.nodes.__setitem__, SHUTDOWN, b"")
                if suspend_s is not None:
                    self.clock.callLater(suspend_s, setattr, self.xc, "reason",
                                         linux.SHUTDOWN_SUSPEND)

        self.xs.on_write = at_write

    def test_ack_then_suspend(self):
        self.guest_acks_at(0.5, 1.2)
        d = self.suspend()
        self.run_for(2)
        times = self.successResultOf(d)
        self.assertAlmostEqual(times["ack_s"], 0.5, delta=0.15)
        self.assertAlmostEqual(times["suspend_s"], 1.2, delta=0.15)

    def test_no_ack_is_withdrawn(self):
        d = self.suspend()
        self.run_for(linux.SUSPEND_TIMEOUT + 1)
        e = self.failureResultOf(d, WireError).value
        self.assertEqual(e.code, "not-suspended")
        self.assertIn("did not acknowledge", str(e))
        # Withdrawn: the guest will not suspend later, unseen.
        self.assertEqual(self.xs.nodes[SHUTDOWN], b"")

    def test_last_minute_ack_is_waited_for(self):
        d = self.suspend()
        self.run_for(linux.SUSPEND_TIMEOUT - 1)
        self.assertNoResult(d)

        def ack_inside_the_transaction():
            self.xs.nodes[SHUTDOWN] = b""
            self.clock.callLater(3, setattr, self.xc, "reason", linux.SHUTDOWN_SUSPEND)

        self.xs.tx_hook = ack_inside_the_transaction
        self.run_for(6)
        self.assertGreater(self.successResultOf(d)["suspend_s"], linux.SUSPEND_TIMEOUT)

    def test_ack_without_suspend_times_out(self):
        self.guest_acks_at(1)
        d = self.suspend()
        self.run_for(1 + linux.SUSPEND_TIMEOUT + 1)
        e = self.failureResultOf(d, WireError).value
        self.assertIn("acknowledged the suspend request but did not suspend", str(e))

    def test_shutdown_instead_of_suspend(self):
        self.xs.on_write = lambda path, value: setattr(self.xc, "reason", 0)
        d = self.suspend()
        self.run_for(1)
        self.assertIn("shut down (Xen reason 0)", str(self.failureResultOf(d, WireError).value))

    def test_resume_is_cooperative_and_told_to_xenstored(self):
        self.successResultOf(linux.resume(self.xs, self.xc, DOMID))
        self.assertEqual(self.xc.resumed, [(DOMID, True)])
        self.assertEqual(self.xs.resumed, [DOMID])


class ReadyTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.xs, self.xc = FakeXenStore(), FakeXc()

    def test_ready_once_it_offers_suspend(self):
        d = linux.wait_ready(self.clock, self.xs, self.xc, DOMID, "lx")
        self.clock.pump([linux.POLL] * 10)
        self.assertNoResult(d)
        self.xs.nodes["/local/domain/5/control/feature-suspend"] = b"1"
        self.clock.pump([linux.POLL] * 2)
        self.successResultOf(d)

    def test_no_pv_drivers_times_out(self):
        d = linux.wait_ready(self.clock, self.xs, self.xc, DOMID, "lx", timeout=5)
        self.clock.pump([linux.POLL] * 60)
        self.assertIn("feature-suspend", str(self.failureResultOf(d, WireError).value))

    def test_crash_before_ready(self):
        d = linux.wait_ready(self.clock, self.xs, self.xc, DOMID, "lx")
        self.xc.reason = 3
        self.clock.pump([linux.POLL] * 2)
        self.assertIn("reason 3", str(self.failureResultOf(d, WireError).value))

    def test_clone_id_readable_by_the_clone_only(self):
        self.successResultOf(linux.write_clone_id(self.xs, 9, 2))
        self.assertEqual(self.xs.nodes["/local/domain/9/xenclone/clone-id"], b"2")
        self.assertEqual(self.xs.perms["/local/domain/9/xenclone/clone-id"], ["n0", "r9"])
        self.assertEqual(self.xs.perms["/local/domain/9/xenclone"], ["n0", "r9"])


class BalloonTargetTests(unittest.TestCase):
    """memory/target in KiB, as xl mem-set writes it."""

    def setUp(self):
        self.xs = FakeXenStore()

    def test_target_read_and_written_in_kib(self):
        self.xs.nodes["/local/domain/9/memory/target"] = b"131072"
        self.assertEqual(self.successResultOf(linux.balloon_target(self.xs, 9)), 32768)
        self.successResultOf(linux.set_balloon_target(self.xs, 9, 16384))
        self.assertEqual(self.xs.nodes["/local/domain/9/memory/target"], b"65536")

    def test_no_target_or_nonsense_is_none(self):
        self.assertIsNone(self.successResultOf(linux.balloon_target(self.xs, 9)))
        self.xs.nodes["/local/domain/9/memory/target"] = b"lots"
        self.assertIsNone(self.successResultOf(linux.balloon_target(self.xs, 9)))


def xl_long(kind="pvh", **extra):
    """``xl list -l`` of a domain xl made."""
    config = {"c_info": {"type": kind, "name": "rig-pvh"},
              "b_info": {"max_vcpus": 2, "max_memkb": 131072, "target_memkb": 131072,
                         "kernel": "/k", "ramdisk": "/r", "cmdline": "console=hvc0"}}
    config.update(extra)
    return json.dumps([{"domid": 7, "config": config}])


class AdoptedConfigTests(unittest.TestCase):
    def test_pvh_settings(self):
        domid, config, found = linux.adopted_config(xl_long(), "rig-pvh")
        self.assertEqual(domid, 7)
        self.assertFalse(found)
        self.assertEqual(config, {"name": "rig-pvh", "type": "pvh", "memory": 128,
                                  "maxmem": 128, "vcpus": 2, "kernel": "/k", "ramdisk": "/r",
                                  "extra": "console=hvc0", "on_crash": "preserve",
                                  "on_reboot": "preserve"})
        self.assertEqual(linux.npages(config), 32768)

    def refused(self, text, *words):
        with self.assertRaises(WireError) as cm:
            linux.adopted_config(text, "rig-pvh")
        self.assertEqual(cm.exception.code, "unsupported")
        for word in words:
            self.assertIn(word, str(cm.exception))

    def test_pv_is_refused_clearly(self):
        self.refused(xl_long("pv"), "PV domains are not supported")

    def test_hvm_is_refused(self):
        self.refused(xl_long("hvm"), "only PVH")

    def test_vifs_and_file_disks_are_read(self):
        _, config, found = linux.adopted_config(xl_long(
            nics=[{"mac": "00:16:3e:00:00:01", "bridge": "xenbr0"}],
            disks=[{"pdev_path": "/srv/a.img", "vdev": "xvda", "format": "raw"}]), "rig-pvh")
        self.assertEqual([n.bridge for n in found.nics], ["xenbr0"])
        self.assertEqual([d.target for d in found.disks], ["/srv/a.img"])
        self.assertNotIn("vif", config)     # each clone gets its own, not the master's

    def test_other_devices_are_refused_by_name(self):
        with self.assertRaises(WireError) as cm:
            linux.adopted_config(xl_long(vkbs=[{}], p9s=[{}]), "rig-pvh")
        self.assertIn("9pfs, vkb", str(cm.exception))

    def test_no_config(self):
        self.refused("[]", "no config")
        self.refused("not json", "no config")


@implementer(ILinuxBackend, IDomainNumbering)
class _LinuxBackend(FakeBackend):
    """Knows one domain of another toolstack's, 7 'rig-pvh'."""

    name = "xen"

    def __init__(self, suspends=True):
        super().__init__()
        self.suspends = suspends
        self.released = []

    def adopt(self, ref):
        if ref not in ("rig-pvh", "7"):
            return defer.fail(WireError("no-domain", "unknown domain %r" % (ref,)))
        self.states[7] = "running"
        return defer.succeed({"domid": 7, "name": "rig-pvh", "state": "running",
                              "npages": 32768})

    def release(self, domid):
        self.released.append(domid)
        self.states.pop(domid, None)
        return defer.succeed(None)

    def capture(self, domid):
        if not self.suspends:
            return defer.fail(WireError("not-suspended", "rig-pvh did not acknowledge"))
        self.states[domid] = "paused"
        return defer.succeed(Capture("xen-pvh-x86", b"regs", None, 32768, domid=domid,
                                     meta={"suspend": {"ack_s": 0.2, "suspend_s": 0.4}}))


class _Store(FakeMemoryServer):
    def put(self, name, capture):
        self.meta = capture.meta
        return defer.succeed({"image_id": name})

    def open(self, image_id):
        return defer.succeed(None)


class TakeOverTests(unittest.TestCase):
    def controller(self, backend):
        store = tempfile.mkdtemp(prefix="xenclone-store-")
        self.addCleanup(shutil.rmtree, store, True)
        self.memserver = _Store()
        pager = Pager(None, Ledger(1000, SharingPolicy()), FakeSource(), backend,
                      self.memserver, store)
        pager.track_image = lambda image: None
        return Controller(None, backend, self.memserver, pager, None)

    def test_bless_takes_over_a_domain_of_xls(self):
        c = self.controller(_LinuxBackend())
        self.successResultOf(c.op_bless({"domain": "rig-pvh"}))
        self.assertEqual(c.op_info({"domain": "rig-pvh"})["domid"], 7)
        self.assertEqual(c.op_info({"domain": 7})["state"], "paused")
        self.assertEqual(c.op_info({"domain": 7})["memory_mib"], 128)
        # The suspend's figures go into the image's meta.
        self.assertEqual(self.memserver.meta["suspend"], {"ack_s": 0.2, "suspend_s": 0.4})
        self.assertEqual(self.memserver.meta["master"], "rig-pvh")

    def test_failed_bless_lets_the_domain_go(self):
        backend = _LinuxBackend(suspends=False)
        c = self.controller(backend)
        f = self.failureResultOf(c.op_bless({"domain": "rig-pvh"}), WireError)
        self.assertEqual(f.value.code, "not-suspended")
        self.assertEqual(backend.released, [7])
        self.assertEqual(c.op_list({})["domains"], [])

    def test_bad_image_name_lets_the_domain_go(self):
        backend = _LinuxBackend()
        c = self.controller(backend)
        f = self.failureResultOf(c.op_bless({"domain": "rig-pvh", "name": "a/b"}), WireError)
        self.assertEqual(f.value.code, "bad-argument")
        self.assertEqual(backend.released, [7])
        self.assertEqual(c.op_list({})["domains"], [])

    def test_unknown_domain(self):
        c = self.controller(_LinuxBackend())
        f = self.failureResultOf(c.op_bless({"domain": "nope"}), WireError)
        self.assertEqual(f.value.code, "no-domain")
        f = self.failureResultOf(c.op_bless({"domain": ["x"]}), WireError)
        self.assertEqual(f.value.code, "bad-argument")

    def test_other_backends_know_only_their_own(self):
        c = self.controller(FakeBackend())
        with self.assertRaises(WireError) as cm:
            c.op_bless({"domain": "rig-pvh"})
        self.assertEqual(cm.exception.code, "no-domain")

    def test_linux_master_needs_a_linux_backend(self):
        c = self.controller(FakeBackend())
        with self.assertRaises(WireError) as cm:
            c.op_create({"config": {"name": "lx", "memory": 64, "kernel": "/k"}})
        self.assertEqual(cm.exception.code, "unsupported")

    def test_project_guest_takes_one_vcpu(self):
        c = self.controller(_LinuxBackend())
        with self.assertRaises(WireError) as cm:
            c.op_create({"config": {"name": "g", "memory": 16, "vcpus": 2}})
        self.assertEqual(cm.exception.code, "bad-config")

    def test_linux_master_spec(self):
        backend = _LinuxBackend()
        specs = []
        backend.create_master = lambda spec: (specs.append(spec), defer.succeed(
            {"domid": 9, "state": "running"}))[1]
        c = self.controller(backend)
        made = self.successResultOf(c.op_create({"config": {
            "name": "lx", "memory": 64, "vcpus": 2, "kernel": "/k", "extra": "quiet",
            "vif": ["bridge=xenbr0"], "disk": ["/srv/lx.img,raw,xvda,w"]}}))
        self.assertEqual(made["domid"], 9)
        self.assertEqual(specs[0].boot, {"memory": 64, "vcpus": 2, "kernel": "/k",
                                         "ramdisk": None, "extra": "quiet",
                                         "vif": ["bridge=xenbr0"],
                                         "disk": ["/srv/lx.img,raw,xvda,w"]})
        self.assertIsNone(specs[0].params)
        self.assertEqual(specs[0].npages, 64 * 256)


class ZeroRunsTests(unittest.TestCase):
    def test_runs_split_where_zero_changes(self):
        from xenclone.backends.xen.launch import _zero_runs
        zero = bytes([1, 1, 0, 0, 0, 1, 0, 1])
        self.assertEqual(_zero_runs(list(range(8)), zero),
                         [(0, 2, True), (2, 3, False), (5, 1, True), (6, 1, False),
                          (7, 1, True)])
        self.assertEqual(_zero_runs([2, 3, 6], zero), [(0, 2, False), (2, 1, False)])
