"""One daemon per host: its state and run directories are locked (a second
daemon exits 2 and touches nothing), and its helpers, the memory server and
the VMM host, serve only the daemon that started them (uid, then a secret
said in the first frame)."""

import os
import shutil
import subprocess
import sys
import tempfile
import types

from twisted.internet import defer, reactor
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from xenclone import daemon_lock
from xenclone.helper_gate import GatedLink, read_secret, secret_path
from xenclone.helpers import HelperProcess
from xenclone.wire import ConnectionLost, FrameProtocol, WireError

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


class _Tmp(unittest.TestCase):
    def setUp(self):
        # Unix socket paths are limited to 108 bytes: keep it short.
        self.tmp = tempfile.mkdtemp(prefix="xcgate-")
        self.addCleanup(shutil.rmtree, self.tmp, True)


class DaemonLockTests(_Tmp):
    def settings(self, run="run"):
        return {"state_dir": os.path.join(self.tmp, "state"),
                "run_dir": os.path.join(self.tmp, run)}

    def test_a_second_holder_is_refused_and_the_first_holds_on(self):
        fds = daemon_lock.take(self.settings())
        self.addCleanup(lambda: [os.close(fd) for fd in fds])
        daemon_lock.LockHolder(fds).startService()
        e = self.assertRaises(daemon_lock.AlreadyRunning, daemon_lock.take,
                              self.settings(run="other-run"))
        self.assertIn("pid %d" % os.getpid(), str(e))
        self.assertIn(os.path.join(self.tmp, "state"), str(e))
        # The run_dir alone is locked too.
        self.assertRaises(daemon_lock.AlreadyRunning, daemon_lock.take,
                          {"state_dir": os.path.join(self.tmp, "s2"),
                           "run_dir": os.path.join(self.tmp, "run")})
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "other-run", "daemon.lock")))
        for fd in fds:
            os.close(fd)
        fds[:] = daemon_lock.take(self.settings(run="other-run"))   # free once let go

    def test_one_directory_for_both_is_locked_once(self):
        same = os.path.join(self.tmp, "both")
        fds = daemon_lock.take({"state_dir": same, "run_dir": same + "/."})
        self.addCleanup(lambda: [os.close(fd) for fd in fds])
        self.assertEqual(len(fds), 1)
        self.assertRaises(daemon_lock.AlreadyRunning, daemon_lock.take,
                          {"state_dir": same, "run_dir": same})

    def test_twistd_exits_2_and_touches_nothing(self):
        fds = daemon_lock.take(self.settings())
        self.addCleanup(lambda: [os.close(fd) for fd in fds])
        sock = os.path.join(self.tmp, "run", "control.sock")
        with open(sock, "w"):       # the first daemon's socket
            pass
        conf = os.path.join(self.tmp, "second.conf")
        with open(conf, "w") as f:
            f.write('state_dir = "%s/state"\nrun_dir = "%s/run2"\ncontrol_socket = "%s"\n'
                    'xenstore = "off"\n' % (self.tmp, self.tmp, sock))
        done = subprocess.run([TWISTD, "-n", "--pidfile=", "xenclone", "-c", conf],
                              capture_output=True, text=True, timeout=60)
        self.assertEqual(done.returncode, 2, done.stderr)
        self.assertIn("another xenclone daemon", done.stderr)
        self.assertNotIn("Traceback", done.stderr + done.stdout)
        self.assertTrue(os.path.exists(sock))
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "run2")))


class _FakeHandle:
    def __init__(self, uid):
        self.uid = uid

    def getsockopt(self, level, opt, size):
        import struct
        return struct.pack("3i", 1, self.uid, 0)


