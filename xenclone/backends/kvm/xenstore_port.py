"""A micro-VM's XenStore channel: port I/O relayed to the XenStore server.

KVM micro-VMs have no xenbus ring, so the guest speaks the XenStore wire
protocol byte by byte through two I/O ports, and its VMM relays the bytes
unchanged over a socket on which the server knows the guest's domid (the
server's ``<domain_dir>/<domid>``, opened when the toolstack introduces the
domain).  The VMM never parses or names paths: the server checks every
request against the domid, as xenstored does for a ring.

Guest ABI (32-bit port I/O):

    OUT XS_DATA  b    send byte b (the low 8 bits)
    IN  XS_DATA       0x100 | next reply byte, or 0 when none is waiting
    IN  XS_STATUS     reply bytes waiting; bit 31 set: no channel (the domain
                      is not introduced, or the server dropped the connection)
    OUT XS_STATUS 0   forget the bytes of an unfinished message and any
                      reply bytes not read: start afresh

A guest starts each request with the reset and sends it again if no reply
comes: a clone starts with a new channel wherever its master was captured,
perhaps halfway through a message or before the reply came.

When the server drops the connection (a malformed message, a restart),
bytes in flight are lost: the channel stays down, and everything the guest
sends is discarded, until the guest has read XS_STATUS once and seen bit 31.
Its next access connects again.  So a guest never waits for a reply to a
request the server never got.

Runs on the vCPU thread: every socket call is non-blocking.
"""

import errno
import os
import socket

from xenclone.xenstore.wire import HEADER, PAYLOAD_MAX

PORT_XS_DATA = 0x20
PORT_XS_STATUS = 0x21
PORTS = (PORT_XS_DATA, PORT_XS_STATUS)
NO_CHANNEL = 1 << 31
_BYTE_READY = 0x100
_MAX_REPLY = 64 * 1024      # read no more until the guest has taken this


class XenStorePort:
    def __init__(self, domain_dir, domid):
        self.path = os.path.join(domain_dir, str(domid))
        self._sock = None
        self._out = bytearray()
        self._in = bytearray()
        self._dropped = False       # the guest has not been told yet

    def io_in(self, port):
        if port == PORT_XS_STATUS and self._dropped:
            self._dropped = False
            return NO_CHANNEL
        if not self._open():
            return NO_CHANNEL if port == PORT_XS_STATUS else 0
        self._receive()
        if port == PORT_XS_STATUS:
            return len(self._in) | (0 if self._sock else NO_CHANNEL)
        if not self._in:
            return 0
        byte = self._in.pop(0)
        return _BYTE_READY | byte

    def io_out(self, port, value):
        if port == PORT_XS_STATUS:
            self._out.clear()
            self._in.clear()
            return
        if port != PORT_XS_DATA or not self._open():
            return
        self._out.append(value & 0xFF)
        # Send whole messages: one syscall per message, not per byte.  A
        # header announcing too much is sent at once: the server then closes.
        if len(self._out) >= HEADER.size:
            length = HEADER.unpack_from(self._out)[3]
            if length > PAYLOAD_MAX or len(self._out) >= HEADER.size + length:
                self._send()

    def close(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _drop(self):
        self.close()
        self._dropped = True

    def _open(self):
        if self._sock is not None:
            return True
        if self._dropped:
            return False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            return False
        self._sock = sock
        self._out.clear()
        self._in.clear()
        return True

    def _send(self):
        data = bytes(self._out)
        self._out.clear()
        try:
            if self._sock.send(data) == len(data):
                return
        except OSError:
            pass
        self._drop()        # gone, or reads nothing

    def _receive(self):
        while self._sock is not None and len(self._in) < _MAX_REPLY:
            try:
                data = self._sock.recv(4096)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                    self._drop()
                return
            if not data:
                self._drop()
                return
            self._in += data
