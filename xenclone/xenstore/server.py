"""The embedded XenStore server: the real wire protocol over Unix sockets.

Connections to the listening socket are dom0 (privileged), as with
xenstored's socket.  A guest's connection is checked against its domid on
every request; it is made one of two ways:

* ``connection_for_domain(domid)``: a socketpair, for a VMM in this process;
* with a ``domain_dir``, INTRODUCE of a domain opens ``<domain_dir>/<domid>``
  (mode 0600) and RELEASE closes it: the stand-in for the ring page that
  xenstored maps on INTRODUCE.  A VMM in another process connects there and
  relays its guest's traffic; whoever connects is that domain.
"""

import errno
import os
import socket

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from xenclone.xenstore.tree import Caller, Store, domain_path
from xenclone.xenstore.wire import (
    PAYLOAD_MAX, Message, Op, ProtocolError, XenStoreError, parse_strings, split_messages,
    split_value, strings)

log = Logger(namespace="xenclone.xenstore.server")

OK = b"OK\0"


def _domid(text):
    if not text.isdigit():
        raise XenStoreError("EINVAL", "bad domid %r" % text)
    return int(text)


def _children_part(gen, children, offset):
    """DIRECTORY_PART reply: whole names from ``offset`` as fit; a final
    extra nul tells the client the list is complete."""
    head = strings(str(gen))
    listing = strings(*children)
    room = PAYLOAD_MAX - len(head) - 1
    chunk = listing[offset:]
    if len(chunk) <= room:
        return head + chunk + b"\0"
    cut = chunk.rfind(b"\0", 0, room) + 1
    if not cut:
        raise XenStoreError("E2BIG", "child name too long")
    return head + chunk[:cut]


class XenStoreProtocol(Protocol):
    """One connection, as one domain."""

    def __init__(self, server, domid):
        self.server = server
        self.caller = Caller(domid, self._deliver)
        self.lost = defer.Deferred()
        self._buffer = b""
        self._held = None
        self._closed = False

    @property
    def store(self):
        return self.server.store

    def connectionMade(self):
        self.server.connections.add(self)
        log.debug("dom{domid} connected", domid=self.caller.domid)

    def connectionLost(self, reason):
        self._closed = True
        self.store.reset(self.caller)
        self.server.connections.discard(self)
        log.debug("dom{domid} disconnected", domid=self.caller.domid)
        self.lost.callback(None)

    def dataReceived(self, data):
        self._buffer += data
        try:
            messages, self._buffer = split_messages(self._buffer)
        except ProtocolError as e:
            log.warn("dropping dom{domid} connection: {error}", domid=self.caller.domid, error=e)
            self._closed = True
            self.transport.abortConnection()
            return
        for msg in messages:
            if self._closed:
                return
            self._handle(msg)

    def _handle(self, msg):
        # Hold watch events (the registration's own, say) until the reply is out.
        self._held = []
        try:
            handler = self._handlers.get(msg.type)
            if handler is None:
                raise XenStoreError("EINVAL", "unknown message type %d" % msg.type)
            reply = msg.reply(handler(self, msg)).encode()
        except XenStoreError as e:
            log.debug("dom{domid} {msg!r}: {code}", domid=self.caller.domid, msg=msg, code=e.code)
            reply = msg.error(e.code).encode()
        except Exception:
            log.failure("dom{domid} {msg!r}", domid=self.caller.domid, msg=msg)
            reply = msg.error("EIO").encode()
        held, self._held = self._held, None
        self.transport.write(reply)
        for event in held:
            self.transport.write(event)

    def _deliver(self, path, token):
        event = Message(Op.WATCH_EVENT, 0, 0, strings(path, token)).encode()
        if self._held is not None:
            self._held.append(event)
        elif not self._closed:
            self.transport.write(event)

    # -- requests ----------------------------------------------------------

    def _path(self, msg):
        return parse_strings(msg.payload, 1)[0]

    def do_read(self, msg):
        return self.store.read(self.caller, self._path(msg), msg.tx_id)

    def do_write(self, msg):
        path, value = split_value(msg.payload)
        self.store.write(self.caller, path, value, msg.tx_id)
        return OK

    def do_mkdir(self, msg):
        self.store.mkdir(self.caller, self._path(msg), msg.tx_id)
        return OK

    def do_rm(self, msg):
        self.store.rm(self.caller, self._path(msg), msg.tx_id)
        return OK

    def do_directory(self, msg):
        reply = strings(*self.store.directory(self.caller, self._path(msg), msg.tx_id))
        if len(reply) > PAYLOAD_MAX:
            raise XenStoreError("E2BIG")      # clients then use DIRECTORY_PART
        return reply

    def do_directory_part(self, msg):
        path, offset = parse_strings(msg.payload, 2)
        gen, children = self.store.directory_part(self.caller, path, msg.tx_id)
        return _children_part(gen, children, _domid(offset))

    def do_get_perms(self, msg):
        return strings(*self.store.get_perms(self.caller, self._path(msg), msg.tx_id))

    def do_set_perms(self, msg):
        args = parse_strings(msg.payload)
        if not args:
            raise XenStoreError("EINVAL")
        self.store.set_perms(self.caller, args[0], args[1:], msg.tx_id)
        return OK

    def do_watch(self, msg):
        self.store.watch(self.caller, *parse_strings(msg.payload, 2))
        return OK

    def do_unwatch(self, msg):
        self.store.unwatch(self.caller, *parse_strings(msg.payload, 2))
        return OK

    def do_reset_watches(self, msg):
        self.store.reset(self.caller)
        return OK

    def do_transaction_start(self, msg):
        if msg.tx_id:
            raise XenStoreError("EBUSY")
        return strings(str(self.store.begin(self.caller)))

    def do_transaction_end(self, msg):
        arg = self._path(msg)
        if arg not in ("T", "F"):
            raise XenStoreError("EINVAL")
        self.store.end(self.caller, msg.tx_id, arg == "T")
        return OK

    def do_introduce(self, msg):
        domid = _domid(parse_strings(msg.payload, 3)[0])   # no ring here: mfn, evtchn unused
        self.store.introduce(self.caller, domid)
        self.server.open_domain(domid)
        return OK

    def do_release(self, msg):
        domid = _domid(self._path(msg))
        self.store.release(self.caller, domid)
        self.server.disconnect_domain(domid)
        return OK

    def do_resume(self, msg):
        self.store.resume(self.caller, _domid(self._path(msg)))
        return OK

    def do_set_target(self, msg):
        domid, target = parse_strings(msg.payload, 2)
        self.store.set_target(self.caller, _domid(domid), _domid(target))
        return OK

    def do_get_domain_path(self, msg):
        return strings(domain_path(_domid(self._path(msg))))

    def do_is_domain_introduced(self, msg):
        return b"T\0" if self.store.is_introduced(_domid(self._path(msg))) else b"F\0"

    def do_unsupported(self, msg):
        raise XenStoreError("ENOSYS")

    _handlers = {
        Op.READ: do_read, Op.WRITE: do_write, Op.MKDIR: do_mkdir, Op.RM: do_rm,
        Op.DIRECTORY: do_directory, Op.DIRECTORY_PART: do_directory_part,
        Op.GET_PERMS: do_get_perms, Op.SET_PERMS: do_set_perms,
        Op.WATCH: do_watch, Op.UNWATCH: do_unwatch, Op.RESET_WATCHES: do_reset_watches,
        Op.TRANSACTION_START: do_transaction_start, Op.TRANSACTION_END: do_transaction_end,
        Op.INTRODUCE: do_introduce, Op.RELEASE: do_release, Op.RESUME: do_resume,
        Op.SET_TARGET: do_set_target, Op.GET_DOMAIN_PATH: do_get_domain_path,
        Op.IS_DOMAIN_INTRODUCED: do_is_domain_introduced,
        Op.DEBUG: do_unsupported, Op.RESTRICT: do_unsupported,
    }


