"""A blocking frame client for fuzzing the real servers, and the oracle it
applies to every case.

The servers run in other processes, so the fuzzer can block: no reactor,
and hypothesis drives plain functions.  ``expect`` reads the bytes a case
sends the way ``xenclone.wire`` must, and says which requests need an
answer and whether (and with which error) the server must close the link;
``settle`` then holds the server to it within ``CASE_SECONDS``.
"""

import itertools
import json
import os
import select
import socket
import ssl
import struct
import time

from xenclone.memserver.remote_link import MAX_REQUEST, PREAUTH_FRAME
from xenclone.wire import MAX_FDS, MAX_HEADER, MAX_PAYLOAD

HEAD = struct.Struct("!II")
CASE_SECONDS = 5.0      # neither an answer nor a close in this long is a hang


class Broken(AssertionError):
    """The server broke the oracle; the message says how."""


class Hang(Broken):
    """The server neither answered nor closed in time."""


def frame(fields, payload=b""):
    head = fields if isinstance(fields, bytes) else json.dumps(fields).encode()
    return HEAD.pack(len(head), len(payload)) + head + payload


def request_key(fields):
    """Replies echo the request's id, whatever JSON it was."""
    return json.dumps(fields.get("id"), sort_keys=True)


def expect(data, nfds, stranger_token=None):
    """(requests, close_code, complete) for ``data`` sent with ``nfds``
    passed fds: the request headers the server must answer, the code of
    the error frame it must close the link with (or None), and whether the
    bytes end at a frame boundary.

    ``stranger_token``: the link is a memory server's TLS link, whose first
    frame must be ``hello`` with this token in at most PREAUTH_FRAME bytes;
    after any other first frame nothing more is answered."""
    if nfds > MAX_FDS:
        return [], "too-many-fds", True
    requests, pos = [], 0
    max_header, max_payload = MAX_HEADER, MAX_PAYLOAD
    stranger = stranger_token is not None
    if stranger:
        max_header, max_payload = PREAUTH_FRAME - HEAD.size, 0
    while len(data) - pos >= HEAD.size:
        hlen, plen = HEAD.unpack_from(data, pos)
        if hlen > max_header or plen > max_payload:
            return requests, "too-large", True
        end = pos + HEAD.size + hlen + plen
        if len(data) < end:
            return requests, None, False
        try:
            fields = json.loads(data[pos + HEAD.size:pos + HEAD.size + hlen])
        except (ValueError, RecursionError):
            return requests, "malformed", True
        want = fields.get("nfds", 0) if isinstance(fields, dict) else None
        if not isinstance(want, int) or not 0 <= want <= nfds:     # a bool counts
            return requests, "malformed", True
        nfds -= want
        is_request = "ok" not in fields and "op" in fields
        if is_request:
            requests.append(fields)
        pos = end
        if stranger:            # its first frame decides
            if not is_request:
                return requests, "unauthenticated", True
            if fields.get("op") != "hello" or fields.get("token") != stranger_token:
                return requests, None, True          # refused: the judge says so
            stranger, max_header = False, MAX_REQUEST
    if stranger and pos == 0:       # it sent no frame: a sentinel would be its first
        return requests, None, False
    return requests, None, pos == len(data)


class Link:
    """One connection; every read is bounded by a deadline."""

    def __init__(self, sock, passes_fds):
        self.sock = sock
        self.passes_fds = passes_fds
        self.buf = bytearray()
        self.fds = []
        self.eof = False

    @classmethod
    def unix(cls, path):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(CASE_SECONDS)
        sock.connect(path)
        return cls(sock, True)

    @classmethod
    def tls(cls, port, ca):
        ctx = ssl.create_default_context(cafile=ca)
        sock = socket.create_connection(("127.0.0.1", port), timeout=CASE_SECONDS)
        try:
            return cls(ctx.wrap_socket(sock, server_hostname="127.0.0.1"), False)
        except socket.timeout:
            sock.close()
            raise Hang("no TLS handshake within %ss" % CASE_SECONDS)

    def close(self):
        for fd in self.fds:
            os.close(fd)
        self.fds = []
        self.sock.close()

    def send(self, data, fds=()):
        """Send (fds ride on the first byte), reading meanwhile: a server
        may answer a long frame before it has all of it.  A peer that has
        closed already is not an error here: what it said is still to read."""
        deadline = time.monotonic() + CASE_SECONDS
        try:
            if fds:
                data = data[socket.send_fds(self.sock, [data[:1]], fds):]
            view = memoryview(data)
            while view and not self.eof:
                readable, writable, _ = select.select(
                    [self.sock], [self.sock], [], max(0, deadline - time.monotonic()))
                if not (readable or writable):
                    raise Hang("the server reads nothing for %ss" % CASE_SECONDS)
                if readable:
                    self._recv(None)
                if writable:
                    self.sock.settimeout(max(0.001, deadline - time.monotonic()))
                    view = view[self.sock.send(view[:1 << 16]):]
        except (BrokenPipeError, ConnectionResetError, ssl.SSLEOFError):
            pass

    def _recv(self, deadline):
        """Read what comes by ``deadline``; with None, only what is there
        (a TLS record may carry no data: a session ticket)."""
        try:
            if deadline is None:
                self.sock.setblocking(False)
            elif deadline <= time.monotonic():
                raise socket.timeout()
            else:
                self.sock.settimeout(deadline - time.monotonic())
            if self.passes_fds:
                data, fds, _, _ = socket.recv_fds(self.sock, 1 << 16, MAX_FDS)
                self.fds += fds
            else:
                data = self.sock.recv(1 << 16)
        except socket.timeout:
            raise Hang("no answer within %ss" % CASE_SECONDS)
        except (BlockingIOError, ssl.SSLWantReadError):
            return
        except (ConnectionResetError, ssl.SSLError):
            data = b""
        if not data:
            self.eof = True
        self.buf += data

    def read(self, deadline):
        """(fields, payload, fds) of the next frame, or None at EOF."""
        while True:
            if len(self.buf) >= HEAD.size:
                hlen, plen = HEAD.unpack_from(self.buf)
                end = HEAD.size + hlen + plen
                if len(self.buf) >= end:
                    fields = json.loads(self.buf[HEAD.size:HEAD.size + hlen])
                    payload = bytes(self.buf[HEAD.size + hlen:end])
                    del self.buf[:end]
                    n = fields.get("nfds", 0)
                    fds, self.fds = self.fds[:n], self.fds[n:]
                    return fields, payload, fds
            if self.eof:
                if self.buf:
                    raise Broken("the server closed the link inside a frame")
                return None
            self._recv(deadline)

    def call(self, op, fds=(), **fields):
        """A well-behaved request: its reply's (fields, payload, fds)."""
        if fds:
            fields["nfds"] = len(fds)
        self.send(frame(dict(fields, id=op, op=op)), fds)
        got = self.read(time.monotonic() + CASE_SECONDS)
        if got is None:
            raise Broken("the server closed a well-behaved link")
        return got


