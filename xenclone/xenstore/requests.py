"""Requests through XenStore: the same operations as the control socket.

An operator or a program writes a request, then watches its status:

    /tool/xenclone/requests/<id>          = {"op": "launch", "image": "web", "count": 4}
    /tool/xenclone/requests/<id>/status   running | ok | error     (written last)
    /tool/xenclone/requests/<id>/result   the reply, JSON (ok)
    /tool/xenclone/requests/<id>/error    {"code": ..., "error": ...} (error)

The daemon runs the request through ``wire.dispatch``, the very call the
control socket makes.  A result longer than one XenStore value is split:
``result`` then holds ``parts:N`` and ``result/0`` .. ``result/N-1`` the
pieces.  The requester removes the request when it has read the answer.

The watch handler only rescans: it fires on registration, on every write
below (our own status writes too) and spuriously.  A request is claimed by
writing its status in a transaction, so it runs once; one found ``running``
at start was cut short by a daemon restart and is marked failed.  Only dom0
may write here.
"""

import json

from twisted.internet import defer
from twisted.logger import Logger

from xenclone.control.oplog import as_caller
from xenclone.wire import Message, WireError, dispatch
from xenclone.xenstore.client import Disconnected
from xenclone.xenstore.wire import XenStoreError

log = Logger(namespace="xenclone.xenstore.requests")

REQUESTS = "/tool/xenclone/requests"
CHUNK = 4000        # below the 4096-byte XenStore value limit
TERMINAL = ("ok", "error")


def parse_request(raw):
    """The request's fields, or ``WireError``."""
    try:
        fields = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise WireError("bad-json", "the request is not JSON: %s" % e)
    if not isinstance(fields, dict) or not isinstance(fields.get("op"), str):
        raise WireError("bad-request", 'a request is an object with an "op" string')
    return fields


def write_chunked(tx, path, data):
    """Write ``data`` at ``path``, split below it if it does not fit."""
    if len(data) <= CHUNK:
        return tx.write(path, data)
    parts = [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)]
    return defer.gatherResults([tx.write(path, b"parts:%d" % len(parts))] +
                               [tx.write("%s/%d" % (path, i), p) for i, p in enumerate(parts)],
                               consumeErrors=True)


@defer.inlineCallbacks
def read_chunked(client, path):
    value = yield client.read(path)
    if not value.startswith(b"parts:"):
        return value
    parts = []
    for i in range(int(value[6:])):
        parts.append((yield client.read("%s/%d" % (path, i))))
    return b"".join(parts)


