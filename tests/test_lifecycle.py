"""A clean stop: helpers stop with the daemon when no domain needs them,
``shutdown [--force]``, and systemd's readiness."""

import os
import socket
import subprocess
import sys
import tempfile

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from xenclone import sd_notify
from xenclone.control.lifecycle import REPLY_GRACE_S, DaemonOps, Lifecycle
from xenclone.helpers import socket_owner_pid
from xenclone.wire import WireError


class Dom:
    def __init__(self, name):
        self.name = name


class FakeController:
    def __init__(self, names, clock):
        self.reactor = clock
        self.domains = {i: Dom(n) for i, n in enumerate(names, 1)}

    def op_destroy_all(self, msg):
        destroyed = sorted(self.domains)
        self.domains = {}
        return defer.succeed({"destroyed": destroyed})

    def op_host(self, msg):
        return {"backend": "kvm"}


LISTENER = """
import socket, sys, time
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(1)
print("up", flush=True)
time.sleep(60)
"""


class HelperStopTests(unittest.TestCase):
    def helper(self):
        """A process listening on a socket, as a helper does."""
        tmp = tempfile.mkdtemp(prefix="xc-")
        path = os.path.join(tmp, "h.sock")
        proc = subprocess.Popen([sys.executable, "-c", LISTENER, path], stdout=subprocess.PIPE)
        self.addCleanup(lambda: (proc.kill(), proc.wait(), proc.stdout.close()))
        self.assertEqual(proc.stdout.readline(), b"up\n")
        return proc, path

    @defer.inlineCallbacks
    def test_no_domain_helpers_stopped(self):
        proc, path = self.helper()
        life = Lifecycle(reactor, [("memory server", path)], None,
                         FakeController([], reactor))
        self.assertEqual(life.on_stop(), "helpers stopped (no live domains)")
        yield life.stopping()
        self.assertEqual(proc.wait(5), -15)
        self.assertIsNone(socket_owner_pid(path))

    @defer.inlineCallbacks
    def test_live_domains_keep_helpers(self):
        proc, path = self.helper()
        life = Lifecycle(reactor, [("VMM host", path)], None,
                         FakeController(["web.1", "web.2"], reactor))
        self.assertEqual(life.on_stop(), "helpers kept: 2 live domains (web.1, web.2)")
        yield life.stopping()
        self.assertIsNone(proc.poll())
        self.assertEqual(socket_owner_pid(path), proc.pid)

    @defer.inlineCallbacks
    def test_failed_start_keeps_helpers(self):
        proc, path = self.helper()
        life = Lifecycle(reactor, [("XenStore", path)], None)
        self.assertIn("helpers kept", life.on_stop())
        yield life.stopping()
        self.assertIsNone(proc.poll())


class ShutdownTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.stopped = []
        self.controller = FakeController(["m", "web.1"], self.clock)
        self.life = Lifecycle(self.clock, [("memory server", "/x"), ("VMM host", "/y")],
                              lambda: self.stopped.append(True), self.controller)
        self.ops = DaemonOps(self.controller, self.life)

    def test_refused_while_domains_live(self):
        f = self.failureResultOf(defer.maybeDeferred(self.ops.op_shutdown, {}), WireError)
        self.assertEqual(f.value.code, "busy")
        self.assertIn("2 live domains (m, web.1)", f.value.message)
        self.clock.advance(1)
        self.assertEqual(self.stopped, [])

    def test_force_destroys_then_stops_after_the_reply(self):
        result = self.successResultOf(self.ops.op_shutdown({"force": True}))
        self.assertEqual(result, {"destroyed": [1, 2], "helpers": ["memory server", "VMM host"]})
        self.assertEqual(self.stopped, [])          # the reply leaves first
        self.clock.advance(REPLY_GRACE_S)
        self.assertEqual(self.stopped, [True])

    def test_host_says_what_a_stop_does(self):
        host = self.successResultOf(defer.maybeDeferred(self.ops.op_host, {}))
        self.assertEqual(host, {"backend": "kvm", "on_stop": "helpers kept: 2 live domains "
                                                             "(m, web.1)"})


class NotifyTests(unittest.TestCase):
    def receiver(self, abstract=False):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        if abstract:
            name = "xenclone-test-%d" % os.getpid()
            sock.bind("\0" + name)
            return sock, "@" + name
        path = os.path.join(tempfile.mkdtemp(prefix="xc-"), "notify")
        sock.bind(path)
        return sock, path

    def test_ready(self):
        sock, path = self.receiver()
        self.assertTrue(sd_notify.notify("READY=1", {"NOTIFY_SOCKET": path}))
        self.assertEqual(sock.recv(100), b"READY=1")

    def test_abstract_socket(self):
        sock, name = self.receiver(abstract=True)
        self.assertTrue(sd_notify.notify("STOPPING=1", {"NOTIFY_SOCKET": name}))
        self.assertEqual(sock.recv(100), b"STOPPING=1")

    def test_not_under_systemd(self):
        self.assertFalse(sd_notify.notify("READY=1", {}))
        self.assertFalse(sd_notify.notify("READY=1", {"NOTIFY_SOCKET": "/nonexistent/x"}))

    def test_control_socket_ready_notifies(self):
        from xenclone.service import ControlService
        sock, path = self.receiver()
        self.patch(os, "environ", dict(os.environ, NOTIFY_SOCKET=path))
        control = ControlService(reactor, os.path.join(os.path.dirname(path), "c.sock"), "")
        control.listen(object())
        self.addCleanup(control.port.stopListening)
        self.assertTrue(sock.recv(200).startswith(b"READY=1\nSTATUS=control socket "))