def settle(link, data, requests, close_code, complete, judge):
    """Hold the server to ``expect``'s verdict on ``data``.

    ``judge(request, fields, payload, fds)`` checks one reply and returns
    True when that reply obliges the server to close the link (a refused
    token)."""
    pending, answers = {}, {}
    for fields in requests:
        pending.setdefault(request_key(fields), []).append(fields)
    closing = close_code is not None
    told = False        # a link is never closed without an error saying why
    if not closing and complete:
        sentinel = {"id": "sentinel", "op": "sentinel"}
        pending.setdefault(request_key(sentinel), []).append(sentinel)
        link.send(frame(sentinel))
    deadline = time.monotonic() + CASE_SECONDS
    while pending or closing:
        try:
            got = link.read(deadline)
        except Hang:
            raise Hang("no %s within %ss (%d requests unanswered)" % (
                "close" if closing else "answer", CASE_SECONDS,
                sum(map(len, pending.values()))))
        if got is None:
            for key, replies in answers.items():    # a closed link answers no more
                told = _resolve(pending[key], replies, judge) or told
            if told:
                return
            if closing:
                raise Broken("the link was closed without the %r error" % (close_code,))
            raise Broken("the link was closed with requests unanswered: %r" % (data[:200],))
        fields = got[0]
        if "id" not in fields:
            if fields.get("ok") is not False or fields.get("code") != close_code:
                raise Broken("unexpected link error %r (expected %r)" % (fields, close_code))
            told = True
            continue
        key = request_key(fields)
        replies = answers.setdefault(key, [])
        replies.append(got)
        if len(replies) > len(pending.get(key, ())):
            raise Broken("reply to no request: %r" % (fields,))
        if len(replies) == len(pending[key]):
            if _resolve(pending.pop(key), answers.pop(key), judge):
                closing = told = True


def _resolve(requests, replies, judge):
    """Pair replies with the requests that share their id: async ops
    answer out of order, so some pairing must pass (the first tried is
    the order they were sent in).  True if a reply refuses the link."""
    try:
        first = None
        for order in itertools.permutations(requests, len(replies)):
            try:
                return any([_check(request, *reply, judge)
                            for request, reply in zip(order, replies)])
            except Broken as e:
                first = first or e
        raise first
    finally:
        for reply in replies:
            for fd in reply[2]:
                os.close(fd)


def _check(request, fields, payload, fds, judge):
    if request.get("op") == "sentinel":
        if fields.get("code") != "unknown-op":
            raise Broken("sentinel answered %r" % (fields,))
        return False
    check_error(fields)
    return judge(request, fields, payload, fds)


def check_error(fields):
    """A refusal says why in words, with a code that blames the request."""
    if fields.get("ok") is True:
        return
    if fields.get("ok") is not False or not isinstance(fields.get("error"), str):
        raise Broken("reply is neither a success nor an error: %r" % (fields,))
    code = fields.get("code")
    if not isinstance(code, str) or not code or code == "internal":
        raise Broken("unclear error %r" % (fields,))


def fds(pid):
    """A process's open fds: {fd: what it is}, but for the /proc files the
    daemon reads every second (memory pressure), open for a moment."""
    table = {}
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            table[fd] = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except FileNotFoundError:   # closed while we looked
            pass
    return {fd: what for fd, what in table.items() if not what.startswith("/proc/")}


def fd_leak(pid, before, seconds=3.0):
    """What ``pid`` opened (or closed) since ``before``, once its closed
    links are gone: {fd: what}, empty when the count is as before."""
    end = time.monotonic() + seconds
    now = fds(pid)
    while len(now) != len(before) and time.monotonic() < end:
        time.sleep(0.005)
        now = fds(pid)
    if len(now) == len(before):
        return {}
    return {fd: now.get(fd, before.get(fd)) for fd in set(now) ^ set(before)}
