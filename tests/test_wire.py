import json
import struct

from twisted.internet import defer
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from xenclone.wire import ConnectionLost, FrameProtocol, Reply, WireError, encode


class Handler:
    def op_echo(self, msg):
        return Reply({"echo": msg["value"]}, payload=msg.payload)

    def op_fail(self, msg):
        raise WireError("nope", "it failed")

    def op_later(self, msg):
        self.later = defer.Deferred()
        return self.later


def _frames(data):
    out = []
    while data:
        h, p = struct.unpack_from("!II", data)
        out.append((json.loads(data[8:8 + h]), data[8 + h:8 + h + p]))
        data = data[8 + h + p:]
    return out


class WireTests(unittest.TestCase):
    def setUp(self):
        self.handler = Handler()
        self.proto = FrameProtocol(handler=self.handler)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)

    def test_request_reply_with_payload(self):
        self.proto.dataReceived(encode({"id": 1, "op": "echo", "value": 7}, b"xyz"))
        [(fields, payload)] = _frames(self.transport.value())
        self.assertEqual((fields["id"], fields["ok"], fields["echo"], payload), (1, True, 7, b"xyz"))

    def test_frames_split_across_reads(self):
        data = encode({"id": 1, "op": "echo", "value": 1}) + encode({"id": 2, "op": "echo", "value": 2})
        for i in range(len(data)):
            self.proto.dataReceived(data[i:i + 1])
        self.assertEqual([f["echo"] for f, _ in _frames(self.transport.value())], [1, 2])

    def test_errors_and_unknown_ops_are_replies(self):
        self.proto.dataReceived(encode({"id": 1, "op": "fail"}) + encode({"id": 2, "op": "__class__"}))
        replies = [f for f, _ in _frames(self.transport.value())]
        self.assertEqual([(r["ok"], r["code"]) for r in replies], [(False, "nope"), (False, "unknown-op")])
        self.assertFalse(self.transport.disconnecting)

    def test_oversized_frame_closes_the_link(self):
        self.proto.dataReceived(struct.pack("!II", 1 << 30, 0))
        [(fields, _)] = _frames(self.transport.value())
        self.assertEqual(fields["code"], "too-large")
        self.assertTrue(self.transport.disconnecting)

    def test_malformed_json_closes_the_link(self):
        self.proto.dataReceived(struct.pack("!II", 3, 0) + b"{x]")
        self.assertEqual(_frames(self.transport.value())[0][0]["code"], "malformed")
        self.assertTrue(self.transport.disconnecting)

    def test_frame_claiming_missing_fds_is_malformed(self):
        self.proto.dataReceived(encode({"id": 1, "op": "echo", "value": 1, "nfds": 2}))
        self.assertTrue(self.transport.disconnecting)

    def test_client_side_reply_and_remote_error(self):
        d1 = self.proto.request("a")
        d2 = self.proto.request("b")
        self.proto.dataReceived(encode({"id": 1, "ok": True, "x": 1}))
        self.proto.dataReceived(encode({"id": 2, "ok": False, "code": "no-domain", "error": "unknown domain 'x'"}))
        self.assertEqual(self.successResultOf(d1)["x"], 1)
        f = self.failureResultOf(d2, WireError)
        self.assertEqual((f.value.code, str(f.value)), ("no-domain", "unknown domain 'x'"))

    def test_pending_requests_fail_when_the_link_drops(self):
        d = self.proto.request("a")
        self.proto.connectionLost(None)
        self.failureResultOf(d, ConnectionLost)

    def test_late_reply_after_disconnect_is_dropped(self):
        self.proto.dataReceived(encode({"id": 1, "op": "later"}))
        self.transport.loseConnection()
        self.proto.connectionLost(None)
        self.handler.later.callback({"x": 1})
        self.assertEqual(self.transport.value(), b"")
