"""What fuzzing the servers found, each pinned by a test of its own."""

import json
import os
import struct
import types

from twisted.internet import defer, task
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from xenclone.control.controller import Controller
from xenclone.control.records import Domain
from xenclone.names import check_name
from xenclone.memserver.remote_link import RemoteFactory
from xenclone.memserver.server import LocalHandler
from xenclone.memserver.store import ImageStore
from xenclone.wire import FrameProtocol, Message, WireError, encode, takes_fds


def _replies(transport):
    data, out = transport.value(), []
    while data:
        hlen, plen = struct.unpack_from("!II", data)
        out.append(json.loads(data[8:8 + hlen]))
        data = data[8 + hlen + plen:]
    return out


def _closed(fd):
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


class FdHandler:
    def op_plain(self, msg):
        return {}

    @takes_fds
    def op_keep(self, msg):
        self.kept = msg.fds
        return {}


class WireFindings(unittest.TestCase):
    def setUp(self):
        self.handler = FdHandler()
        self.proto = FrameProtocol(self.handler)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)

    def test_deeply_nested_header_is_malformed(self):
        """json.loads raises RecursionError, which used to escape
        dataReceived: the link was cut without a word."""
        head = b"[" * 100000 + b"]" * 100000
        self.proto.dataReceived(struct.pack("!II", len(head), 0) + head)
        self.assertEqual(_replies(self.transport)[0]["code"], "malformed")
        self.assertTrue(self.transport.disconnecting)

    def test_fds_to_an_op_that_takes_none_are_closed(self):
        """They used to stay open in the server for good."""
        r, w = os.pipe()
        self.addCleanup(os.close, w)
        self.proto.fileDescriptorReceived(r)
        self.proto.dataReceived(encode({"id": 1, "op": "plain", "nfds": 1}))
        self.assertEqual(_replies(self.transport)[0]["code"], "bad-request")
        self.assertTrue(_closed(r))

    def test_an_op_that_takes_fds_gets_them(self):
        r, w = os.pipe()
        self.addCleanup(os.close, w)
        self.addCleanup(os.close, r)
        self.proto.fileDescriptorReceived(r)
        self.proto.dataReceived(encode({"id": 1, "op": "keep", "nfds": 1}))
        self.assertTrue(_replies(self.transport)[0]["ok"])
        self.assertEqual(self.handler.kept, [r])


class MemoryServerFindings(unittest.TestCase):
    def setUp(self):
        self.store = ImageStore(self.mktemp())
        self.addCleanup(self.store.close)

    def test_put_with_non_ascii_vcpu_state_is_a_bad_request(self):
        """base64 raised ValueError, not binascii.Error: 'internal'."""
        fd = os.memfd_create("t")
        d = LocalHandler(None, self.store).op_put(Message(
            {"vcpu_state": "\u00e9", "arch": "a", "npages": 1, "name": "x"}, fds=[fd]))
        self.assertEqual(self.failureResultOf(d, WireError).value.code, "bad-request")
        self.assertTrue(_closed(fd))

    def remote(self, *requests):
        """The replies of a TLS link that sent ``requests`` in one read."""
        clock = task.Clock()
        proto = RemoteFactory(clock, self.store, b"t" * 16).buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(b"".join(encode(dict(r, id=i)) for i, r in enumerate(requests)))
        clock.advance(0)
        self.assertTrue(transport.disconnecting)
        return [(r["ok"], r.get("code")) for r in _replies(transport)]

    def test_hello_with_a_lone_surrogate_is_a_bad_token(self):
        """encode() raised: an internal error, and the link stayed open."""
        self.assertEqual(self.remote({"op": "hello", "token": "t\udcff"}),
                         [(False, "bad-token")])

    def test_nothing_after_a_refused_hello(self):
        """A second hello in the same read used to get in (and to fail
        cancelling the cancelled timer) before the link was dropped; now
        nothing after the refusal is answered at all."""
        self.assertEqual(self.remote({"op": "hello", "token": "wrong"},
                                     {"op": "hello", "token": "t" * 16},
                                     {"op": "images"}),
                         [(False, "bad-token")])


class ControllerFindings(unittest.TestCase):
    def setUp(self):
        # Argument checks only: nothing reaches a backend, pager or host.
        self.controller = Controller(None, None, None, types.SimpleNamespace(), None)
        self.controller.domains[1] = Domain(1, "m", "master", 16, params={"seed": 1})

    def test_only_ascii_digits_and_ints_name_a_domid(self):
        """true was domain 1 (destroy true destroyed it); '²' raised."""
        for ref in (True, "\u00b2", "\u0661"):
            e = self.assertRaises(WireError, self.controller._domain, ref)
            self.assertEqual(e.code, "no-domain", ref)
        self.assertEqual(self.controller._domain("01").domid, 1)

    def test_image_must_be_a_name(self):
        """launch with a list raised TypeError; image_check with none
        checked the master as if it were a clone; discard with none and
        force destroyed every master."""
        for op in ("launch", "image_check", "isolation_check", "discard"):
            for image in ([], None):
                d = defer.maybeDeferred(getattr(self.controller, "op_" + op),
                                        {"image": image, "force": True})
                f = self.failureResultOf(d)
                self.assertEqual(getattr(f.value, "code", f.value), "bad-argument", (op, image))
        self.assertEqual(list(self.controller.domains), [1])

    def test_a_name_ends_without_a_newline(self):
        """'$' matched before a trailing newline: 'img\\n' was a name."""
        self.assertRaises(ValueError, check_name, "img\n")
        self.assertEqual(check_name("img"), "img")