class GatedLinkTests(unittest.TestCase):
    def link(self, uid, secret=b"s" * 16):
        handler = types.SimpleNamespace(op_ping=lambda msg: {"pong": True})
        proto = GatedLink(handler, secret)
        transport = StringTransport()
        transport.getHandle = lambda: _FakeHandle(uid)
        proto.makeConnection(transport)
        return proto, transport

    def test_another_uid_is_closed_at_once(self):
        proto, transport = self.link(os.getuid() + 1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")

    def test_the_first_frame_is_hello_with_the_secret(self):
        from xenclone.wire import encode
        for first in ({"id": 1, "op": "ping"}, {"id": 1, "op": "hello", "secret": "wrong"},
                      {"id": 1, "op": "hello", "secret": "s" * 15 + "\udcff"},
                      {"id": 1, "ok": True, "op": "hello", "secret": "s" * 16}):
            proto, transport = self.link(os.getuid())
            proto.dataReceived(encode(first) + encode({"id": 2, "op": "ping"}))
            self.assertTrue(transport.disconnecting, first)
            self.assertIn(b"unauthenticated", transport.value())
            self.assertNotIn(b"pong", transport.value())
        proto, transport = self.link(os.getuid())
        proto.dataReceived(encode({"id": 1, "op": "hello", "secret": "s" * 16}) +
                           encode({"id": 2, "op": "ping"}))
        self.assertIn(b"pong", transport.value())
        self.assertFalse(transport.disconnecting)


class HelperSecretTests(_Tmp):
    """A real memory server, started as the daemon starts it."""

    timeout = 60

    def helper(self):
        return HelperProcess(reactor, "memory server", "xenclone.memserver_process",
                             ["--dir", os.path.join(self.tmp, "images")],
                             os.path.join(self.tmp, "ms.sock"), os.path.join(self.tmp, "ms.log"))

    @defer.inlineCallbacks
    def test_only_the_secret_gets_in(self):
        link = yield self.helper().connect(FrameProtocol)
        pid = (yield link.request("ping"))["pid"]
        self.addCleanup(os.kill, pid, 15)
        yield link.close()
        sock = os.path.join(self.tmp, "ms.sock")
        self.assertEqual(os.stat(secret_path(sock)).st_mode & 0o777, 0o600)
        # A stranger on the socket: no hello, or a wrong secret.
        for first in ({}, {"secret": "0" * 64}):
            raw = yield connectProtocol(UNIXClientEndpoint(reactor, sock), FrameProtocol())
            op = "hello" if first else "images"
            yield self.assertFailure(raw.request(op, **first), WireError)
            yield raw.closed_d
        # A restarted daemon knows the kept secret and gets in again.
        again = yield self.helper().connect(FrameProtocol)
        self.assertEqual((yield again.request("ping"))["pid"], pid)
        yield again.close()
        # With the secret lost, the helper is refused, not replaced.
        with open(secret_path(sock), "w") as f:
            f.write("1" * 64)
        e = yield self.assertFailure(self.helper().connect(FrameProtocol), WireError)
        self.assertEqual(e.code, "helper-refused")
        self.assertEqual(read_secret(sock), "1" * 64)
        with open(os.path.join(self.tmp, "ms.log")) as f:
            self.assertEqual(f.read().count("memory server ready"), 1)


class VmmHostReattachTests(_Tmp):
    """``reattach`` hands a clone's userfaultfd: never to a stranger."""

    timeout = 60

    @defer.inlineCallbacks
    def test_reattach_needs_the_secret(self):
        if not os.access("/dev/kvm", os.R_OK | os.W_OK):
            raise unittest.SkipTest("no /dev/kvm on this host")
        sock = os.path.join(self.tmp, "vmm.sock")
        helper = HelperProcess(reactor, "VMM host", "xenclone.backends.kvm.vmmhost_main", [],
                               sock, os.path.join(self.tmp, "vmm.log"))
        link = yield helper.connect(FrameProtocol)
        pid = (yield link.request("ping"))["pid"]
        self.addCleanup(os.kill, pid, 15)
        self.addCleanup(link.close)
        raw = yield connectProtocol(UNIXClientEndpoint(reactor, sock), FrameProtocol())
        yield self.assertFailure(raw.request("reattach", domid=1), ConnectionLost)
        # The daemon's own link still serves (its events were not taken).
        self.assertEqual((yield link.request("list"))["domains"], [])
