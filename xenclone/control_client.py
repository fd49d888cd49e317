"""The control-socket client: connect to the daemon, ask, and the one
error type with the command's exit codes.

    proto = yield connect(reactor, settings["control_socket"])
    fields = yield ask(proto, op, **fields)     # the reply, without id/ok

Exit codes: 0 done, 1 the operation failed, 2 bad usage or config,
3 the daemon cannot be reached.
"""

from twisted.internet import defer
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol

from xenclone.wire import FrameProtocol

EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3


class CliError(Exception):
    """Printed as ``xenclone: <message>``, then exit ``code``: never a traceback."""

    def __init__(self, message, code=EXIT_FAILED):
        super().__init__(message)
        self.code = code


@defer.inlineCallbacks
def connect(reactor, socket_path):
    try:
        proto = yield connectProtocol(UNIXClientEndpoint(reactor, socket_path, timeout=5),
                                      FrameProtocol())
    except Exception as e:
        raise CliError("cannot reach the xenclone daemon at %s (%s); start it with "
                       "'twistd -n xenclone' or 'systemctl start xenclone'"
                       % (socket_path, e.__class__.__name__), EXIT_UNREACHABLE)
    return proto


@defer.inlineCallbacks
def ask(proto, op, **fields):
    """The reply's fields, without the frame's own (id, ok)."""
    msg = yield proto.request(op, **fields)
    return {k: v for k, v in msg.fields.items() if k not in ("id", "ok")}
