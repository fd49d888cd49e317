"""Links from other hosts to the memory server's TLS port, each bounded.

The memory server holds every image and serves every clone, so a stranger
on its TCP port must cost it next to nothing:

    connect   -> refused at once (before the TLS handshake) when
                 ``max_links`` links or ``max_unauth`` strangers are open
    stranger  -> one frame of at most PREAUTH_FRAME bytes: ``hello`` with
                 the token, within ``hello_timeout`` (a silent or trickling
                 link is dropped then); anything else, and the link goes
    hello ok  -> read-only requests (``fetch``, ``describe``, ``crcs``,
                 ``info``, ``images``): frames of at most MAX_REQUEST header bytes and
                 no payload; the link is its transport's producer, so a peer
                 that leaves replies unread stops being read, and one held
                 so for ``stall_timeout`` is dropped.

So a stranger holds at most a TLS session and 4 KiB, an authenticated link
at most a request frame and about one reply beyond the transport's buffer.
"""

import hmac

import attr
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from xenclone.memserver.requests import crcs, field, fetch
from xenclone.wire import FrameProtocol, Reply, WireError

log = Logger(namespace="xenclone.memserver")

PREAUTH_FRAME = 4096        # bytes, header and all: room for hello and its token
MAX_REQUEST = 64 << 10      # an authenticated peer's request header
UNAUTHENTICATED = "say hello with the access token first"


@attr.s(frozen=True)
class LinkLimits:
    max_links = attr.ib(default=128)
    max_unauth = attr.ib(default=64)
    hello_timeout = attr.ib(default=10.0)     # seconds
    stall_timeout = attr.ib(default=60.0)     # seconds a peer may leave replies unread


class RemoteLink(FrameProtocol):
    """A frame link whose limits follow its peer's standing."""

    max_header = PREAUTH_FRAME - 8
    max_payload = 0

    def __init__(self, handler):
        super().__init__(handler)
        self.stall_timer = None

    def trusted(self):
        self.max_header = MAX_REQUEST

    def _dispatch(self, msg):
        h = self.handler
        if h.authed or (msg.get("op") == "hello" and "ok" not in msg.fields):
            return super()._dispatch(msg)
        if "op" in msg.fields and "ok" not in msg.fields:
            self._send({"id": msg.get("id"), "ok": False, "code": "unauthenticated",
                        "error": UNAUTHENTICATED})
            h.refuse(UNAUTHENTICATED)
        else:                   # a reply or event from a stranger: no request to answer
            h.refused = self.held = True
            self._fatal("unauthenticated", UNAUTHENTICATED)

    def pauseProducing(self):
        super().pauseProducing()
        if self.stall_timer is None:
            h = self.handler
            self.stall_timer = h.reactor.callLater(h.limits.stall_timeout, h.drop,
                                                   "left its replies unread")

    def resumeProducing(self):
        if self.stall_timer is not None and self.stall_timer.active():
            self.stall_timer.cancel()
        self.stall_timer = None
        if not self.handler.refused:
            super().resumeProducing()


class RemoteHandler:
    """One TCP connection's ops, once it said ``hello`` with the token
    (``RemoteLink`` answers a stranger's other frames)."""

    def __init__(self, reactor, store, token, limits, on_trusted=lambda: None):
        self.reactor = reactor
        self.store = store
        self.token = token
        self.limits = limits
        self.on_trusted = on_trusted
        self.proto = None
        self.authed = False
        self.refused = False    # a link being dropped gets nothing more
        self.timer = None

    def attach(self, proto):
        self.proto = proto
        self.timer = self.reactor.callLater(self.limits.hello_timeout, self.drop,
                                            "no hello in time")
        proto.hold_back()

    def closed(self):
        for timer in (self.timer, self.proto.stall_timer):
            if timer is not None and timer.active():
                timer.cancel()

    def drop(self, why, at_once=True):
        """``at_once``: a silent or stalled peer would hold a gentle close
        open as long as it reads nothing; a refused one gets its error."""
        self.refused = True
        log.warn("dropping {peer}: {why}", peer=str(self.proto.transport.getPeer()), why=why)
        if at_once:
            self.proto.transport.abortConnection()
        else:
            self.proto.lose()

    def refuse(self, text):
        """Close once the error reply is queued; nothing more is read."""
        self.refused = True
        self.proto.held = True
        self.reactor.callLater(0, self.drop, text, at_once=False)
        if self.timer.active():
            self.timer.cancel()

    def op_hello(self, msg):
        token = msg.get("token")
        if self.authed:
            return {}
        # surrogatepass: a lone surrogate is a wrong token, not an internal error
        if not isinstance(token, str) or not hmac.compare_digest(
                token.encode("utf-8", "surrogatepass"), self.token):
            self.refuse("access token refused")
            raise WireError("bad-token", "access token refused")
        self.authed = True
        self.timer.cancel()
        self.proto.trusted()
        self.on_trusted()
        return {}

    def op_fetch(self, msg):
        return fetch(self.store, msg)

    def op_images(self, msg):
        return {"images": self.store.images()}

    def op_crcs(self, msg):
        return crcs(self.store, msg)

    def op_describe(self, msg):
        fields, zero = self.store.describe(field(msg, "image", str))
        return Reply(fields, zero)

    def op_info(self, msg):
        return self.store.info(field(msg, "image", str))


class _Refused(Protocol):
    """A link over the caps: gone before its TLS handshake."""

    def connectionMade(self):
        self.transport.abortConnection()


class RemoteFactory(Factory):
    """Builds bounded links, and counts them against the caps."""

    noisy = False

    def __init__(self, reactor, store, token, limits=LinkLimits()):
        self.reactor, self.store, self.token, self.limits = reactor, store, token, limits
        self.links = 0
        self.strangers = 0
        self.refused = 0

    def buildProtocol(self, addr):
        if self.links >= self.limits.max_links or self.strangers >= self.limits.max_unauth:
            self.refused += 1
            if self.refused in (1, 10, 100) or self.refused % 1000 == 0:
                log.warn("refused {n} links over the caps ({links} links, {strangers} not "
                         "authenticated)", n=self.refused, links=self.links,
                         strangers=self.strangers)
            return _Refused()
        self.links += 1
        self.strangers += 1
        handler = RemoteHandler(self.reactor, self.store, self.token, self.limits,
                                on_trusted=self._trusted)
        proto = RemoteLink(handler)
        proto.on_close = lambda reason: self._gone(handler)
        proto.connected_d.addCallback(handler.attach)
        return proto

    def _trusted(self):
        self.strangers -= 1

    def _gone(self, handler):
        self.links -= 1
        if not handler.authed:
            self.strangers -= 1
        handler.closed()
