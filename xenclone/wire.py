"""The one framing used by every xenclone link.

The daemon talks to the VMM host, to the memory server and to the CLI with
the same frames, over Unix sockets (with file descriptors passed by
SCM_RIGHTS) or TCP/TLS (for remote memory servers).

A frame is ``!II`` (header length, payload length), a JSON header, then raw
payload bytes.  Requests carry ``id`` and ``op``; replies carry the same
``id`` and ``ok``; events carry ``event`` and no ``id``.  Any frame that
breaks the limits closes the connection after an error reply: one bad peer
never affects another connection.
"""

import json
import os
import struct

import attr
from twisted.internet import defer
from twisted.internet.interfaces import IFileDescriptorReceiver, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

_HEAD = struct.Struct("!II")
MAX_HEADER = 1 << 20
MAX_PAYLOAD = 64 << 20
MAX_FDS = 16


class WireError(Exception):
    """A request failed; ``code`` is a short machine-readable word."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self):
        return self.message


class ConnectionLost(WireError):
    def __init__(self, message="connection lost"):
        super().__init__("disconnected", message)


@attr.s(frozen=True)
class Message:
    fields = attr.ib()
    payload = attr.ib(default=b"")
    fds = attr.ib(factory=list)

    def __getitem__(self, key):
        return self.fields[key]

    def get(self, key, default=None):
        return self.fields.get(key, default)


@attr.s(frozen=True)
class Reply:
    """What a handler returns: fields, optional payload and fds to pass."""

    fields = attr.ib(factory=dict)
    payload = attr.ib(default=b"")
    fds = attr.ib(factory=list)


def takes_fds(method):
    """Mark a handler op as the owner of the fds its request passes; any
    other op is refused them (they would stay open in the server)."""
    method.takes_fds = True
    return method


def dispatch(handler, msg):
    """Run ``handler.op_<msg["op"]>(msg)``: a Deferred of its result.  Every
    way of asking the daemon (control socket, XenStore requests) goes here."""
    op = msg.get("op")
    method = None
    if isinstance(op, str) and op.isidentifier() and handler is not None:
        method = getattr(handler, "op_" + op, None)
    if method is None or (msg.fds and not getattr(method, "takes_fds", False)):
        for fd in msg.fds:
            os.close(fd)
        return defer.fail(WireError("unknown-op", "unknown operation %r" % (op,)) if method is None
                          else WireError("bad-request", "%s takes no file descriptors" % (op,)))
    return defer.maybeDeferred(method, msg)


def encode(fields, payload=b""):
    head = json.dumps(fields, separators=(",", ":")).encode()
    if len(head) > MAX_HEADER or len(payload) > MAX_PAYLOAD:
        raise WireError("too-large", "frame exceeds the wire limits")
    return _HEAD.pack(len(head), len(payload)) + head + payload


@implementer(IFileDescriptorReceiver, IPushProducer)
class FrameProtocol(Protocol):
    """Request/reply/event framing with fd passing.

    ``handler`` answers requests: ``handler.op_<name>(message)`` returns a
    dict, a ``Reply`` or a Deferred of either, or raises ``WireError``.
    ``on_event(message)`` receives events; ``on_close(reason)`` is called
    once when the link goes down.
    """

    log = Logger()
    max_header = MAX_HEADER         # a link of strangers lowers both
    max_payload = MAX_PAYLOAD

    def __init__(self, handler=None, on_event=None, on_close=None):
        self.handler = handler
        self.on_event = on_event
        self.on_close = on_close
        self._buf = bytearray()
        self._fds = []
        self._next_id = 1
        self._pending = {}
        self.connected_d = defer.Deferred()
        self.closed_d = defer.Deferred()
        self.held = False           # the peer leaves replies unread: serve nothing more
        self.producing = False      # registered as the transport's producer

    # -- transport side

    def connectionMade(self):
        self.connected_d.callback(self)

    def close(self):
        """Drop the link; Deferred fires once it is down."""
        if self.connected:
            self.lose()
        return self.closed_d

    def lose(self):
        """Close once what is queued is sent (a registered producer would
        hold the close for as long as it stays registered)."""
        if self.producing:
            self.producing = False
            self.transport.unregisterProducer()
        self.transport.loseConnection()

    def fileDescriptorReceived(self, fd):
        if len(self._fds) >= MAX_FDS:
            os.close(fd)
            self._fatal("too-many-fds", "too many file descriptors in flight")
            return
        self._fds.append(fd)

    def dataReceived(self, data):
        if not self.connected or self.transport.disconnecting:
            return
        self._buf += data
        self._frames()

    def _frames(self):
        while not self.held and len(self._buf) >= _HEAD.size:
            hlen, plen = _HEAD.unpack_from(self._buf)
            if hlen > self.max_header or plen > self.max_payload:
                self._fatal("too-large", "frame length %d/%d exceeds limits" % (hlen, plen))
                return
            end = _HEAD.size + hlen + plen
            if len(self._buf) < end:
                return
            head = bytes(self._buf[_HEAD.size:_HEAD.size + hlen])
            payload = bytes(self._buf[_HEAD.size + hlen:end])
            del self._buf[:end]
            try:
                fields = json.loads(head)
                if not isinstance(fields, dict):
                    raise ValueError("header is not an object")
                nfds = fields.get("nfds", 0)
                if not isinstance(nfds, int) or nfds < 0 or nfds > len(self._fds):
                    raise ValueError("frame announces %r fds" % (nfds,))
            except (ValueError, RecursionError) as e:     # deep nesting: RecursionError
                self._fatal("malformed", "malformed frame: %s" % (e,))
                return
            fds, self._fds = self._fds[:nfds], self._fds[nfds:]
            self._dispatch(Message(fields, payload, fds))
            if self.transport is None or getattr(self.transport, "disconnecting", False):
                return

    # -- as its transport's producer (``hold_back``)

    def hold_back(self):
        """Bound what a peer that does not read its replies costs: once the
        transport's buffer is full it pauses us, and we stop reading (and
        serving) until it drains.  Unread requests wait in the kernel."""
        self.producing = True
        self.transport.registerProducer(self, True)

    def pauseProducing(self):
        self.held = True
        self.transport.pauseProducing()

    def resumeProducing(self):
        self.held = False
        self.transport.resumeProducing()
        if self.connected and not self.transport.disconnecting:
            self._frames()

    def stopProducing(self):
        self.held = True

    def connectionLost(self, reason):
        self.connected = False
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.errback(ConnectionLost())
        if self.on_close is not None:
            on_close, self.on_close = self.on_close, None
            on_close(reason)
        self.closed_d.callback(None)

    def _fatal(self, code, message):
        self.log.warn("closing link: {code}: {message}", code=code, message=message)
        self._send({"ok": False, "code": code, "error": message})
        self._buf.clear()
        self.lose()

    # -- sending

    def _send(self, fields, payload=b"", fds=()):
        """Queue a frame.  Passed fds are sent with the frame's bytes, later:
        the caller keeps them open until the peer has answered (requests) or
        for as long as it owns them (replies)."""
        if self.transport is None or not self.connected:
            raise ConnectionLost()
        if fds:
            fields = dict(fields, nfds=len(fds))
            for fd in fds:
                self.transport.sendFileDescriptor(fd)
        self.transport.write(encode(fields, payload))

    def request(self, op, payload=b"", fds=(), **fields):
        """Send a request; the Deferred fires with the reply ``Message``."""
        rid = self._next_id
        self._next_id += 1
        d = defer.Deferred()
        self._pending[rid] = d
        try:
            self._send(dict(fields, id=rid, op=op), payload, fds)
        except WireError as e:
            del self._pending[rid]
            return defer.fail(e)
        return d

    def send_event(self, event, payload=b"", fds=(), **fields):
        self._send(dict(fields, event=event), payload, fds)

    # -- receiving

    def _dispatch(self, msg):
        rid = msg.get("id")
        if "ok" in msg.fields:
            d = self._pending.pop(rid, None)
            if d is None:
                for fd in msg.fds:
                    os.close(fd)
                if rid is None and not msg["ok"]:
                    self.log.warn("peer error: {error}", error=msg.get("error"))
                return
            if msg["ok"]:
                d.callback(msg)
            else:
                d.errback(WireError(msg.get("code", "error"), msg.get("error", "failed")))
        elif "op" in msg.fields:
            self._answer(rid, msg)
        elif "event" in msg.fields and self.on_event is not None:
            self.on_event(msg)
        else:
            for fd in msg.fds:
                os.close(fd)

    def _answer(self, rid, msg):
        d = dispatch(self.handler, msg)
        d.addCallbacks(self._reply_ok, self._reply_err, callbackArgs=(rid,), errbackArgs=(rid,))

    def _reply_ok(self, result, rid):
        if self.transport is None or not self.connected:
            return
        if not isinstance(result, Reply):
            result = Reply(result or {})
        try:
            self._send(dict(result.fields, id=rid, ok=True), result.payload, result.fds)
        except WireError as e:
            self._send({"id": rid, "ok": False, "code": e.code, "error": e.message})

    def _reply_err(self, failure, rid):
        if isinstance(failure.value, WireError):
            code, text = failure.value.code, failure.value.message
        else:
            self.log.failure("request {rid} failed", failure, rid=rid)
            code, text = "internal", "internal error: %s" % (failure.getErrorMessage(),)
        if self.transport is not None and self.connected:
            self._send({"id": rid, "ok": False, "code": code, "error": text})
