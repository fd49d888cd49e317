"""A remote memory server that lies, for the ``hostile-peer`` self-test.

It serves copies of real images (an ``ImageStore`` over a directory the
self-test filled) on a TLS port, as a real memory server does, but each
name it is asked for says how it lies about its base image:

    lie-traversal-<base>   describe: a generation and an image name that
                           climb out of any directory they are joined to
    lie-zero-<base>        describe: a zero map one page short
    lie-size-<base>        fetch: every page run 100 bytes short
    lie-corrupt-<base>     fetch: every page with a byte flipped, against
                           the CRC table it described honestly
    lie-huge-<base>        fetch: a frame header announcing 4 GiB

``truth(base, pfn)`` is the honest page, for counting what a daemon kept.
Any ``hello`` is let in: the liar is the remote the daemon chose to trust.
"""

import struct

from twisted.internet.protocol import Factory

from xenclone.memserver.requests import field
from xenclone.memserver.server import tls_options
from xenclone.memserver.store import ImageStore
from xenclone.wire import FrameProtocol, Reply

TRAVERSAL = "../../../outside/x"
KINDS = ("traversal", "zero", "size", "corrupt", "huge")


def _lie(name):
    """(kind, base image) of a name the liar is asked for."""
    for kind in KINDS:
        prefix = "lie-%s-" % kind
        if name.startswith(prefix):
            return kind, name[len(prefix):]
    return None, name


class _Handler:
    def __init__(self, store):
        self.store = store
        self.proto = None

    def op_hello(self, msg):
        return {}

    def op_describe(self, msg):
        name = field(msg, "image", str)
        kind, base = _lie(name)
        fields, zero = self.store.describe(base)
        fields = dict(fields, image_id=name)        # its fetches name the lie again
        if kind == "traversal":
            fields = dict(fields, generation=TRAVERSAL, image_id=TRAVERSAL)
        elif kind == "zero":
            zero = zero[:-1]
        return Reply(fields, zero)

    def op_crcs(self, msg):
        kind, base = _lie(field(msg, "image", str))
        return Reply(payload=self.store.crcs(base, msg.get("first"), msg.get("count")))

    def op_fetch(self, msg):
        kind, base = _lie(field(msg, "image", str))
        data = self.store.fetch(base, msg.get("pfn"), msg.get("count"))
        if kind == "size":
            data = data[:-100]
        elif kind == "corrupt":
            page = bytearray(data)
            for i in range(17, len(page), 4096):
                page[i] ^= 0x5A
            data = bytes(page)
        elif kind == "huge":
            self.proto.transport.write(struct.pack("!II", 0xFFFFFFFF, 0xFFFFFFFF))
            return Reply()
        return Reply(payload=data)


class _Factory(Factory):
    noisy = False

    def __init__(self, store):
        self.store = store

    def buildProtocol(self, addr):
        handler = _Handler(self.store)
        handler.proto = FrameProtocol(handler)
        return handler.proto


class LyingServer:
    def __init__(self, reactor, directory, cert_path, key_path):
        self.reactor = reactor
        self.store = ImageStore(directory)
        self.cert_path, self.key_path = cert_path, key_path
        self.port = None

    def listen(self, port, interface="127.0.0.1"):
        for name, why in self.store.load_all():
            raise ValueError("the liar cannot load %s: %s" % (name, why))
        context = tls_options(self.cert_path, self.key_path)
        self.port = self.reactor.listenSSL(port, _Factory(self.store), context,
                                           interface=interface)
        return self.port

    def truth(self, base, pfn):
        return self.store.fetch(base, pfn, 1)

    def stop(self):
        self.store.close()
        return self.port.stopListening() if self.port is not None else None

