"""A guest's side of the micro-VM XenStore channel, for tests.

It does what guest code does: speak the XenStore wire protocol one byte at
a time through the VMM's port channel (``XenStorePort``, the VMM host's own
class), over the socket the embedded server opened for that domain.  So
every request is checked as the guest's, not dom0's.  Blocking: run it in
a thread.
"""

import json
import time

from xenclone.backends.kvm.xenstore_port import NO_CHANNEL, PORT_XS_DATA, PORT_XS_STATUS, XenStorePort
from xenclone.xenstore.wire import HEADER, Message, Op, XenStoreError, error_code, strings


class GuestXenStore:
    def __init__(self, domain_dir, domid, timeout=10.0):
        self.port = XenStorePort(domain_dir, domid)
        self.timeout = timeout
        self.req = 0

    def close(self):
        self.port.close()

    def call(self, op, payload):
        self.req += 1
        for byte in Message(op, self.req, 0, payload).encode():
            self.port.io_out(PORT_XS_DATA, byte)
        while True:
            type_, req, _, length = HEADER.unpack(self._take(HEADER.size))
            body = self._take(length)
            if type_ == Op.WATCH_EVENT:
                continue
            assert req == self.req, (req, self.req)
            if type_ == Op.ERROR:
                raise XenStoreError(error_code(body))
            return body

    def _take(self, n):
        out = bytearray()
        deadline = time.monotonic() + self.timeout
        while len(out) < n:
            value = self.port.io_in(PORT_XS_DATA)
            if value:
                out.append(value & 0xFF)
                continue
            if self.port.io_in(PORT_XS_STATUS) & NO_CHANNEL:
                raise XenStoreError("ENOTCONN", "no XenStore channel")
            if time.monotonic() > deadline:
                raise TimeoutError("no reply from XenStore")
            time.sleep(0.001)
        return bytes(out)

    def read(self, path):
        return self.call(Op.READ, strings(path))

    def write(self, path, value):
        return self.call(Op.WRITE, path.encode() + b"\0" + value)

    def directory(self, path):
        return self.call(Op.DIRECTORY, strings(path))

    def error(self, fn, *args):
        """The error code of a call that must fail."""
        try:
            fn(*args)
        except XenStoreError as e:
            return e.code
        raise AssertionError("%s%r succeeded" % (fn.__name__, args))

    def ask(self, raw, token=None, timeout=60.0):
        """Write ``raw`` as our request; poll for the answer to it: the next
        answer, or the one with id ``token``."""
        before = self._answer()
        self.write("xenclone/request", raw)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = self._answer()
            if answer.get("seq", 0) != before.get("seq", 0) and token in (None, answer["id"]):
                return answer
            time.sleep(0.02)
        raise TimeoutError("no answer to %r" % raw[:64])

    def _answer(self):
        raw = self.read("xenclone/response")
        return json.loads(raw) if raw else {}
