"""The whole slice on the real KVM backend: a private daemon (the real
service tree) with its real VMM host and memory server processes, driven
through the control socket and through the real ``xenclone`` command."""

import os
import shutil
import sys
import tempfile

from twisted.internet import defer, reactor, utils
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from xenclone import hostmem
from xenclone.config import load_daemon_config
from xenclone.selftests.scenarios import Session, launch_job
from xenclone.wire import WireError

XENCLONE = os.path.join(os.path.dirname(sys.executable), "xenclone")


def _need_kvm():
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        raise unittest.SkipTest("no /dev/kvm on this host")


class PrivateDaemon:
    """A private daemon per test, with ``settings`` over the defaults."""

    timeout = 600
    settings = {}

    @defer.inlineCallbacks
    def setUp(self):
        _need_kvm()
        self.tmp = tempfile.mkdtemp(prefix="xenclone-test-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        # No daemon listens here, so the session starts a private one.
        settings = dict(load_daemon_config(None), **self.settings)
        settings["control_socket"] = os.path.join(self.tmp, "none.sock")
        self.s = yield Session(reactor, settings).open()
        self.addCleanup(self.s.close)


class DaemonTests(PrivateDaemon, unittest.TestCase):
    @defer.inlineCallbacks
    def test_eight_clones_right_isolated_lazy_and_freed(self):
        r = yield launch_job(self.s, 8, 32, name="t8")
        self.assertTrue(r["results_ok"], r["wrong"])
        self.assertLess(r["pages_faulted"], r["pages_nominal"] // 4)
        # What the clones add, measured by the kernel, against 8 eager
        # copies: shared image pages count once.
        self.assertLess(r["host_peak_mib"] - r["host_base_mib"], 0.25 * r["eager_mib"])
        check = yield self.s.call("image_check", image="t8")
        self.assertTrue(check["unchanged"], check)
        self.assertEqual(check["checked_pages"], 8 * 8)
        iso = yield self.s.call("isolation_check", image="t8")
        self.assertTrue(iso["isolated"], iso)
        self.assertGreaterEqual(iso["checked_pages"], 8 * 7 * 8 - 64)
        pids = yield self.s.call("pids")
        before = hostmem.pss_bytes(pids["vmmhost"])
        for domid in r["domids"]:
            yield self.s.call("destroy", domain=domid)
        after = hostmem.pss_bytes(pids["vmmhost"])
        self.assertLess(after, before)
        listed = yield self.s.call("list")
        self.assertEqual([d["role"] for d in listed["domains"]], ["master"])

    @defer.inlineCallbacks
    def test_clone_stats_and_laziness_per_clone(self):
        yield self.s.call("create", config={"name": "m", "memory": 16})
        yield self.s.call("bless", domain="m", name="img")
        launched = yield self.s.call("launch", image="img", count=2)
        infos = []
        for c in launched["clones"]:
            infos.append((yield self.s.call("wait", domain=c["name"], timeout=120)))
        for info in infos:
            self.assertEqual(info["state"], "done")
            self.assertEqual(info["result"], info["expected"])
            self.assertGreater(info["faults"], 0)
            self.assertLess(info["resident_pages"], info["nominal_pages"])
            self.assertIsNotNone(info["launch_ms"])
        self.assertNotEqual(infos[0]["result"], infos[1]["result"])
        images = yield self.s.call("images")
        self.assertEqual([(i["image_id"], i["clones"]) for i in images["images"]], [("img", 2)])

    @defer.inlineCallbacks
    def test_fault_around_maps_pages_beside_faults_and_all_agree(self):
        """C maps image pages beside the faults it serves: the clone
        faults on fewer pages than it holds, answers right, and the
        ledger, the fast path and the kernel agree on every page.  (The
        first clone of an image is recorded as its working set, page by
        page: no fault-around.)"""
        yield self.s.call("create", config={"name": "m", "memory": 16})
        yield self.s.call("bless", domain="m", name="img")
        [first] = (yield self.s.call("launch", image="img"))["clones"]
        info = yield self.s.call("wait", domain=first["domid"], timeout=120)
        self.assertEqual((info["result"], info["around_pages"]), (info["expected"], 0))
        [c] = (yield self.s.call("launch", image="img", prefetch=False))["clones"]
        info = yield self.s.call("wait", domain=c["domid"], timeout=120)
        self.assertEqual((info["state"], info["result"]), ("done", info["expected"]))
        self.assertGreater(info["around_pages"], info["faults"])
        self.assertLess(info["guest_faults"], info["shared_pages"])
        audit = yield self.s.call("audit", domain=c["domid"])
        self.assertEqual(audit["disagree"], 0, audit["first"])

    @defer.inlineCallbacks
    def test_share_onfetch_off_gives_a_clone_private_copies(self):
        """share.onfetch=0: the kernel shows every image page the clone
        touched as its own copy, while a sharing clone beside it maps the
        image's pages; both answer right."""
        yield self.s.call("create", config={"name": "m", "memory": 16})
        yield self.s.call("bless", domain="m", name="img")
        [own] = (yield self.s.call("launch", image="img", share=False))["clones"]
        [shared] = (yield self.s.call("launch", image="img"))["clones"]
        for c in (own, shared):
            info = yield self.s.call("wait", domain=c["domid"], timeout=120)
            self.assertEqual((info["state"], info["result"]), ("done", info["expected"]))
        kernel = (yield self.s.call("host"))["kernel"]["clones"]
        own_k, shared_k = kernel[str(own["domid"])], kernel[str(shared["domid"])]
        self.assertEqual(own_k["shared"], 0)
        self.assertGreater(own_k["private"], shared_k["private"])
        self.assertGreater(shared_k["shared"], 0)
        info = yield self.s.call("info", domain=own["domid"])
        self.assertEqual((info["shared_pages"], info["private_pages"]), (0, own_k["private"]))
        self.assertFalse(info["flags"]["share.onfetch"])
        with self.assertRaises(WireError) as cm:
            yield self.s.call("set", domain=own["domid"], knobs={"share.onfetch": "yes"})
        self.assertEqual(cm.exception.code, "bad-argument")

    @defer.inlineCallbacks
    def test_operations_logged_with_their_fields(self):
        """Who (the control socket's peer), what, domain, result, duration."""
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        yield self.s.call("create", config={"name": "logm", "memory": 16})
        yield self.s.call("bless", domain="logm", name="logimg")
        [c] = (yield self.s.call("launch", image="logimg"))["clones"]
        yield self.s.call("info", domain=c["domid"])
        yield self.s.call("destroy", domain=c["domid"])
        with self.assertRaises(WireError):
            yield self.s.call("set", domain="ghost", knobs={"limit": 1})
        ops = [e for e in events if e.get("log_namespace") == "xenclone.ops"]
        self.assertEqual([(e["op"], e["domain"], e["result"]) for e in ops], [
            ("create", "logm", "ok"), ("bless", "logm", "ok"), ("launch", "logimg", "ok"),
            ("destroy", str(c["domid"]), "ok"), ("set", "ghost", "no-domain")])
        for e in ops:
            self.assertEqual(e["who"], "uid=%d pid=%d" % (os.getuid(), os.getpid()))
            self.assertGreaterEqual(e["duration_s"], 0)

    @defer.inlineCallbacks
    def test_errors_are_clear(self):
        for op, fields, code in [
                ("info", {"domain": "nope"}, "no-domain"),
                ("destroy", {"domain": 4242}, "no-domain"),
                ("launch", {"image": "nope"}, "unknown-image"),
                ("launch", {"image": "nope", "count": 0}, "bad-argument"),
                ("create", {"config": {"name": "../x", "memory": 16}}, "bad-config"),
                ("create", {"config": {"name": "big", "memory": 10**9}}, "bad-argument"),
                ("frobnicate", {}, "unknown-op")]:
            with self.assertRaises(WireError) as cm:
                yield self.s.call(op, **fields)
            self.assertEqual(cm.exception.code, code, (op, str(cm.exception)))
        yield self.s.call("create", config={"name": "m", "memory": 16})
        yield self.s.call("bless", domain="m", name="img")
        with self.assertRaises(WireError) as cm:
            yield self.s.call("page", image="img", pfn=4096)
        self.assertEqual(cm.exception.code, "out-of-range")
        [clone] = (yield self.s.call("launch", image="img"))["clones"]
        yield self.s.call("wait", domain=clone["domid"])
        with self.assertRaises(WireError) as cm:
            yield self.s.call("bless", domain=clone["domid"])
        self.assertEqual(cm.exception.code, "not-master")
        with self.assertRaises(WireError) as cm:
            yield self.s.call("discard", image="img")
        self.assertEqual(cm.exception.code, "busy")
        yield self.s.call("discard", image="img", force=True)
        with self.assertRaises(WireError) as cm:
            yield self.s.call("launch", image="img")
        self.assertEqual(cm.exception.code, "unknown-image")

    def _cli(self, *args):
        conf = os.path.join(self.tmp, "cli.conf")
        with open(conf, "w") as f:
            f.write('control_socket = "%s"\n' % self.s.settings["control_socket"])
        return utils.getProcessOutputAndValue(XENCLONE, ("-c", conf) + args, env=os.environ)

    @defer.inlineCallbacks
    def test_cli_commands_and_exit_codes(self):
        cfg = os.path.join(self.tmp, "m.cfg")
        with open(cfg, "w") as f:
            f.write('name = "cli-master"\nmemory = 16\n')
        out, err, code = yield self._cli("create", cfg)
        self.assertEqual((code, err), (0, b""), out)
        out, err, code = yield self._cli("bless", "cli-master", "--name", "cimg")
        self.assertEqual(code, 0, err)
        out, err, code = yield self._cli("launch", "cimg", "-n", "2")
        self.assertEqual(code, 0, err)
        self.assertEqual(len(out.splitlines()), 2)
        out, err, code = yield self._cli("info", "cimg.1", "--json")
        self.assertEqual(code, 0, err)
        self.assertIn(b'"nominal_pages": 4096', out)
        out, err, code = yield self._cli("list")
        self.assertIn(b"cimg.2", out)
        yield self._cli("wait", "cimg.1")
        out, err, code = yield self._cli("audit", "cimg.1")
        self.assertEqual((code, out), (0, b"0 of 4096 pages disagree\n"), err)
        bad = os.path.join(self.tmp, "bad.cfg")
        with open(bad, "w") as f:
            f.write('name = "x"\nmemory = "lots\n')
        for args, want_code, want_text in [
                (("info", "ghost"), 1, b"unknown domain 'ghost'"),
                (("launch", "no-such-image"), 1, b"no-such-image"),
                (("create", bad), 2, b"bad.cfg:2:"),
                (("bless", "cimg.1"), 1, b"is a clone"),
                (("page", "cimg", "99999"), 1, b"outside image 'cimg' of 4096 pages"),
                (("frob",), 2, b"invalid choice")]:
            out, err, code = yield self._cli(*args)
            self.assertEqual(code, want_code, (args, out, err))
            self.assertIn(want_text, err, args)
            self.assertNotIn(b"Traceback", err)
