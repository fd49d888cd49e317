"""What happens to the helper processes when the daemon stops.

The memory server, the VMM host and the embedded XenStore server hold
what must outlive a daemon restart: images, micro-VMs, the store.  So:

    daemon stops, live domains  -> helpers keep running (the clones live on),
                                   said in the log and in ``xenclone host``
    daemon stops, no domain     -> helpers are stopped too (SIGTERM, each
                                   found by who listens on its socket)
    ``xenclone shutdown``       -> refused while domains live;
    ``xenclone shutdown --force`` destroys them first; then the daemon stops

A daemon whose start failed never knew the domains, so it keeps the
helpers whatever they hold.
"""

import os
import signal

from twisted.internet import defer, task
from twisted.logger import Logger

from xenclone.helpers import socket_owner_pid
from xenclone.wire import WireError

log = Logger(namespace="xenclone.lifecycle")

STOP_WAIT_S = 10.0      # for a helper to let go of its socket after SIGTERM
REPLY_GRACE_S = 0.2     # shutdown: time for the reply to leave before the reactor stops


def running(pid):
    """Whether ``pid`` is a process that has not exited (a zombie has)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class Lifecycle:
    """``helpers``: (name, socket path) of the helpers this daemon uses;
    ``stop_daemon``: stops the process (twistd: ``reactor.stop``)."""

    def __init__(self, reactor, helpers, stop_daemon, controller=None):
        self.reactor = reactor
        self.helpers = helpers
        self.stop_daemon = stop_daemon
        self.controller = controller         # set once the core is up

    def live(self):
        """The domains the helpers hold for us, by name; None: unknown."""
        if self.controller is None:
            return None
        return sorted(d.name for d in self.controller.domains.values())

    def on_stop(self):
        """What the daemon's stop will do, for ``xenclone host``."""
        live = self.live()
        if live is None:
            return "helpers kept (the daemon did not start: its domains are unknown)"
        if live:
            return "helpers kept: %d live domains (%s)" % (len(live), ", ".join(live[:8]))
        return "helpers stopped (no live domains)"

    @defer.inlineCallbacks
    def stopping(self):
        """The daemon is going: stop the helpers unless domains need them."""
        live = self.live()
        if live is None or live:
            log.info("stopping the daemon only: {why}; the memory server, VMM host and "
                     "XenStore helpers keep running and are served again at the next start",
                     why="its start failed" if live is None else
                     "%d live domains (%s)" % (len(live), ", ".join(live[:8])))
            return
        log.info("stopping the daemon and its helpers: no live domains")
        for name, path in self.helpers:
            yield self._stop_helper(name, path)

    @defer.inlineCallbacks
    def _stop_helper(self, name, path):
        pid = socket_owner_pid(path)
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        waited = 0.0
        while running(pid) and waited < STOP_WAIT_S:
            yield task.deferLater(self.reactor, 0.05, lambda: None)
            waited += 0.05
        if running(pid):
            log.warn("{name} (pid {pid}) still runs {s} s after SIGTERM", name=name, pid=pid,
                     s=STOP_WAIT_S)
        else:
            log.info("{name} (pid {pid}) stopped", name=name, pid=pid)

    @defer.inlineCallbacks
    def shutdown(self, force):
        """``xenclone shutdown``: everything down, the daemon last."""
        live = self.live()
        if live is None:
            raise WireError("not-ready", "the daemon is not up")
        if live and not force:
            raise WireError("busy", "%d live domains (%s): destroy them, or shutdown --force "
                            "destroys them" % (len(live), ", ".join(live[:8])))
        destroyed = []
        if live:
            destroyed = (yield self.controller.op_destroy_all({}))["destroyed"]
        self.reactor.callLater(REPLY_GRACE_S, self.stop_daemon)
        return {"destroyed": destroyed, "helpers": [name for name, _ in self.helpers]}


class DaemonOps:
    """The controller's ops, and the daemon's own: ``shutdown``, and
    ``host`` saying what a stop would do to the helpers."""

    def __init__(self, controller, lifecycle):
        self.controller = controller
        self.lifecycle = lifecycle
        self.reactor = controller.reactor

    def __getattr__(self, name):
        return getattr(self.controller, name)

    def op_shutdown(self, msg):
        return self.lifecycle.shutdown(bool(msg.get("force")))

    def op_host(self, msg):
        d = defer.maybeDeferred(self.controller.op_host, msg)
        return d.addCallback(lambda host: dict(host, on_stop=self.lifecycle.on_stop()))
