"""A XenStore client in the reactor: the wire protocol, with Deferreds.

Works against the embedded server and against a real xenstored socket.
It reconnects with backoff when xenstored goes away and registers its
watches again, so each watch fires once more after a reconnect, which is
harmless because watch handlers must re-read state anyway: watches fire
when registered, may fire spuriously, and fire on commit.

Requests made while disconnected wait for the next connection; requests in
flight when the connection drops fail with ``Disconnected`` (their outcome
is unknown).
"""

import os

from twisted.internet import defer
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.logger import Logger

from xenclone.xenstore.tree import is_child
from xenclone.xenstore.wire import (
    Message, Op, ProtocolError, XenStoreError, error_code, parse_strings, split_messages,
    split_value, strings)

log = Logger(namespace="xenclone.xenstore.client")

DEFAULT_SOCKET = "/run/xenstored/socket"


class Disconnected(Exception):
    """The connection to xenstored dropped before the reply came."""


def _list(payload):
    return parse_strings(payload)


@defer.inlineCallbacks
def _directory_parts(call, path):
    """Read a child list too long for one message (DIRECTORY_PART)."""
    listing, gen = b"", None
    while True:
        reply = yield call(Op.DIRECTORY_PART, strings(path, str(len(listing))))
        head, _, chunk = reply.partition(b"\0")
        if gen is not None and head != gen:
            listing, gen = b"", None       # changed meanwhile: start over
            continue
        gen = head
        listing += chunk
        if chunk.endswith(b"\0\0") or chunk == b"\0":
            return _list(listing[:-1])


def _first_error(d):
    def unwrap(f):
        f.trap(defer.FirstError)
        return f.value.subFailure
    return d.addCallbacks(lambda _: None, unwrap)


class _Ops:
    """The data operations, outside (tx_id 0) or inside a transaction."""

    tx_id = 0

    def _call(self, op, payload):
        raise NotImplementedError

    def read(self, path):
        return self._call(Op.READ, strings(path))

    def write(self, path, value):
        if isinstance(value, str):
            value = value.encode()
        return self._call(Op.WRITE, path.encode() + b"\0" + value).addCallback(lambda _: None)

    def mkdir(self, path):
        return self._call(Op.MKDIR, strings(path)).addCallback(lambda _: None)

    def rm(self, path):
        return self._call(Op.RM, strings(path)).addCallback(lambda _: None)

    @defer.inlineCallbacks
    def directory(self, path):
        try:
            reply = yield self._call(Op.DIRECTORY, strings(path))
        except XenStoreError as e:
            if e.code != "E2BIG":
                raise
            children = yield _directory_parts(self._call, path)
            return children
        return _list(reply)

    def get_perms(self, path):
        return self._call(Op.GET_PERMS, strings(path)).addCallback(_list)

    def set_perms(self, path, perms):
        """``perms`` like ``["n5", "r0"]``: owner and default first."""
        return self._call(Op.SET_PERMS, strings(path, *perms)).addCallback(lambda _: None)

    def write_nodes(self, nodes):
        """Write ``(path, value, perms)`` in order, setting ``perms``
        unless None: all sent at once (xenstored answers a connection's
        requests in order); fails with the first error."""
        calls = []
        for path, value, perms in nodes:
            calls.append(self.write(path, value))
            if perms is not None:
                calls.append(self.set_perms(path, perms))
        return _first_error(defer.gatherResults(calls, consumeErrors=True))


class Transaction(_Ops):
    def __init__(self, client, tx_id):
        self._client, self.tx_id = client, tx_id

    def _call(self, op, payload):
        return self._client._request(op, payload, self.tx_id)


class _Protocol(Protocol):
    def __init__(self, client):
        self.client = client
        self._buffer = b""

    def connectionMade(self):
        self.client._connected(self)

    def dataReceived(self, data):
        self._buffer += data
        try:
            messages, self._buffer = split_messages(self._buffer)
        except ProtocolError as e:
            log.error("bad data from xenstored: {error}", error=e)
            self.transport.abortConnection()
            return
        for msg in messages:
            self.client._received(msg)

    def connectionLost(self, reason):
        self.client._lost(self, reason)


class _Factory(ClientFactory):
    noisy = False

    def __init__(self, client):
        self.client = client

    def buildProtocol(self, addr):
        return _Protocol(self.client)

    def clientConnectionFailed(self, connector, reason):
        self.client._failed(reason)


