"""The daemon as systemd runs it: twistd with Type=notify readiness, the
operations in its log, and ``xenclone shutdown`` taking everything down."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

from twisted.internet import defer, reactor, task, utils
from twisted.trial import unittest

from xenclone.control.lifecycle import running
from xenclone.control_client import connect
from xenclone.helpers import socket_owner_pid

BIN = os.path.dirname(sys.executable)


alive = running


class TwistdTests(unittest.TestCase):
    timeout = 300

    def setUp(self):
        if not os.access("/dev/kvm", os.R_OK | os.W_OK):
            raise unittest.SkipTest("no /dev/kvm on this host")
        self.tmp = tempfile.mkdtemp(prefix="xc-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.run_dir = os.path.join(self.tmp, "run")
        self.conf = os.path.join(self.tmp, "xenclone.conf")
        with open(self.conf, "w") as f:
            f.write('run_dir = "%s"\nstate_dir = "%s/state"\ncontrol_socket = "%s/control.sock"\n'
                    % (self.run_dir, self.tmp, self.run_dir))

    def cli(self, *args):
        return utils.getProcessOutputAndValue(os.path.join(BIN, "xenclone"),
                                              ("-c", self.conf) + args, env=os.environ)

    @defer.inlineCallbacks
    def test_ready_logged_and_shut_down(self):
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(notify.close)
        notify.bind(os.path.join(self.tmp, "notify"))
        notify.settimeout(120)
        log_path = os.path.join(self.tmp, "daemon.log")
        # The daemon's stderr has its own file offset: reading it here must
        # not move where the daemon writes.
        stderr_path = os.path.join(self.tmp, "stderr")
        stderr = open(stderr_path, "w")
        self.addCleanup(stderr.close)
        daemon = subprocess.Popen(
            [os.path.join(BIN, "twistd"), "--nodaemon", "--pidfile=", "--logfile", log_path,
             "xenclone", "--config", self.conf],
            env=dict(os.environ, NOTIFY_SOCKET=os.path.join(self.tmp, "notify")), stderr=stderr)
        self.addCleanup(lambda: daemon.poll() is None and (daemon.kill(), daemon.wait()))
        self.assertTrue(notify.recv(200).startswith(b"READY=1"))
        # An operator's look inside: each thread's stack, and it runs on.
        daemon.send_signal(signal.SIGUSR2)
        for _ in range(100):
            with open(stderr_path) as f:
                stacks = f.read()
            if " in <module>" in stacks:        # the main thread's last frame
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertRegex(stacks, r'(?s)[Tt]hread 0x.*File ".*reactor')
        self.assertIsNone(daemon.poll())
        # Not by connecting to the VMM host's socket: its newest link gets the events.
        link = yield connect(reactor, os.path.join(self.run_dir, "control.sock"))
        pids = (yield link.request("pids")).fields
        yield link.close()
        helpers = [pids["memserver"], pids["vmmhost"],
                   socket_owner_pid(os.path.join(self.run_dir, "xenstore.sock"))]
        self.assertEqual([alive(pid) for pid in helpers], [True] * 3)
        self.addCleanup(lambda: [os.kill(pid, 9) for pid in helpers if alive(pid)])
        cfg = os.path.join(self.tmp, "m.cfg")
        with open(cfg, "w") as f:
            f.write('name = "m"\nmemory = 16\n')
        out, err, code = yield self.cli("create", cfg)
        self.assertEqual(code, 0, err)
        out, err, code = yield self.cli("host")
        self.assertRegex(out.decode(), r"(?m)^on_stop +helpers kept: 1 live domains \(m\)$")
        out, err, code = yield self.cli("shutdown")
        self.assertEqual(code, 1)
        self.assertIn(b"1 live domains (m)", err)
        out, err, code = yield self.cli("shutdown", "--force")
        self.assertEqual(code, 0, err)
        self.assertIn(b"destroyed 1 domains", out)
        for _ in range(600):
            if daemon.poll() is not None:
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(daemon.returncode, 0)
        self.assertEqual([alive(pid) for pid in helpers], [False] * 3)
        with open(log_path) as f:
            log = f.read()
        self.assertRegex(log, r"uid=%d pid=\d+: create m: ok \(\d+\.\d+ s\)" % os.getuid())
        self.assertIn(": shutdown -: ok", log)
        self.assertIn("stopping the daemon and its helpers: no live domains", log)
        self.assertNotIn("Starting factory", log)
