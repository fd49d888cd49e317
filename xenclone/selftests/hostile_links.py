"""Strangers on a memory server's TLS port, for the tests and the
``hostile-peer`` self-test: what it costs the server, read from the kernel.

Each link completes its TLS handshake and then, by its number, says
nothing, trickles the start of a 4000-byte frame, announces a frame far
over any limit, or floods: announces the biggest frame the wire allows
(1 MiB header, 64 MiB payload) and writes junk for as long as the server
reads, up to 60 MiB.  Plain blocking sockets, run in a
thread: the point is the server's memory, not the client's.
"""

import socket
import ssl
import struct
import time

from xenclone.wire import MAX_HEADER, MAX_PAYLOAD

KINDS = ("silent", "trickle", "huge", "flood")
FLOOD_BYTES = 60 << 20      # the figure: ~60 MiB a link
_CHUNK = 1 << 20


def rss_kib(pid):
    """Resident memory of ``pid`` as the kernel counts it (VmRSS), KiB."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise ValueError("no VmRSS for pid %d" % pid)


def _connect(host, port, ca_file):
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.check_hostname = False
    raw = socket.create_connection((host, port), timeout=5)
    return ctx.wrap_socket(raw, server_hostname=host)


def _misbehave(sock, kind, seconds):
    """Send what this kind of stranger sends; never raises for a close."""
    try:
        if kind == "trickle":
            sock.sendall(struct.pack("!II", 4000, 0) + b'{"op": "hello", "token": "')
        elif kind == "huge":
            sock.sendall(struct.pack("!II", 0xFFFFFFFF, 0xFFFFFFFF) + b"{" * 4096)
        elif kind == "flood":       # the biggest frame the wire ever allowed
            sock.sendall(struct.pack("!II", MAX_HEADER, MAX_PAYLOAD))
            sent, end = 0, time.monotonic() + seconds
            junk = b"\xff" * _CHUNK
            while sent < FLOOD_BYTES and time.monotonic() < end:
                sock.sendall(junk)
                sent += _CHUNK
    except OSError:         # the server closed it: as it should
        pass


def open_links(host, port, ca_file, count, seconds=2.0):
    """``count`` strangers (KINDS in turn), each having done its worst for
    up to ``seconds``; the sockets, still open where the server let them be."""
    socks = []
    for i in range(count):
        try:
            sock = _connect(host, port, ca_file)
        except OSError:     # refused over the caps
            continue
        sock.settimeout(seconds)
        socks.append(sock)
        _misbehave(sock, KINDS[i % len(KINDS)], seconds)
    return socks


def close_links(socks):
    for sock in socks:
        try:
            sock.close()
        except OSError:
            pass