class _Watch:
    __slots__ = ("callback", "registered")

    def __init__(self, callback):
        self.callback, self.registered = callback, False


class XenStoreClient(_Ops):
    """``connect()``, then the operations; each returns a Deferred.

    ``path`` defaults to ``$XENSTORED_PATH`` or /run/xenstored/socket.
    """

    def __init__(self, reactor, path=None, min_delay=0.05, max_delay=5.0):
        self.reactor = reactor
        self.path = path or os.environ.get("XENSTORED_PATH", DEFAULT_SOCKET)
        self.min_delay, self.max_delay = min_delay, max_delay
        self._delay = min_delay
        self._proto = None
        self._connector = None      # the latest dial
        self._running = False
        self._retry = None
        self._next_req = 0
        self._waiting = {}          # req_id -> Deferred
        self._queued = []           # messages made while disconnected
        self._watches = {}          # (path, token) -> _Watch
        self._ready = []            # connect() waiters
        self._closed = []           # close() waiters
        self.on_connect = []        # called with no arguments on every (re)connection
        self.on_down = []           # called with no arguments when a connection drops
                                    # or an attempt to connect fails

    @property
    def connected(self):
        return self._proto is not None

    def connect(self):
        """Start (re)connecting; fires once connected."""
        d = defer.Deferred()
        if self.connected:
            d.callback(self)
            return d
        self._ready.append(d)
        if not self._running:
            self._running = True
            self._dial()
        return d

    def close(self):
        """Stop reconnecting and disconnect; fires when closed."""
        self._running = False
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        pending = self._ready + [d for _, d in self._queued]
        self._ready, self._queued = [], []
        for d in pending:
            d.errback(Disconnected("client closed"))
        dialing = self._connector is not None and self._connector.state == "connecting"
        if self._proto is None and not dialing:
            return defer.succeed(None)
        d = defer.Deferred()
        self._closed.append(d)
        if self._proto is not None:
            self._proto.transport.loseConnection()
        else:
            self._connector.stopConnecting()    # then _failed fires d
        return d

    # -- connection management --------------------------------------------

    def _dial(self):
        self._retry = None
        self._connector = self.reactor.connectUNIX(self.path, _Factory(self), timeout=5)

    def _schedule(self):
        if self._running:
            self._retry = self.reactor.callLater(self._delay, self._dial)
            self._delay = min(self._delay * 2, self.max_delay)

    def _failed(self, reason):
        if not self._running:               # close() stopped the dial
            self._fire_closed()
            return
        log.debug("cannot reach xenstored at {path}: {why}", path=self.path,
                  why=reason.getErrorMessage())
        self._schedule()
        self._down()

    def _fire_closed(self):
        closed, self._closed = self._closed, []
        for d in closed:
            d.callback(None)

    def _down(self):
        for listener in list(self.on_down):
            listener()

    def _connected(self, proto):
        if not self._running:               # closed while the dial was under way
            proto.transport.loseConnection()
            return
        log.info("connected to xenstored at {path}", path=self.path)
        self._proto = proto
        self._delay = self.min_delay
        for (path, token), watch in list(self._watches.items()):
            if watch.registered:
                self._send_watch(path, token, watch)
        queued, self._queued = self._queued, []
        for msg, d in queued:
            self._send(msg, d)
        ready, self._ready = self._ready, []
        for d in ready:
            d.callback(self)
        for listener in list(self.on_connect):
            listener()

    def _lost(self, proto, reason):
        if proto is not self._proto:
            return                          # the one dropped in _connected
        self._proto = None
        waiting, self._waiting = self._waiting, {}
        for d in waiting.values():
            d.errback(Disconnected(reason.getErrorMessage()))
        if self._running:
            log.warn("lost xenstored at {path}; reconnecting", path=self.path)
            self._schedule()
            self._down()
        self._fire_closed()

    # -- requests ----------------------------------------------------------

    def _call(self, op, payload):
        return self._request(op, payload, 0)

    def _request(self, op, payload, tx_id):
        self._next_req = self._next_req % 0xFFFFFFFF + 1
        msg = Message(op, self._next_req, tx_id, payload)
        d = defer.Deferred()
        if self._proto is None:
            self._queued.append((msg, d))
        else:
            self._send(msg, d)
        return d

    def _send(self, msg, d):
        try:
            data = msg.encode()
        except XenStoreError as e:
            d.errback(e)
            return
        self._waiting[msg.req_id] = d
        self._proto.transport.write(data)

    def _received(self, msg):
        if msg.type == Op.WATCH_EVENT:
            self._event(msg.payload)
            return
        d = self._waiting.pop(msg.req_id, None)
        if d is None:
            log.warn("reply to unknown request {req}", req=msg.req_id)
        elif msg.type == Op.ERROR:
            d.errback(XenStoreError(error_code(msg.payload)))
        else:
            d.callback(msg.payload)

    # -- watches -----------------------------------------------------------

    def watch(self, path, token, callback):
        """Call ``callback(path, token)`` on each event; fires once registered.

        The callback fires right after registration, again after every
        reconnect, on commit of transactions, and sometimes spuriously.
        """
        key = (path, token)
        if key in self._watches:
            return defer.fail(XenStoreError("EEXIST"))
        watch = self._watches[key] = _Watch(callback)
        d = defer.Deferred()
        self._send_watch(path, token, watch, d)
        return d

    def _send_watch(self, path, token, watch, done=None):
        def ok(_):
            watch.registered = True
            if done is not None:
                done.callback(None)

        def failed(f):
            if not watch.registered and self._watches.get((path, token)) is watch:
                del self._watches[(path, token)]
            if done is not None:
                done.errback(f)
            elif not f.check(Disconnected):
                log.failure("re-registering watch {path}", f, path=path)

        self._call(Op.WATCH, strings(path, token)).addCallbacks(ok, failed)

    def unwatch(self, path, token):
        if self._watches.pop((path, token), None) is None:
            return defer.fail(XenStoreError("ENOENT"))
        if not self.connected:
            return defer.succeed(None)      # the next connection never learns of it
        return self._call(Op.UNWATCH, strings(path, token)).addCallback(lambda _: None)

    def _event(self, payload):
        try:
            path, token = split_value(payload)
            token = token.rstrip(b"\0").decode("ascii")
        except (XenStoreError, UnicodeDecodeError):
            log.warn("malformed watch event {payload!r}", payload=payload)
            return
        for (wpath, wtoken), watch in list(self._watches.items()):
            if wtoken == token and is_child(path, wpath):
                d = defer.maybeDeferred(watch.callback, path, token)
                d.addErrback(lambda f: log.failure("watch {path} handler", f, path=wpath))

    # -- transactions and domains ------------------------------------------

    @defer.inlineCallbacks
    def transaction(self, fn, attempts=100):
        """Run ``fn(tx)`` (returning a Deferred or a value) in a transaction,
        running it again while the commit conflicts (EAGAIN)."""
        for attempt in range(attempts):
            tx_id = int(parse_strings((yield self._call(Op.TRANSACTION_START, b"\0")), 1)[0])
            try:
                result = yield defer.maybeDeferred(fn, Transaction(self, tx_id))
            except Exception as e:
                yield self._abort(tx_id)
                if not (isinstance(e, XenStoreError) and e.code == "EAGAIN"):
                    raise
            else:
                try:
                    yield self._request(Op.TRANSACTION_END, b"T\0", tx_id)
                    return result
                except XenStoreError as e:
                    if e.code != "EAGAIN":
                        raise
            log.debug("transaction conflict, attempt {n}", n=attempt + 1)
        raise XenStoreError("EAGAIN", "gave up after %d attempts" % attempts)

    @defer.inlineCallbacks
    def _abort(self, tx_id):
        try:
            yield self._request(Op.TRANSACTION_END, b"F\0", tx_id)
        except (XenStoreError, Disconnected):
            pass        # already gone: ended by the error, or by the disconnect

    def _ok(self, op, *args):
        return self._call(op, strings(*args)).addCallback(lambda _: None)

    def introduce(self, domid, mfn, evtchn):
        return self._ok(Op.INTRODUCE, str(domid), str(mfn), str(evtchn))

    def release(self, domid):
        return self._ok(Op.RELEASE, str(domid))

    def resume(self, domid):
        """Tell xenstored a suspended domain runs again (xs_resume_domain):
        it clears the domain's shutdown mark."""
        return self._ok(Op.RESUME, str(domid))

    def set_target(self, domid, target):
        return self._ok(Op.SET_TARGET, str(domid), str(target))

    def get_domain_path(self, domid):
        return self._call(Op.GET_DOMAIN_PATH, strings(str(domid))).addCallback(
            lambda p: parse_strings(p, 1)[0])

    def is_domain_introduced(self, domid):
        return self._call(Op.IS_DOMAIN_INTRODUCED, strings(str(domid))).addCallback(
            lambda p: p.startswith(b"T"))
