"""The VMM host and the memory server accept only their own daemon.

Either helper holds what no other process may touch: the VMM host hands a
clone's userfaultfd to whoever asks ``reattach``, the memory server blesses
and discards images.  So a link to a helper's Unix socket goes:

    connect     -> the peer's uid (SO_PEERCRED) must be the helper's own,
                   or the link is closed at once
    first frame -> ``hello`` with the helper's secret; anything else, or
                   another secret, closes the link
    then        -> the helper's handler (and, for the VMM host, its events)

The secret is made afresh each time a daemon starts a helper and passed in
its environment (SECRET_ENV, removed from it at once so the helper's own
children never see it).  The daemon keeps it beside the socket
(``<socket>.secret``, mode 0600) so that a daemon restarted after a crash
can connect to the helpers that outlived the old one.  A helper started
without a secret (by hand, by the tests) asks only for the uid.

``one_server`` keeps one helper per socket: an flock the kernel drops when
its holder dies, taken before the socket file of a dead helper goes.
"""

import fcntl
import hmac
import os
import secrets
import socket
import struct

from twisted.logger import Logger

from xenclone.wire import FrameProtocol, WireError

log = Logger()

SECRET_ENV = "XENCLONE_HELPER_SECRET"


def take_secret():
    """The secret this helper was started with (bytes), or None; it leaves
    the environment."""
    secret = os.environ.pop(SECRET_ENV, None)
    return secret.encode() if secret else None


def new_secret(socket_path):
    """A fresh secret for a helper about to start at ``socket_path``, kept
    (atomically, 0600) where a restarted daemon finds it."""
    secret = secrets.token_hex(32)
    tmp = secret_path(socket_path) + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret)
    os.replace(tmp, secret_path(socket_path))
    return secret


def read_secret(socket_path):
    """The kept secret of the helper at ``socket_path``, or None."""
    try:
        with open(secret_path(socket_path)) as f:
            return f.read().strip() or None
    except FileNotFoundError:
        return None


def secret_path(socket_path):
    return socket_path + ".secret"


def peer_uid(transport):
    """The uid of the process at the other end of a Unix socket."""
    creds = transport.getHandle().getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                             struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


class GatedLink(FrameProtocol):
    """A helper's end of a link from its daemon (see the module's flow)."""

    def __init__(self, handler, secret, on_trusted=lambda proto: None):
        super().__init__(handler)
        self.secret = secret
        self.on_trusted = on_trusted
        self.trusted = False

    def connectionMade(self):
        uid = peer_uid(self.transport)
        if uid != os.getuid():
            log.warn("refused a link from uid {uid}", uid=uid)
            self.transport.abortConnection()
            return
        super().connectionMade()
        if self.secret is None:     # started by hand: the uid is all there is to check
            self._trust()

    def _trust(self):
        self.trusted = True
        self.on_trusted(self)

    def _knows_secret(self, token):
        # surrogatepass: a lone surrogate is a wrong secret, not an internal error
        return self.secret is None or isinstance(token, str) and hmac.compare_digest(
            token.encode("utf-8", "surrogatepass"), self.secret)

    def _dispatch(self, msg):
        is_hello = msg.get("op") == "hello" and "ok" not in msg.fields
        if self.trusted and not is_hello:
            return super()._dispatch(msg)
        for fd in msg.fds:
            os.close(fd)
        if not is_hello or not self._knows_secret(msg.get("secret")):
            log.warn("refused a link that did not say hello with the secret")
            self._fatal("unauthenticated", "this helper serves only the daemon that started it")
            return
        self._send({"id": msg.get("id"), "ok": True})
        if not self.trusted:
            self._trust()


def hello(proto, socket_path):
    """Say hello to a helper with its kept secret; Deferred[proto]."""
    def refused(failure):
        proto.transport.loseConnection()
        failure.trap(WireError)
        raise WireError("helper-refused", "the helper at %s refused this daemon: %s"
                        % (socket_path, failure.value))

    d = proto.request("hello", secret=read_secret(socket_path))
    return d.addCallbacks(lambda _: proto, refused)


def one_server(socket_path):
    """One server per socket: an flock the kernel drops when the holder
    dies (a pid file would still name a killed server until it is reaped),
    then the dead server's socket file goes."""
    fd = os.open(socket_path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OSError("another server serves %s" % socket_path)
    # fd is never closed: the lock is held for the life of the process.
    if os.path.exists(socket_path):
        os.unlink(socket_path)
