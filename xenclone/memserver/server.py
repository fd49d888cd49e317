"""The memory server: its operations and sockets, over an image store
(``IImageStore``); ``memserver_process.py`` makes the store and runs it.

The Unix socket (mode 0600) is the local fast path: ``open`` passes the
image's memfd, so clones fault without a round trip.  The TCP port speaks
the same frames over TLS for pagers on other hosts; a connection must say
``hello`` with the access token first and may then only read pages; each
link is bounded (``remote_link.py``).

On Xen the store blesses domains by domid, reading their RAM itself; with
a memory-server domain (``backends/xen/server_domain_store.py``) images
live in that domain's memory rather than in dom0.
"""

import base64
import os

from twisted.internet import defer, ssl, threads
from twisted.internet.endpoints import SSL4ServerEndpoint, UNIXServerEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from xenclone.helper_gate import GatedLink, one_server
from xenclone.image import Capture
from xenclone.memserver.remote_link import LinkLimits, RemoteFactory
from xenclone.memserver.requests import crcs, field, fetch
from xenclone.memserver.store import MAX_PAGES
from xenclone.wire import Reply, WireError, takes_fds

log = Logger(namespace="xenclone.memserver")

FD_GRACE = 10.0         # a discarded memfd may still sit in a queued open reply


class LocalHandler:
    """Every operation, for the trusted local socket."""

    def __init__(self, reactor, store, domain=None):
        self.reactor = reactor
        self.store = store
        self.domain = domain        # a ServerDomainLife, on Xen with a server domain

    def op_ping(self, msg):
        return {"pid": os.getpid()}

    def op_images(self, msg):
        return {"images": self.store.images()}

    def op_info(self, msg):
        return self.store.info(field(msg, "image", str))

    def op_fetch(self, msg):
        return fetch(self.store, msg)

    def op_open(self, msg):
        image = field(msg, "image", str)
        fields = dict(self.store.info(image),
                      vcpu_state=base64.b64encode(self.store.vcpu_state(image)).decode())
        # The store's own fd: it stays open while queued (see FD_GRACE).
        return Reply(fields, self.store.zero_map(image), [self.store.memfd(image)])

    def op_crcs(self, msg):
        return crcs(self.store, msg)

    @takes_fds
    def op_mirror(self, msg):
        """Know a remote server's image here (``describe``'s answer, and its
        CRC table in the one memfd passed)."""
        try:
            info = msg.get("info")
            if not isinstance(info, dict) or len(msg.fds) != 1:
                raise WireError("bad-request", "mirror needs the remote image's info and "
                                "its CRC table in one memfd")
            size = os.fstat(msg.fds[0]).st_size
            if size > 4 * MAX_PAGES:
                raise WireError("bad-request", "a CRC table of %d bytes" % size)
            table = os.pread(msg.fds[0], size, 0)
            return self.store.mirror(field(msg, "name", str), info,
                                     field(msg, "vcpu_state", str), msg.payload,
                                     field(msg, "server", str), table)
        finally:
            for fd in msg.fds:
                os.close(fd)

    @takes_fds
    @defer.inlineCallbacks
    def op_put(self, msg):
        try:
            domid = msg.get("domid")
            if domid is not None and (type(domid) is not int or domid < 1 or msg.fds):
                raise WireError("bad-request", "domid must be a domU's id, with no memfd")
            if domid is None and len(msg.fds) != 1:
                raise WireError("bad-request", "put passes exactly one memfd, or a domid")
            try:
                vcpu = base64.b64decode(field(msg, "vcpu_state", str), validate=True)
            except ValueError:      # binascii.Error, or a str that is not ASCII
                raise WireError("bad-request", "vcpu_state is not base64")
            capture = Capture(arch=field(msg, "arch", str), vcpu_state=vcpu,
                              mem_fd=msg.fds[0] if msg.fds else None,
                              npages=field(msg, "npages", int), meta=msg.get("meta") or {},
                              domid=domid)
            name = field(msg, "name", str)
            # A big image takes seconds to copy: keep the reactor serving.
            info = yield threads.deferToThreadPool(
                self.reactor, self.reactor.getThreadPool(), self.store.put, name, capture)
        finally:
            for fd in msg.fds:
                os.close(fd)
        log.info("blessed {image_id} generation {generation}: {npages} pages, "
                 "{nonzero_pages} non-zero", image_id=info["image_id"],
                 generation=info["generation"], npages=info["npages"],
                 nonzero_pages=info["nonzero_pages"])
        return info

    def op_discard(self, msg):
        image = field(msg, "image", str)
        self.store.discard(image, close=lambda fd: self.reactor.callLater(FD_GRACE, os.close, fd))
        log.info("discarded {image_id}", image_id=image)
        return {}

    def op_domain(self, msg):
        """The memory-server domain: ``action`` status, start or stop
        (``force``: its images go with it)."""
        action = msg.get("action")
        if self.domain is None:
            if action == "status":
                return {"running": False, "memory_mib": 0}
            raise WireError("no-server-domain", "this memory server keeps images in dom0: "
                            "set memserver_domain_mib (on a Xen host) for a server domain")
        if action == "status":
            return self.domain.status()
        if action == "start":
            return self.domain.start().addCallback(self._loaded)
        if action == "stop":
            return self.domain.stop(bool(msg.get("force")))
        raise WireError("bad-request", "action must be status, start or stop")

    def _loaded(self, status):
        """Images of an older server domain are dropped once a new one runs."""
        for name, why in self.store.load_all():
            log.error("image {image_id} not loaded: {why}", image_id=name, why=why)
        return status


class _LocalFactory(Factory):
    noisy = False

    def __init__(self, handler, secret):
        self.handler = handler
        self.secret = secret

    def buildProtocol(self, addr):
        return GatedLink(self.handler, self.secret)


def tls_options(cert_path, key_path):
    with open(cert_path, "rb") as c, open(key_path, "rb") as k:
        pc = ssl.PrivateCertificate.loadPEM(c.read() + k.read())
    return ssl.CertificateOptions(privateKey=pc.privateKey.original, certificate=pc.original,
                                  raiseMinimumTo=ssl.TLSVersion.TLSv1_2)


@defer.inlineCallbacks
def serve(reactor, store, socket_path, tcp=None, token=None, tls=None, domain=None,
          limits=LinkLimits(), secret=None):
    """Listen on the Unix socket (for the daemon that knows ``secret``) and,
    if ``tcp`` is (host, port), on TLS."""
    one_server(socket_path)
    ports = [(yield UNIXServerEndpoint(reactor, socket_path, mode=0o600)
              .listen(_LocalFactory(LocalHandler(reactor, store, domain), secret)))]
    if tcp is not None:
        host, port = tcp
        ports.append((yield SSL4ServerEndpoint(reactor, port, tls, interface=host)
                      .listen(RemoteFactory(reactor, store, token, limits))))
    return ports
