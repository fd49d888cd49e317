"""Clients of the memory server.

``MemoryServerClient`` speaks to the local Unix socket (every operation,
memfd passing); ``RemotePageSource`` reads pages over TCP/TLS.  Both
connect on first use and again after the link drops, so a pager survives
a memory-server restart: requests in flight fail with ``ConnectionLost``.
"""

import base64
import os

from twisted.internet import defer, ssl
from twisted.internet.endpoints import SSL4ClientEndpoint, connectProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from xenclone.image import OpenImage
from xenclone.interfaces import IMemoryServer
from xenclone.wire import ConnectionLost, FrameProtocol, WireError

_REPLY_KEYS = ("id", "ok", "nfds")


def _fields(msg):
    return {k: v for k, v in msg.fields.items() if k not in _REPLY_KEYS}


def _closing(result, fd):
    """Close ``fd`` (passed with a request) once the reply is in."""
    os.close(fd)
    return result


class _Link:
    """A lazily (re)connected ``FrameProtocol`` shared by all requests."""

    def __init__(self, reactor, endpoint, request_timeout=None, connect=None):
        self.reactor = reactor
        self.endpoint = endpoint
        # A server that does not answer a fetch is as good as gone: its link
        # is dropped, so the next request connects afresh.  (Bless and open
        # copy whole images: they get no such limit.)
        self.request_timeout = request_timeout
        self._connect = connect or (lambda proto: connectProtocol(self.endpoint, proto))
        self._proto = None
        self._waiters = []
        self._shut = False
        self._connecting = None

    def _ready(self, proto):
        """Hook run once per new connection before requests go out."""
        return proto

    def _link(self):
        if self._shut:
            return defer.fail(ConnectionLost("the memory server client is closed"))
        if self._proto is not None:
            return defer.succeed(self._proto)
        d = defer.Deferred()
        self._waiters.append(d)
        if len(self._waiters) == 1:
            proto = FrameProtocol(on_close=self._closed)
            self._connecting = self._connect(proto).addCallback(
                self._ready).addCallbacks(self._connected, self._failed)
        return d

    def _connected(self, proto):
        self._connecting = None
        if self._shut:      # closed while connecting: this link never serves
            self._failed(Failure(ConnectionLost("the memory server client is closed")))
            return proto.close()
        self._proto = proto
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(proto)

    def _failed(self, failure):
        self._connecting = None
        waiters, self._waiters = self._waiters, []
        err = failure.value if isinstance(failure.value, WireError) else \
            ConnectionLost("cannot reach the memory server: %s" % failure.getErrorMessage())
        for d in waiters:
            d.errback(err)

    def _closed(self, reason):
        self._proto = None

    def request(self, op, fds=(), timed=False, **fields):
        """Deferred[Message]; fails with ``WireError`` or ``ConnectionLost``.
        ``timed``: within ``request_timeout``, or the link is dropped."""
        return self._link().addCallback(
            lambda p: self._timed(p, p.request(op, fds=fds, **fields), timed))

    def _timed(self, proto, d, timed):
        if not (timed and self.request_timeout):
            return d
        # Dropping the link fails every request on it with ConnectionLost.
        expiry = self.reactor.callLater(self.request_timeout, proto.transport.abortConnection)

        def done(result):
            if expiry.active():
                expiry.cancel()
            return result

        return d.addBoth(done)

    def close(self):
        """Deferred that fires once the link is down; no reconnect after."""
        self._shut = True
        if self._connecting is not None:
            done = defer.Deferred()
            self._connecting.addBoth(lambda _: done.callback(None))
            return done
        if self._proto is None:
            return defer.succeed(None)
        return self._proto.close()


