"""The daemon killed (kill -9) while its clones fault and page out: they
stop, nothing is lost, and a new daemon takes them back; they finish with
the right answers and the ledger agrees with the kernel, page by page.

The real thing throughout: ``twistd -n xenclone`` processes, the VMM host
and memory server they start, the control socket."""

import os
import shutil
import signal
import sys
import tempfile

from twisted.internet import defer, reactor, task
from twisted.internet.protocol import ProcessProtocol
from twisted.trial import unittest

from xenclone.cli.main import CliError, connect
from xenclone.helpers import socket_owner_pid

from tests.test_daemon import _need_kvm

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


class _Daemon(ProcessProtocol):
    def __init__(self):
        self.ended = defer.Deferred()

    def processEnded(self, reason):
        self.ended.callback(reason.value.exitCode)


def _sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


class RestartTests(unittest.TestCase):
    timeout = 600

    def setUp(self):
        _need_kvm()
        self.tmp = tempfile.mkdtemp(prefix="xenclone-restart-")
        if not os.environ.get("XENCLONE_KEEP_TMP"):
            self.addCleanup(shutil.rmtree, self.tmp, True)
        self.sock = os.path.join(self.tmp, "run", "control.sock")
        self.conf = os.path.join(self.tmp, "xenclone.conf")
        with open(self.conf, "w") as f:
            f.write('state_dir = "%s/state"\nrun_dir = "%s/run"\ncontrol_socket = "%s"\n'
                    % (self.tmp, self.tmp, self.sock))
        self.daemon = None
        self.helpers = {}
        self.addCleanup(self._teardown)

    @defer.inlineCallbacks
    def _start(self):
        proto = _Daemon()
        log = open(os.path.join(self.tmp, "daemon.log"), "ab")
        self.addCleanup(log.close)
        reactor.spawnProcess(proto, TWISTD, [TWISTD, "-n", "--pidfile=", "xenclone",
                                             "-c", self.conf],
                             env=os.environ, childFDs={0: "w", 1: log.fileno(), 2: log.fileno()})
        self.daemon = proto
        for _ in range(300):
            try:
                link = yield connect(reactor, self.sock)
            except CliError:
                yield _sleep(0.1)
                continue
            self.addCleanup(link.close)
            self.helpers = yield self._call(link, "pids")
            # The embedded XenStore server is a helper too: stopped with the rest.
            self.helpers["xenstore"] = socket_owner_pid(
                os.path.join(self.tmp, "run", "xenstore.sock"))
            return link
        self.fail("the daemon did not start; see %s/daemon.log" % self.tmp)

    def _call(self, link, op, **fields):
        return link.request(op, **fields).addCallback(lambda msg: msg.fields)

    @defer.inlineCallbacks
    def _kill_daemon(self):
        os.kill(self.daemon.transport.pid, signal.SIGKILL)
        yield self.daemon.ended
        self.daemon = None

    @defer.inlineCallbacks
    def _teardown(self):
        if self.daemon is not None:
            try:
                link = yield connect(reactor, self.sock)
                yield self._call(link, "destroy_all")
                yield link.close()
            except Exception:
                pass
            self.daemon.transport.signalProcess("TERM")
            yield self.daemon.ended
        for name in ("vmmhost", "memserver", "xenstore"):
            try:
                os.kill(self.helpers[name], signal.SIGTERM)
            except (KeyError, TypeError, ProcessLookupError):
                pass

    @defer.inlineCallbacks
    def test_clones_survive_the_daemon_killed_mid_storm(self):
        link = yield self._start()
        yield self._call(link, "create", config={"name": "m", "memory": 64, "read_percent": 100,
                                                  "write_pages": 3000})
        yield self._call(link, "bless", domain="m", name="img")
        clones = (yield self._call(link, "launch", image="img", count=3, paused=True))["clones"]
        for c in clones:
            # A limit below what each writes: pages are paged out all along.
            yield self._call(link, "set", domain=c["domid"],
                             knobs={"limit": 2048, "evict": ["drop-clean", "page-out"]})
            yield self._call(link, "unpause", domain=c["domid"])
        for _ in range(600):
            infos = []
            for c in clones:
                infos.append((yield self._call(link, "info", domain=c["domid"])))
            if any(i["paged_out_pages"] for i in infos):
                break
            yield _sleep(0.05)
        self.assertTrue(all(i["state"] == "running" for i in infos),
                        "the clones finished before the daemon could be killed")
        yield self._kill_daemon()

        # No daemon: the clones wait in their faults; their memory is kept.
        vmm = yield connect(reactor, os.path.join(self.tmp, "run", "vmmhost.sock"))
        self.addCleanup(vmm.close)
        before = (yield self._call(vmm, "list"))["domains"]
        yield _sleep(1.0)
        after = (yield self._call(vmm, "list"))["domains"]
        self.assertEqual([d["result"] for d in after if d["role"] == "clone"], [None] * 3)
        self.assertEqual(before, after)

        link = yield self._start()
        listed = {d["domid"]: d for d in (yield self._call(link, "list"))["domains"]}
        self.assertEqual({c["domid"] for c in clones} | {1}, set(listed))
        for c in clones:
            info = yield self._call(link, "wait", domain=c["domid"], timeout=120)
            self.assertEqual((info["state"], info["result"]), ("done", info["expected"]), info)
            audit = yield self._call(link, "audit", domain=c["domid"])
            self.assertEqual(audit["disagree"], 0, audit)
        # New clones go on from the ids the old daemon used.
        [new] = (yield self._call(link, "launch", image="img"))["clones"]
        self.assertEqual(new["clone_id"], 4)
        self.assertGreater(new["domid"], max(c["domid"] for c in clones))
