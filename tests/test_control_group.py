"""``control_group``: a daemon that makes its run_dir itself lets that
group, and only it, use the control socket; the helpers' sockets and
secrets in run_dir stay the daemon's."""

import grp
import os
import stat
import subprocess

from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from tests.test_daemon import _need_kvm
from xenclone.selftests.scratch_daemon import ScratchDaemon

GROUP = "daemon"        # in every Debian install
NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"     # nobody may run it (the venv may be under /root)

# As another user: a list request on the control socket; prints the reply's ok.
ASK = r"""
import json, socket, struct, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print(e.__class__.__name__); sys.exit(0)
head = json.dumps({"id": 1, "op": "list"}).encode()
s.sendall(struct.pack("!II", len(head), 0) + head)
data = b""
while len(data) < 8 or len(data) < 8 + struct.unpack("!II", data[:8])[0]:
    data += s.recv(65536)
print(json.loads(data[8:8 + struct.unpack("!II", data[:8])[0]])["ok"])
"""


def _as(gid, path):
    def drop():
        os.setgroups([])
        os.setgid(gid)
        os.setuid(NOBODY)
    done = subprocess.run([SYSTEM_PYTHON, "-c", ASK, path], preexec_fn=drop,
                          capture_output=True, text=True, timeout=30)
    return done.stdout.strip() or done.stderr.strip()


class ControlGroupTests(unittest.TestCase):
    timeout = 120

    def setUp(self):
        _need_kvm()
        if os.geteuid() != 0 or not os.path.exists(SYSTEM_PYTHON):
            raise unittest.SkipTest("other users and groups need root, and /usr/bin/python3")

    @defer.inlineCallbacks
    def test_the_group_and_only_it_uses_the_control_socket(self):
        gid = grp.getgrnam(GROUP).gr_gid
        d = ScratchDaemon(reactor, {"control_group": GROUP})
        os.chmod(d.tmp, 0o711)          # the scratch directory stands in for /run
        self.addCleanup(d.stop)
        self.assertFalse(os.path.exists(d.run_dir))
        yield d.start()
        run, sock = os.stat(d.run_dir), os.stat(d.socket)
        self.assertEqual((run.st_gid, stat.S_IMODE(run.st_mode)), (gid, 0o710))
        self.assertEqual((sock.st_gid, stat.S_IMODE(sock.st_mode)), (gid, 0o660))
        secret = os.stat(os.path.join(d.run_dir, "vmmhost.sock.secret"))
        self.assertEqual((secret.st_uid, stat.S_IMODE(secret.st_mode)), (0, 0o600))
        self.assertEqual((yield threads.deferToThread(_as, gid, d.socket)), "True")
        other = grp.getgrnam("nogroup").gr_gid
        self.assertEqual((yield threads.deferToThread(_as, other, d.socket)),
                         "PermissionError")
        # The group cannot reach the helpers, nor read their secrets.
        self.assertEqual((yield threads.deferToThread(
            _as, gid, os.path.join(d.run_dir, "vmmhost.sock"))), "PermissionError")