class RequestRunner:
    def __init__(self, client, handler):
        self.client = client
        self.handler = handler          # the controller: op_<name>(msg)
        self._seen = set()              # ids claimed or found finished
        self._scanning = None
        self._again = False
        self._running = {}              # id -> Deferred of its run

    @defer.inlineCallbacks
    def start(self):
        yield self.client.mkdir(REQUESTS)
        yield self.client.set_perms(REQUESTS, ["n0"])
        yield self.client.watch(REQUESTS, "requests", lambda path, token: self.scan())

    def forget(self):
        """A new connection: what we knew of the tree may be stale."""
        self._seen = set(self._running)
        self.scan()

    def stop(self):
        return defer.DeferredList(list(self._running.values()))

    def scan(self):
        """Look for new requests; coalesces events that come while it looks."""
        if self._scanning is not None:
            self._again = True
            return self._scanning
        self._scanning = self._scan()

        def done(_):
            self._scanning = None
            if self._again:
                self._again = False
                self.scan()

        self._scanning.addErrback(lambda f: log.warn("scanning requests: {error}",
                                                     error=f.getErrorMessage()))
        self._scanning.addBoth(done)
        return self._scanning

    @defer.inlineCallbacks
    def _scan(self):
        ids = set((yield self.client.directory(REQUESTS)))
        self._seen &= ids | set(self._running)
        for rid in sorted(ids - self._seen):
            request = yield self._claim(rid)
            if request is not None:
                self._seen.add(rid)
                d = self._run(rid, request)
                if not d.called:
                    self._running[rid] = d
                    d.addBoth(lambda _, rid=rid: self._running.pop(rid, None))

    @defer.inlineCallbacks
    def _claim(self, rid):
        """The request's value if we now own it, else None."""
        path = "%s/%s" % (REQUESTS, rid)

        @defer.inlineCallbacks
        def claim(tx):
            try:
                status = yield tx.read(path + "/status")
            except XenStoreError as e:
                if e.code != "ENOENT":
                    raise
                status = None
            if status in (s.encode() for s in TERMINAL):
                return None, True
            if status == b"running":          # ours before a restart
                yield _answer(tx, path, None, WireError(
                    "interrupted", "the daemon restarted while this request ran"))
                return None, True
            value = yield tx.read(path)
            if not value:
                return None, False            # not written yet
            yield tx.write(path + "/status", b"running")
            return value, True

        try:
            value, settled = yield self.client.transaction(claim)
        except XenStoreError as e:
            if e.code == "ENOENT":            # removed meanwhile
                return None
            raise
        if settled and value is None:
            self._seen.add(rid)
        return value

    @defer.inlineCallbacks
    def _run(self, rid, raw):
        path = "%s/%s" % (REQUESTS, rid)
        try:
            result = yield dispatch(as_caller(self.handler, "xenstore request %s" % rid),
                                    Message(parse_request(raw)))
            error = None
        except WireError as e:
            result, error = None, e
        except Exception as e:
            log.failure("XenStore request {rid}", rid=rid)
            result, error = None, WireError("internal", "internal error: %s" % e)
        log.info("XenStore request {rid}: {status}", rid=rid,
                 status="ok" if error is None else error.code)
        try:
            yield self.client.transaction(lambda tx: _answer(tx, path, result, error))
        except (XenStoreError, Disconnected) as e:
            log.warn("cannot answer request {rid}: {error}", rid=rid, error=e)


@defer.inlineCallbacks
def _answer(tx, path, result, error):
    if error is None:
        yield write_chunked(tx, path + "/result",
                            json.dumps(_fields(result), sort_keys=True).encode())
        yield tx.write(path + "/status", b"ok")
    else:
        yield tx.write(path + "/error", json.dumps({"code": error.code,
                                                   "error": error.message}).encode())
        yield tx.write(path + "/status", b"error")


def _fields(result):
    """A handler's reply as the control socket would send its fields."""
    return getattr(result, "fields", result) or {}


@defer.inlineCallbacks
def call(client, op, fields, rid, claim_timeout=10.0):
    """Ask the daemon through XenStore, as ``xenclone --via-xenstore`` does:
    write the request, wait for its status, read the answer, remove it.
    Returns the result fields or raises ``WireError``, as the control socket;
    ``no-daemon`` if no daemon takes the request within ``claim_timeout``."""
    path = "%s/%s" % (REQUESTS, rid)
    raw = json.dumps(dict(fields, op=op)).encode()
    claimed, done = defer.Deferred(), defer.Deferred()

    @defer.inlineCallbacks
    def status_changed(_path, _token):
        try:
            status = (yield client.read(path + "/status")).decode()
        except XenStoreError:
            return                          # not yet
        for d, fire in ((claimed, True), (done, status in TERMINAL)):
            if fire and not d.called:
                d.callback(status)

    yield client.watch(path + "/status", rid, status_changed)
    try:
        try:
            yield client.write(path, raw)
        except XenStoreError as e:
            raise WireError("bad-request", "cannot write the request (%s)" % e.code)
        try:
            yield claimed.addTimeout(claim_timeout, client.reactor)
        except defer.TimeoutError:
            raise WireError("no-daemon", "no xenclone daemon took the request in %s within %gs"
                            % (REQUESTS, claim_timeout))
        status = yield done
        if status == "error":
            error = json.loads((yield client.read(path + "/error")))
            raise WireError(error["code"], error["error"])
        return json.loads((yield read_chunked(client, path + "/result")))
    finally:
        yield client.unwatch(path + "/status", rid)
        yield client.rm(path)