class _DomainFactory(Factory):
    noisy = False

    def __init__(self, server, domid):
        self.server, self.domid = server, domid

    def buildProtocol(self, addr):
        return XenStoreProtocol(self.server, self.domid)


def _remove_stale_socket(path):
    """A socket file nobody listens on is left over from a dead server."""
    if not os.path.exists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as e:
        if e.errno == errno.ECONNREFUSED:
            os.unlink(path)
    finally:
        probe.close()


class XenStoreServer(Service):
    """The embedded xenstored: ``listen()`` / ``stop()``, or run as a service."""

    def __init__(self, reactor, path, store=None, domain_dir=None):
        self.reactor = reactor
        self.path = path
        self.store = store if store is not None else Store()
        self.domain_dir = domain_dir
        self.connections = set()
        self._port = None
        self._domain_ports = {}     # domid -> its listening port under domain_dir

    def listen(self):
        _remove_stale_socket(self.path)
        self._port = self.reactor.listenUNIX(self.path, _DomainFactory(self, 0), mode=0o600)
        log.info("XenStore listening on {path}", path=self.path)
        return self._port

    def connection_for_domain(self, domid):
        """A connected socket whose requests the server treats as ``domid``'s.

        The caller (a VMM) owns the returned socket and relays its guest's
        XenStore messages over it.
        """
        if not 0 < domid <= 0xFFFF:
            raise ValueError("guest domid out of range: %r" % (domid,))
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.reactor.adoptStreamConnection(ours.fileno(), socket.AF_UNIX,
                                               _DomainFactory(self, domid))
        finally:
            ours.close()    # the reactor holds its own duplicate
        return theirs

    def open_domain(self, domid):
        """Listen on ``<domain_dir>/<domid>`` (again introduced: same port)."""
        if self.domain_dir is None or domid in self._domain_ports:
            return
        os.makedirs(self.domain_dir, mode=0o700, exist_ok=True)
        path = os.path.join(self.domain_dir, str(domid))
        _remove_stale_socket(path)
        self._domain_ports[domid] = self.reactor.listenUNIX(path, _DomainFactory(self, domid),
                                                             mode=0o600)

    def disconnect_domain(self, domid):
        port = self._domain_ports.pop(domid, None)
        if port is not None:
            port.stopListening()
        for conn in list(self.connections):
            if conn.caller.domid == domid:
                conn.transport.loseConnection()

    def stop(self):
        """Stop listening and close every connection; fires when all are gone."""
        waits = [conn.lost for conn in self.connections]
        for conn in list(self.connections):
            conn.transport.loseConnection()
        ports = list(self._domain_ports.values())
        self._domain_ports.clear()
        if self._port is not None:
            ports.append(self._port)
            self._port = None
        waits += [defer.maybeDeferred(port.stopListening) for port in ports]
        return defer.DeferredList(waits)

    def startService(self):
        Service.startService(self)
        self.listen()

    def stopService(self):
        Service.stopService(self)
        return self.stop()
