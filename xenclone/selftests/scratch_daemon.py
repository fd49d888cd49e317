"""A daemon of the crash self-tests' own: ``twistd -n xenclone`` in a
temporary directory, optionally inside a network namespace.  It can be
killed with -9 and started again on the same directory; at the end it and
the helpers it started (VMM host, memory server) are stopped, whatever
happened.  The operator's daemon is never touched."""

import os
import shutil
import signal
import sys
import tempfile

from twisted.internet import defer, task
from twisted.internet.protocol import ProcessProtocol

from xenclone.config import format_value
from xenclone.control_client import CliError, ask, connect
from xenclone.wire import WireError

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
START_TIMEOUT = 60.0


class _Exit(ProcessProtocol):
    def __init__(self):
        self.ended = defer.Deferred()

    def processEnded(self, reason):
        self.ended.callback(reason.value.exitCode)


def sleep(reactor, seconds):
    return task.deferLater(reactor, seconds, lambda: None)


class ScratchDaemon:
    def __init__(self, reactor, settings=None, netns=None, prefix="xenclone-scratch-"):
        self.reactor = reactor
        self.netns = netns
        self.tmp = tempfile.mkdtemp(prefix=prefix)
        self.run_dir = os.path.join(self.tmp, "run")
        self.state_dir = os.path.join(self.tmp, "state")
        self.socket = os.path.join(self.run_dir, "control.sock")
        self.conf = os.path.join(self.tmp, "xenclone.conf")
        base = {"state_dir": self.state_dir, "run_dir": self.run_dir,
                "control_socket": self.socket, "xenstore": "off"}
        with open(self.conf, "w") as f:
            for key, value in dict(base, **(settings or {})).items():
                f.write("%s = %s\n" % (key, format_value(value)))
        self.process = None
        self.link = None
        self.helpers = {}

    @defer.inlineCallbacks
    def start(self):
        """Start the daemon; fires once its control socket answers."""
        exit = _Exit()
        argv = [TWISTD, "-n", "--pidfile=", "xenclone", "-c", self.conf]
        if self.netns:
            argv = [shutil.which("ip") or "/usr/sbin/ip", "netns", "exec", self.netns] + argv
        log = os.open(os.path.join(self.tmp, "daemon.log"),
                      os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            self.process = self.reactor.spawnProcess(exit, argv[0], argv, env=os.environ,
                                                     childFDs={0: "w", 1: log, 2: log})
        finally:
            os.close(log)
        self.process.exit = exit
        for _ in range(int(START_TIMEOUT / 0.1)):
            if exit.ended.called:
                break
            try:
                self.link = yield connect(self.reactor, self.socket)
            except CliError:
                yield sleep(self.reactor, 0.1)
                continue
            self.helpers = yield self.call("pids")
            return self
        raise WireError("helper-down", "the scratch daemon did not start; see %s/daemon.log"
                        % self.tmp)

    def call(self, op, **fields):
        return ask(self.link, op, **fields)

    @defer.inlineCallbacks
    def kill(self):
        """kill -9 the daemon (its helpers live on) and wait until it is gone."""
        self.link.transport.abortConnection()
        self.link = None
        self.process.signalProcess("KILL")
        yield self.process.exit.ended
        self.process = None

    @defer.inlineCallbacks
    def stop(self, keep=False):
        """Destroy every domain, stop the daemon and its helpers, remove
        the directory (unless ``keep``: it is named in the result)."""
        if self.process is not None:
            try:
                if self.link is not None:
                    self.helpers = yield self.call("pids")
                    yield self.call("destroy_all")
            except WireError:
                pass
            self.process.signalProcess("TERM")
            yield self.process.exit.ended
        for name in ("vmmhost", "memserver"):
            try:
                os.kill(self.helpers[name], signal.SIGTERM)
            except (KeyError, TypeError, ProcessLookupError):
                pass
        if keep or os.environ.get("XENCLONE_KEEP_TMP"):
            return self.tmp
        shutil.rmtree(self.tmp, ignore_errors=True)
        return None
