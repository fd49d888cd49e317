"""Every operation that changes something is logged when it ends.

    control socket / XenStore request / guest request
        -> LoggedHandler(controller, who).op_<name>(msg)
        -> the controller's op_<name>(msg)
        -> one event in the namespace ``xenclone.ops``:
           who, op, domain, result ("ok" or the error code), duration_s

``who`` says who asked: ``uid=0 pid=1234`` (the control socket's peer),
``xenstore request job1``, ``guest dom7``.  Reads (list, info, host...)
are not logged: ``top`` asks for them every second.
"""

import socket
import struct
import time

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from xenclone.wire import WireError

LOGGED = frozenset({"create", "bless", "launch", "destroy", "destroy_all", "discard", "set",
                    "evict", "hoard", "pause", "unpause", "memserver", "set_host", "shutdown",
                    "reset"})
_log = Logger(namespace="xenclone.ops")


def _target(msg):
    """The domain or image an operation is about, as the request named it."""
    for key in ("domain", "image"):
        if msg.get(key) is not None:
            return str(msg.get(key))
    config = msg.get("config")
    return str(config.get("name")) if isinstance(config, dict) else "-"


def peer(transport):
    """``uid=U pid=P`` of a Unix socket's peer (SO_PEERCRED)."""
    try:
        creds = transport.socket.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                            struct.calcsize("3i"))
    except (AttributeError, OSError):
        return "unknown peer"
    pid, uid, _ = struct.unpack("3i", creds)
    return "uid=%d pid=%d" % (uid, pid)


class _WallClock:
    seconds = staticmethod(time.monotonic)


class LoggedHandler:
    """``handler`` as one caller sees it; ``who``: a string, or a callable
    asked when an operation is logged (a peer known only once connected)."""

    def __init__(self, handler, who, clock=None, log=_log):
        self.handler = handler
        self.who = who
        # The controller's reactor; a handler without one (a test's) is timed by the wall.
        self.clock = clock or getattr(handler, "reactor", None) or _WallClock()
        self.log = log

    def __getattr__(self, name):
        method = getattr(self.handler, name)
        if not name.startswith("op_") or name[3:] not in LOGGED:
            return method

        def logged(msg):
            t0 = self.clock.seconds()
            d = defer.maybeDeferred(method, msg)
            return d.addBoth(self._done, name[3:], msg, t0)

        logged.takes_fds = getattr(method, "takes_fds", False)
        return logged

    def _done(self, result, op, msg, t0):
        failed = isinstance(result, Failure)
        if failed and result.check(WireError):
            outcome, error = result.value.code, result.value.message
        elif failed:
            outcome, error = "internal", result.getErrorMessage()
        else:
            outcome, error = "ok", None
        who = self.who() if callable(self.who) else self.who
        self.log.info("{who}: {op} {domain}: {result}{error_text} ({duration_s:.3f} s)",
                      who=who, op=op, domain=_target(msg), result=outcome, error=error,
                      error_text="" if error is None else " (%s)" % error,
                      duration_s=self.clock.seconds() - t0)
        return result


def as_caller(handler, who):
    """``handler`` (a controller, or a LoggedHandler of it) asked by ``who``."""
    inner = handler.handler if isinstance(handler, LoggedHandler) else handler
    return LoggedHandler(inner, who)
