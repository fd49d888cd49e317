"""A XenStore client in the reactor through libxenstore: the interface and
semantics of ``client.XenStoreClient``, for a Xen dom0.

libxenstore finds xenstored itself (``$XENSTORED_PATH``, else its socket,
else /dev/xen/xenbus), so a xenstored in a stub domain, reachable only
through the xenbus device, is served as well as the usual daemon.

Flow: ``connect()`` opens a handle (``libxs.Handle``) on the client's own
worker thread; every request then runs there as a Deferred, so a stuck
xenstored holds that thread, never the reactor.  One thread loses nothing:
libxenstore (built with pthreads) sends one request at a time per handle
anyway; and it orders the handle's ``xs_close`` after every request made
before it.  Watch events: libxenstore's reader thread queues them and
writes a byte to the pipe ``xs_fileno`` returns; that pipe is a reader in
the reactor, which drains the queue with ``xs_check_watch`` (it never
waits) and calls the callbacks on the reactor thread.  As with xenstored,
a watch fires once when registered, on commit of transactions, and maybe
spuriously.  Stale events of a watch just removed are dropped here, so
``XS_UNWATCH_FILTER`` is not asked for (it would also forbid one token on
a path and its subpath).

A lost connection: libxenstore closes its descriptor and the next request
fails with EBADF; that request fails with ``Disconnected`` and the client
opens a new handle with backoff and registers its watches again (each
fires once more).  Nothing marks the watch pipe when the connection drops,
so a probe every ``probe_interval`` seconds notices a drop no request did.
Requests made while disconnected wait for the next connection.

pyxs (a blocking pure-Python client) has no place in the daemon, which
must not block the reactor and must reach /dev/xen/xenbus as xl does: it
is a test dependency only, checking the embedded server's wire protocol.
"""

import os

from twisted.internet import defer, task
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from xenclone.xenstore.client import DEFAULT_SOCKET, Disconnected
from xenclone.xenstore.libxs import Handle
from xenclone.xenstore.tree import is_child
from xenclone.xenstore.wire import XenStoreError

log = Logger(namespace="xenclone.xenstore.libclient")


class _Ops:
    """The data operations, outside (tx_id 0) or inside a transaction."""

    tx_id = 0

    def _request(self, name, *args):
        raise NotImplementedError

    def read(self, path):
        return self._request("read", self.tx_id, path)

    def write(self, path, value):
        if isinstance(value, str):
            value = value.encode()
        return self._request("write", self.tx_id, path, value)

    def mkdir(self, path):
        return self._request("mkdir", self.tx_id, path)

    def rm(self, path):
        return self._request("rm", self.tx_id, path)

    def directory(self, path):
        return self._request("directory", self.tx_id, path)

    def get_perms(self, path):
        return self._request("get_perms", self.tx_id, path)

    def set_perms(self, path, perms):
        """``perms`` like ``["n5", "r0"]``: owner and default first."""
        return self._request("set_perms", self.tx_id, path, list(perms))

    def write_nodes(self, nodes):
        """Write ``(path, value, perms)`` in order, setting ``perms``
        unless None, in one go on the worker (libxenstore waits for each
        answer, so one trip to the worker is what can be saved)."""
        return self._request("write_nodes", self.tx_id, [
            (path, value.encode() if isinstance(value, str) else value,
             None if perms is None else list(perms)) for path, value, perms in nodes])


class Transaction(_Ops):
    def __init__(self, client, tx_id):
        self._client, self.tx_id = client, tx_id

    def _request(self, name, *args):
        return self._client._request(name, *args)


@implementer(IReadDescriptor)
class _WatchPipe:
    """libxenstore's event pipe as a reader in the reactor."""

    def __init__(self, fd, on_readable):
        self._fd, self._on_readable = fd, on_readable

    def fileno(self):
        return self._fd

    def doRead(self):
        self._on_readable()

    def connectionLost(self, reason):
        pass        # the pipe is libxenstore's: xs_close closes it

    def logPrefix(self):
        return "xenstore-watches"


class _Watch:
    __slots__ = ("callback", "registered")

    def __init__(self, callback):
        self.callback, self.registered = callback, False


