"""The XenStore control plane of a real private daemon: its embedded
XenStore helper process, published state, requests (also with Debian's
xenstore-* tools and the CLI), and the daemon surviving a XenStore restart."""

import json
import os
import signal

from twisted.internet import defer, reactor, task, utils
from twisted.trial import unittest

from tests.test_daemon import XENCLONE, PrivateDaemon
from tests.test_xenstore_client import until
from tests.test_xenstore_server import NO_TOOLS
from xenclone.control_client import connect
from xenclone.helpers import socket_owner_pid
from xenclone.selftests.xenstore_scenario import scenario_xenstore
from xenclone.service import make_service
from xenclone.wire import WireError
from xenclone.xenstore.client import XenStoreClient
from xenclone.xenstore.plane import xenstore_socket
from xenclone.xenstore.requests import call
from xenclone.xenstore.wire import XenStoreError

ROOT = "/tool/xenclone"


class PlaneCase(PrivateDaemon):
    @defer.inlineCallbacks
    def setUp(self):
        yield PrivateDaemon.setUp(self)
        self.xs_path = xenstore_socket(self.s.settings)
        self.xs = XenStoreClient(reactor, self.xs_path, min_delay=0.01, max_delay=0.2)
        yield self.xs.connect()
        self.addCleanup(self.xs.close)

    @defer.inlineCallbacks
    def value(self, path, want):
        """Wait until ``path`` reads ``want`` (published state lags by design)."""
        for _ in range(300):
            try:
                if (yield self.xs.read(path)) == want:
                    return
            except XenStoreError:
                pass
            yield task.deferLater(reactor, 0.02, lambda: None)
        raise AssertionError("%s never became %r" % (path, want))

    @defer.inlineCallbacks
    def gone(self, path):
        for _ in range(300):
            try:
                yield self.xs.read(path)
            except XenStoreError as e:
                if e.code == "ENOENT":
                    return
            yield task.deferLater(reactor, 0.02, lambda: None)
        raise AssertionError("%s is still there" % path)

    @defer.inlineCallbacks
    def image_with_clones(self, count=2):
        yield self.s.call("create", config={"name": "m", "memory": 16})
        yield self.s.call("bless", domain="m", name="img.v1")
        launched = yield self.s.call("launch", image="img.v1", count=count)
        domids = [c["domid"] for c in launched["clones"]]
        for domid in domids:
            yield self.s.call("wait", domain=domid, timeout=120)
        return domids


class PublishedStateTests(PlaneCase, unittest.TestCase):
    @defer.inlineCallbacks
    def test_state_follows_the_daemon(self):
        a, b = yield self.image_with_clones()
        img = ROOT + "/images/img@v1"
        [image] = (yield self.s.call("images"))["images"]
        generation = image["generation"].encode()
        yield self.value(img + "/clones", b"2")
        self.assertEqual((yield self.xs.read(img + "/image_id")), b"img.v1")
        self.assertEqual((yield self.xs.read(img + "/master")), b"m")
        self.assertEqual((yield self.xs.read(img + "/npages")), b"4096")
        for domid, clone_id in ((a, b"1"), (b, b"2")):
            yield self.value("%s/clones/%d/state" % (ROOT, domid), b"done")
            self.assertEqual((yield self.xs.read("%s/clones/%d/image" % (ROOT, domid))), b"img.v1")
            info = yield self.s.call("info", domain=domid)
            yield self.value("%s/clones/%d/resident_pages" % (ROOT, domid),
                             str(info["resident_pages"]).encode())
            home = "/local/domain/%d/xenclone" % domid
            self.assertEqual((yield self.xs.read(home + "/clone-id")), clone_id)
            self.assertEqual((yield self.xs.read(home + "/image")), b"img.v1")
            self.assertEqual((yield self.xs.read(home + "/generation")), generation)
            self.assertEqual((yield self.xs.get_perms(home)), ["n0", "r%d" % domid])
        host = yield self.s.call("host")
        yield self.value(ROOT + "/host/budget_pages", str(host["ledger"]["budget_pages"]).encode())

        yield self.s.call("destroy", domain=a)
        yield self.gone("%s/clones/%d" % (ROOT, a))
        yield self.gone("/local/domain/%d" % a)
        yield self.value(img + "/clones", b"1")
        self.assertFalse((yield self.xs.is_domain_introduced(a)))
        self.assertTrue((yield self.xs.is_domain_introduced(b)))
        yield self.s.call("discard", image="img.v1", force=True)
        yield self.gone(img)

    @defer.inlineCallbacks
    def test_daemon_survives_a_xenstore_restart(self):
        [clone] = yield self.image_with_clones(1)
        yield self.value("%s/clones/%d/state" % (ROOT, clone), b"done")
        os.kill(socket_owner_pid(self.xs_path), signal.SIGKILL)
        yield until(lambda: not self.xs.connected)
        # The daemon starts the server again and publishes everything again.
        yield self.value("%s/clones/%d/state" % (ROOT, clone), b"done")
        yield self.value("/local/domain/%d/xenclone/clone-id" % clone, b"1")
        self.assertTrue((yield self.xs.is_domain_introduced(clone)))
        result = yield call(self.xs, "list", {}, "after-restart")
        self.assertEqual([d["name"] for d in result["domains"]], ["m", "img.v1.1"])


    @defer.inlineCallbacks
    def test_a_new_daemon_keeps_the_xenstore_server(self):
        [clone] = yield self.image_with_clones(1)
        yield self.value("%s/clones/%d/state" % (ROOT, clone), b"done")
        server = socket_owner_pid(self.xs_path)
        yield self.s.proto.close()        # (a stopped daemon leaves accepted links open)
        yield self.s.service.stopService()            # the daemon goes; helpers stay
        self.assertEqual((yield self.xs.read("/local/domain/%d/xenclone/clone-id" % clone)), b"1")
        self.s.service = make_service(self.s.settings, reactor)
        self.s.service.startService()
        yield self.s.service.getServiceNamed("xenstore").ready
        self.s.proto = yield connect(reactor, self.s.settings["control_socket"])
        self.assertEqual(socket_owner_pid(self.xs_path), server)
        # This daemon took the clone back: it publishes it as its own, and
        # requests run.
        yield self.value("%s/clones/%d/state" % (ROOT, clone), b"done")
        self.assertEqual((yield self.xs.read("/local/domain/%d/xenclone/clone-id" % clone)), b"1")
        self.assertEqual((yield call(self.xs, "images", {}, "new-daemon"))["images"][0]["image_id"],
                         "img.v1")


