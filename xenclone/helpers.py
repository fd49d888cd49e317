"""Helper processes that outlive the daemon.

The memory server and the VMM host hold what must survive a daemon crash
(images, micro-VMs and their userfaultfds), so they are not the daemon's
children: it connects to a running one, or starts one in its own session.
Under systemd a helper inherits the daemon's stdout and stderr, so its log
goes to the journal with the daemon's (``journalctl -u xenclone``);
elsewhere to a file in ``run_dir``.
"""

import os
import socket
import struct
import subprocess
import sys

from twisted.internet import defer, task
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.logger import Logger

from xenclone.helper_gate import SECRET_ENV, hello, new_secret
from xenclone.wire import WireError

log = Logger()


def under_journal(environ):
    """systemd sets JOURNAL_STREAM when stdout or stderr is the journal."""
    return bool(environ.get("JOURNAL_STREAM"))


class HelperProcess:
    """``log_path``: where the helper writes when the daemon's own output
    is not the journal (a terminal, a test).  ``gated``: the helper serves
    only its own daemon (``helper_gate``): it is started with a fresh
    secret, and every link says hello with it."""

    def __init__(self, reactor, name, module, args, socket_path, log_path, environ=None,
                 gated=True):
        self.reactor = reactor
        self.environ = os.environ if environ is None else environ
        self.name = name
        self.argv = [sys.executable, "-m", module, "--socket", socket_path] + list(args)
        self.socket_path = socket_path
        self.log_path = log_path
        self.gated = gated

    def _connect(self, proto):
        endpoint = UNIXClientEndpoint(self.reactor, self.socket_path, timeout=5)
        d = connectProtocol(endpoint, proto)
        return d.addCallback(hello, self.socket_path) if self.gated else d

    def _spawn(self):
        log.info("starting {name}: {argv}", name=self.name, argv=" ".join(self.argv))
        env = dict(self.environ)
        if self.gated:
            env[SECRET_ENV] = new_secret(self.socket_path)
        # setsid --fork: the helper is nobody's child and keeps running
        # whatever happens to the daemon.
        argv = ["setsid", "--fork"] + self.argv
        if under_journal(self.environ):
            # systemd's stream to the journal: the helper's lines land beside the daemon's.
            subprocess.run(argv, stdin=subprocess.DEVNULL, check=True, cwd="/", env=env)
            return
        with open(self.log_path, "ab") as out:
            subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, check=True,
                           cwd="/", env=env)

    def where_logged(self):
        return "the journal" if under_journal(self.environ) else self.log_path

    @defer.inlineCallbacks
    def connect(self, make_protocol, timeout=30.0):
        """Connect to the running helper, starting it first if need be (a
        helper that refuses this daemon is not replaced: it is an error)."""
        try:
            proto = yield self._connect(make_protocol())
            return proto
        except WireError as e:
            if e.code == "helper-refused":
                raise
        except Exception:
            pass
        self._spawn()
        waited = 0.0
        delay = 0.02
        while True:
            try:
                proto = yield self._connect(make_protocol())
                log.info("{name} is up after {s:.2f}s", name=self.name, s=waited)
                return proto
            except Exception:
                if waited >= timeout:
                    raise WireError("helper-down", "%s did not start within %.0fs; see %s"
                                    % (self.name, timeout, self.where_logged()))
            yield task.deferLater(self.reactor, delay, lambda: None)
            waited += delay
            delay = min(delay * 2, 0.5)


def socket_owner_pid(path):
    """The pid of the process listening on the Unix socket ``path``
    (SO_PEERCRED), or None if nobody listens there."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return struct.unpack("3i", creds)[0]
    except OSError:
        return None
    finally:
        sock.close()