@implementer(IMemoryServer)
class MemoryServerClient(_Link):
    """The local memory server, over its Unix socket."""

    def put(self, name, capture):
        # A Xen capture names its paused domain: the server reads it itself.
        where = {"fds": [capture.mem_fd]} if capture.domid is None else {"domid": capture.domid}
        d = self.request("put", name=name, arch=capture.arch, npages=capture.npages,
                         meta=capture.meta,
                         vcpu_state=base64.b64encode(capture.vcpu_state).decode(), **where)
        return d.addCallback(_fields)

    def open(self, image_id):
        return self.request("open", image=image_id).addCallback(self._opened)

    @staticmethod
    def _opened(msg):
        if len(msg.fds) != 1:
            raise ConnectionLost("open reply carried %d fds, not 1" % len(msg.fds))
        return OpenImage(image_id=msg["image_id"], generation=msg["generation"],
                         arch=msg["arch"], vcpu_state=base64.b64decode(msg["vcpu_state"]),
                         npages=msg["npages"], mem_fd=msg.fds[0], zero=msg.payload,
                         meta=msg["meta"], origin=msg.get("origin"),
                         server_domain=msg.get("server_domain"))

    def fetch(self, image_id, pfn, count):
        d = self.request("fetch", timed=True, image=image_id, pfn=pfn, count=count)
        return d.addCallback(lambda m: m.payload)

    def mirror(self, name, described, server, crcs):
        """Know ``server``'s image (``RemotePageSource.describe``, its CRC
        table as bytes) here as ``name``."""
        fields, zero = dict(described[0]), described[1]
        vcpu = fields.pop("vcpu_state", None)     # the server refuses a missing one
        table = os.memfd_create("xenclone-crcs", os.MFD_CLOEXEC)
        try:
            view = memoryview(crcs)
            while view:
                view = view[os.write(table, view):]
        except BaseException:
            os.close(table)
            raise
        d = self.request("mirror", payload=zero, fds=[table], name=name, info=fields,
                         vcpu_state=vcpu, server=server)
        return d.addBoth(_closing, table).addCallback(_fields)

    def crcs(self, image_id, first, count):
        return self.request("crcs", image=image_id, first=first, count=count).addCallback(
            lambda m: m.payload)

    def discard(self, image_id):
        return self.request("discard", image=image_id).addCallback(lambda m: None)

    def images(self):
        return self.request("images").addCallback(lambda m: m["images"])

    def info(self, image_id):
        return self.request("info", image=image_id).addCallback(_fields)

    def ping(self):
        return self.request("ping").addCallback(_fields)

    def domain(self, action, force=False):
        """The memory-server domain: status, start or stop."""
        return self.request("domain", action=action, force=force).addCallback(_fields)


class RemotePageSource(_Link):
    """Pages of a remote memory server, over TLS with an access token.

    ``ca_cert`` is the PEM (bytes) of the CA that signed the server's
    certificate; ``server_name`` is the name or address the certificate
    must carry (default ``host``).
    """

    def __init__(self, reactor, host, port, token, ca_cert, server_name=None,
                 request_timeout=None):
        trust = ssl.Certificate.loadPEM(ca_cert)
        options = ssl.optionsForClientTLS(server_name or host, trustRoot=trust)
        # A cut link drops SYNs silently: a connect gives up as a request does.
        endpoint = SSL4ClientEndpoint(reactor, host, port, options,
                                      timeout=request_timeout or 30)
        super().__init__(reactor, endpoint, request_timeout)
        self.token = token
        self.address = "%s:%d" % (host, port)

    def _ready(self, proto):
        def refused(failure):
            proto.transport.loseConnection()
            return failure
        return proto.request("hello", token=self.token).addCallbacks(lambda m: proto, refused)

    def fetch(self, image_id, pfn, count, generation=None):
        """Pages of the image; ``generation``: refused if it changed."""
        extra = {} if generation is None else {"generation": generation}
        d = self.request("fetch", timed=True, image=image_id, pfn=pfn, count=count, **extra)
        return d.addCallback(lambda m: m.payload)

    def crcs(self, image_id, first, count):
        """Part of the image's CRC table, as the origin wrote it at bless."""
        return self.request("crcs", timed=True, image=image_id, first=first,
                            count=count).addCallback(lambda m: m.payload)

    def describe(self, image_id):
        """Deferred[(fields with vcpu_state, zero map)]: enough to mirror it."""
        return self.request("describe", timed=True, image=image_id).addCallback(
            lambda m: (_fields(m), m.payload))

    def images(self):
        return self.request("images").addCallback(lambda m: m["images"])

    def info(self, image_id):
        return self.request("info", image=image_id).addCallback(_fields)