class LibXenStoreClient(_Ops):
    """``connect()``, then the operations; each returns a Deferred."""

    def __init__(self, reactor, min_delay=0.05, max_delay=5.0, probe_interval=10.0):
        self.reactor = reactor
        # For messages only: libxenstore reads XENSTORED_PATH at each xs_open.
        self.path = os.environ.get("XENSTORED_PATH") or DEFAULT_SOCKET + " or /dev/xen/xenbus"
        self.min_delay, self.max_delay = min_delay, max_delay
        self._delay = min_delay
        self._handle = None
        self._pipe = None
        self._pool = None
        self._shutdown_trigger = None
        self._running = False
        self._retry = None
        self._probe = task.LoopingCall(self._check_alive)
        self._probe.clock = reactor
        self._probe_interval = probe_interval
        self._probing = False
        self._queued = []           # (name, args, Deferred) made while disconnected
        self._watches = {}          # (path, token) -> _Watch
        self._ready = []            # connect() waiters
        self.on_connect = []        # called with no arguments on every (re)connection
        self.on_down = []           # ... when a connection drops or an open fails

    @property
    def connected(self):
        return self._handle is not None

    def connect(self):
        """Start (re)connecting; fires once connected."""
        if self.connected:
            return defer.succeed(self)
        d = defer.Deferred()
        self._ready.append(d)
        if not self._running:
            self._running = True
            self._start_pool()
            self._open()
        return d

    def close(self):
        """Stop reconnecting and close the handle; fires when closed."""
        self._running = False
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        pending = self._ready + [d for _, _, d in self._queued]
        self._ready, self._queued = [], []
        for d in pending:
            d.errback(Disconnected("client closed"))
        if self._pool is None:
            return defer.succeed(None)
        handle = self._drop()
        # After every request already on the worker, and after an open under way
        # (whose result then finds the client closed and closes it).
        d = self._on_worker(handle.close if handle is not None else lambda: None)
        return d.addBoth(lambda _: self._stop_pool())

    # -- the worker thread ----------------------------------------------------

    def _start_pool(self):
        if self._pool is None:
            self._pool = ThreadPool(0, 1, "xenstore")
            self._pool.start()
            # Its thread would hold the process at exit if the reactor
            # stopped before close().
            self._shutdown_trigger = self.reactor.addSystemEventTrigger(
                "during", "shutdown", self._stop_pool, False)

    def _stop_pool(self, untrigger=True):
        pool, self._pool = self._pool, None
        if pool is not None:
            if untrigger:
                self.reactor.removeSystemEventTrigger(self._shutdown_trigger)
            pool.stop()

    def _on_worker(self, fn, *args):
        return deferToThreadPool(self.reactor, self._pool, fn, *args)

    # -- connection management ------------------------------------------------

    def _open(self):
        self._retry = None
        self._on_worker(Handle.open).addCallbacks(self._opened, self._open_failed)

    def _open_failed(self, failure):
        if not self._running:
            return
        log.debug("cannot reach xenstored at {path}: {why}", path=self.path,
                  why=failure.getErrorMessage())
        self._schedule()
        self._down()

    def _schedule(self):
        if self._running:
            self._retry = self.reactor.callLater(self._delay, self._open)
            self._delay = min(self._delay * 2, self.max_delay)

    def _down(self):
        for listener in list(self.on_down):
            listener()

    def _opened(self, handle):
        if not self._running:               # closed while the open was under way
            handle.close()                  # no watch yet, so no reader thread: quick
            return
        log.info("connected to xenstored at {path} through libxenstore", path=self.path)
        self._handle, self._delay = handle, self.min_delay
        self._pipe = _WatchPipe(handle.fileno(), self._events)
        self.reactor.addReader(self._pipe)
        self._probe.start(self._probe_interval, now=False)
        for (path, token), watch in list(self._watches.items()):
            if watch.registered:
                self._send("watch", (path, token), defer.Deferred()).addErrback(
                    self._rewatch_failed, path)
        queued, self._queued = self._queued, []
        for name, args, d in queued:
            self._send(name, args, d)
        ready, self._ready = self._ready, []
        for d in ready:
            d.callback(self)
        for listener in list(self.on_connect):
            listener()

    def _rewatch_failed(self, failure, path):
        if not failure.check(Disconnected):
            log.failure("re-registering watch {path}", failure, path=path)

    def _drop(self):
        """Forget the handle (returned, to be closed on the worker)."""
        handle, self._handle = self._handle, None
        if handle is not None:
            self.reactor.removeReader(self._pipe)
            self._pipe = None
            self._probe.stop()
        return handle

    def _lost(self, handle):
        if handle is not self._handle:
            return                          # an older handle, already dropped
        self._on_worker(self._drop().close)
        if self._running:
            log.warn("lost xenstored at {path}; reconnecting", path=self.path)
            self._schedule()
            self._down()

    def _check_alive(self):
        if not self._probing:
            self._probing = True
            d = self._request("get_domain_path", 0)
            d.addErrback(lambda f: f.trap(XenStoreError, Disconnected))
            d.addBoth(lambda _: setattr(self, "_probing", False))

    # -- requests ---------------------------------------------------------------

    def _request(self, name, *args):
        """``Handle.<name>(*args)`` on the worker, once connected."""
        d = defer.Deferred()
        if self._handle is None:
            self._queued.append((name, args, d))
            return d
        return self._send(name, args, d)

    def _send(self, name, args, d):
        handle = self._handle

        def failed(f):
            if f.check(Disconnected):
                self._lost(handle)
            return f
        self._on_worker(getattr(handle, name), *args).addErrback(failed).chainDeferred(d)
        return d

    # -- watches ------------------------------------------------------------------

    def watch(self, path, token, callback):
        """Call ``callback(path, token)`` on each event; fires once registered.

        The callback fires right after registration, again after every
        reconnect, on commit of transactions, and sometimes spuriously.
        """
        key = (path, token)
        if key in self._watches:
            return defer.fail(XenStoreError("EEXIST"))
        watch = self._watches[key] = _Watch(callback)

        def ok(_):
            watch.registered = True

        def failed(f):
            if self._watches.get(key) is watch:
                del self._watches[key]
            return f
        return self._request("watch", path, token).addCallbacks(ok, failed)

    def unwatch(self, path, token):
        if self._watches.pop((path, token), None) is None:
            return defer.fail(XenStoreError("ENOENT"))
        if not self.connected:
            return defer.succeed(None)      # the next connection never learns of it
        return self._request("unwatch", path, token)

    def _events(self):
        handle = self._handle
        try:
            events = handle.check_watches()
        except Disconnected:
            self._lost(handle)
            return
        for path, token in events:
            for (wpath, wtoken), watch in list(self._watches.items()):
                if wtoken == token and is_child(path, wpath):
                    d = defer.maybeDeferred(watch.callback, path, token)
                    d.addErrback(lambda f, p=wpath: log.failure("watch {path} handler", f,
                                                                path=p))

    # -- transactions and domains -----------------------------------------------

    @defer.inlineCallbacks
    def transaction(self, fn, attempts=100):
        """Run ``fn(tx)`` (returning a Deferred or a value) in a transaction,
        running it again while the commit conflicts (EAGAIN)."""
        for attempt in range(attempts):
            tx_id = yield self._request("transaction_start")
            try:
                result = yield defer.maybeDeferred(fn, Transaction(self, tx_id))
            except Exception as e:
                yield self._abort(tx_id)
                if not (isinstance(e, XenStoreError) and e.code == "EAGAIN"):
                    raise
            else:
                try:
                    yield self._request("transaction_end", tx_id, False)
                    return result
                except XenStoreError as e:
                    if e.code != "EAGAIN":
                        raise
            log.debug("transaction conflict, attempt {n}", n=attempt + 1)
        raise XenStoreError("EAGAIN", "gave up after %d attempts" % attempts)

    @defer.inlineCallbacks
    def _abort(self, tx_id):
        try:
            yield self._request("transaction_end", tx_id, True)
        except (XenStoreError, Disconnected):
            pass        # already gone: ended by the error, or by the disconnect

    def introduce(self, domid, mfn, evtchn):
        return self._request("introduce", int(domid), int(mfn), int(evtchn))

    def release(self, domid):
        return self._request("release", int(domid))

    def resume(self, domid):
        """Tell xenstored a suspended domain runs again: it clears the
        domain's shutdown mark."""
        return self._request("resume", int(domid))

    def set_target(self, domid, target):
        return self._request("set_target", int(domid), int(target))

    def get_domain_path(self, domid):
        return self._request("get_domain_path", int(domid))

    def is_domain_introduced(self, domid):
        return self._request("is_domain_introduced", int(domid))