class RequestTests(PlaneCase, unittest.TestCase):
    @defer.inlineCallbacks
    def test_both_paths_give_the_same_answers(self):
        yield self.image_with_clones()
        for op, fields in [("list", {}), ("images", {}), ("info", {"domain": "img.v1.1"}),
                           ("page", {"image": "img.v1", "pfn": 7}),
                           ("set", {"domain": "img.v1.2", "knobs": {"limit": 900}})]:
            direct = yield self.s.call(op, **fields)
            via = yield call(self.xs, op, fields, "same-" + op)
            self.assertEqual(via, direct, op)
        for op, fields in [("info", {"domain": "ghost"}), ("launch", {"image": "img.v1", "count": 0}),
                           ("frobnicate", {}), ("bless", {"domain": "img.v1.1"})]:
            errors = []
            for ask in (lambda: self.s.call(op, **fields),
                        lambda: call(self.xs, op, fields, "bad-" + op)):
                try:
                    yield ask()
                except WireError as e:
                    errors.append((e.code, e.message))
            self.assertEqual(len(errors), 2, op)
            self.assertEqual(errors[0], errors[1])
        # Answered requests are removed by the asker: nothing is left behind.
        self.assertEqual((yield self.xs.directory(ROOT + "/requests")), [])

    @defer.inlineCallbacks
    def test_bad_requests_get_clear_errors(self):
        cases = {"notjson": b"{launch", "array": b"[1]", "noop": b'{"image": "x"}',
                 "unknown": b'{"op": "format_disk"}'}
        for rid, raw in cases.items():
            yield self.xs.write("%s/requests/%s" % (ROOT, rid), raw)
        codes = {}
        for rid in cases:
            yield self.value("%s/requests/%s/status" % (ROOT, rid), b"error")
            codes[rid] = json.loads((yield self.xs.read("%s/requests/%s/error" % (ROOT, rid))))["code"]
        self.assertEqual(codes, {"notjson": "bad-json", "array": "bad-request",
                                 "noop": "bad-request", "unknown": "unknown-op"})

    @defer.inlineCallbacks
    def test_large_results_are_split(self):
        yield self.s.call("create", config={"name": "m", "memory": 16})
        yield self.s.call("bless", domain="m", name="img")
        result = yield call(self.xs, "launch", {"image": "img", "count": 40}, "many")
        self.assertEqual([c["clone_id"] for c in result["clones"]], list(range(1, 41)))

    def _cli(self, *args):
        conf = os.path.join(self.tmp, "cli.conf")
        with open(conf, "w") as f:
            f.write('control_socket = "%s"\nxenstore_socket = "%s"\n'
                    % (self.s.settings["control_socket"], self.xs_path))
        return utils.getProcessOutputAndValue(XENCLONE, ("-c", conf) + args, env=os.environ)

    @defer.inlineCallbacks
    def test_cli_via_xenstore(self):
        yield self.image_with_clones()
        for args in [("list", "--json"), ("info", "img.v1.1"), ("images",),
                     ("info", "ghost"), ("launch", "nope"), ("page", "img.v1", "99999")]:
            direct = yield self._cli(*args)
            via = yield self._cli("--via-xenstore", *args)
            self.assertEqual(via, direct, args)
        out, err, code = yield self._cli("--via-xenstore", "launch", "img.v1", "-n", "2")
        self.assertEqual((code, err), (0, b""))
        self.assertEqual([line.split()[1] for line in out.decode().splitlines()],
                         ["img.v1.3", "img.v1.4"])
        out, err, code = yield self._cli("xenstore-env")
        self.assertEqual(out.decode(), "XENSTORED_PATH=%s\n" % self.xs_path)


class RealToolTests(PlaneCase, unittest.TestCase):
    skip = NO_TOOLS

    @defer.inlineCallbacks
    def test_selftest_xenstore(self):
        """xenstore-write of a launch request makes clones, xenstore-read of
        the result gives their ids, xenstore-watch sees a clone go."""
        checks, figures = yield scenario_xenstore(self.s)
        self.assertEqual(checks, dict.fromkeys(["launched_by_xenstore_write", "state_published",
                                                "watch_saw_change"], True), figures)
        self.assertEqual((yield self.xs.directory(ROOT + "/requests")), [])
        self.assertEqual((yield self.s.call("list"))["domains"], [])
