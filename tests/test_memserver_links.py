"""The memory server's TLS links, bounded: a stranger gets one small frame
and a few seconds, links and strangers are capped, a peer that leaves its
replies unread is no longer read and then dropped; and on the real server
process, 64 hostile strangers cost it less than 16 MiB (VmRSS)."""

import json
import os
import struct

from twisted.internet import defer, reactor, task, threads
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.trial import unittest

from tests import memserver_helpers as H
from tests.test_memserver import _TLSCase
from xenclone.memserver.remote_link import PREAUTH_FRAME, LinkLimits, RemoteFactory
from xenclone.memserver.store import ImageStore
from xenclone.selftests import hostile_links
from xenclone.wire import encode

TOKEN = b"t" * 16
HELLO = encode({"id": 0, "op": "hello", "token": TOKEN.decode()})


def _replies(transport):
    data, out = transport.value(), []
    while len(data) >= 8:
        hlen, plen = struct.unpack_from("!II", data)
        out.append(json.loads(data[8:8 + hlen]))
        data = data[8 + hlen + plen:]
    return out


class LinkRuleTests(unittest.TestCase):
    def setUp(self):
        self.store = ImageStore(self.mktemp())
        self.addCleanup(self.store.close)
        self.clock = task.Clock()
        self.factory = RemoteFactory(self.clock, self.store, TOKEN,
                                     LinkLimits(max_links=3, max_unauth=2, hello_timeout=10,
                                                stall_timeout=60))

    def connect(self):
        proto = self.factory.buildProtocol(None)
        transport = StringTransportWithDisconnection()
        transport.protocol = proto
        proto.makeConnection(transport)
        return proto, transport

    def test_a_stranger_sends_one_frame_of_at_most_4_kib(self):
        proto, transport = self.connect()
        proto.dataReceived(struct.pack("!II", PREAUTH_FRAME, 0))
        self.assertEqual([r["code"] for r in _replies(transport)], ["too-large"])
        self.assertFalse(transport.connected)
        # Any first frame but hello is refused, and nothing after it is read.
        proto, transport = self.connect()
        proto.dataReceived(encode({"id": 1, "op": "images"}) + HELLO)
        self.clock.advance(0)
        self.assertEqual([r.get("code") for r in _replies(transport)], ["unauthenticated"])
        self.assertFalse(transport.connected)
        # A reply from a stranger is no request: the link goes.
        proto, transport = self.connect()
        proto.dataReceived(encode({"id": 1, "ok": True}))
        self.assertEqual([r.get("code") for r in _replies(transport)], ["unauthenticated"])
        self.assertFalse(transport.connected)

    def test_hello_lets_bigger_requests_in(self):
        proto, transport = self.connect()
        proto.dataReceived(HELLO + encode({"id": 1, "op": "images", "pad": "x" * 8000}))
        self.assertEqual([r["ok"] for r in _replies(transport)], [True, True])
        self.assertTrue(transport.connected)
        # Still no payload: a remote peer only reads.
        proto.dataReceived(struct.pack("!II", 2, 1) + b"{}x")
        self.assertEqual(_replies(transport)[-1]["code"], "too-large")

    def test_silent_and_trickling_strangers_are_dropped_in_time(self):
        silent, t1 = self.connect()
        trickle, t2 = self.connect()
        trickle.dataReceived(HELLO[:20])
        self.clock.advance(9.9)
        self.assertTrue(t1.connected and t2.connected)
        self.clock.advance(0.2)
        self.assertFalse(t1.connected or t2.connected)
        self.assertEqual((self.factory.links, self.factory.strangers), (0, 0))

    def test_links_and_strangers_are_capped(self):
        a, ta = self.connect()
        b, tb = self.connect()
        c, tc = self.connect()          # a third stranger
        self.assertFalse(tc.connected)
        a.dataReceived(HELLO)           # a is no stranger now: room for one more
        d, td = self.connect()
        self.assertTrue(td.connected)
        e, te = self.connect()          # 3 links open: the cap
        self.assertFalse(te.connected)
        self.assertEqual(self.factory.refused, 2)
        tb.loseConnection()
        self.assertEqual((self.factory.links, self.factory.strangers), (2, 1))

    def test_a_peer_that_leaves_replies_unread_is_not_read_then_dropped(self):
        proto, transport = self.connect()
        proto.dataReceived(HELLO)
        transport.producer.pauseProducing()     # its transport's buffer is full
        self.assertEqual(transport.producerState, "paused")
        before = len(_replies(transport))
        proto.dataReceived(encode({"id": 1, "op": "images"}))
        self.assertEqual(len(_replies(transport)), before)      # held, not served
        self.clock.advance(30)
        transport.producer.resumeProducing()    # it read: the request is served
        self.assertEqual(len(_replies(transport)), before + 1)
        transport.producer.pauseProducing()
        self.clock.advance(59)
        self.assertTrue(transport.connected)
        self.clock.advance(2)
        self.assertFalse(transport.connected)


class HostileStrangersTests(_TLSCase):
    """The real memory server process under 64 strangers at once."""

    LINKS = 64
    BUDGET_MIB = 16

    @defer.inlineCallbacks
    def test_64_strangers_cost_less_than_16_mib(self):
        good = self.remote(self.token)
        yield good.fetch("img1", 0, 64)        # the server's own TLS state warmed up
        pid = self.proc.transport.pid
        before = hostile_links.rss_kib(pid)
        socks = yield threads.deferToThread(hostile_links.open_links, "127.0.0.1", self.port,
                                            self.ca, self.LINKS)
        self.addCleanup(hostile_links.close_links, socks)
        yield task.deferLater(reactor, 0.5, lambda: None)
        growth = (hostile_links.rss_kib(pid) - before) / 1024
        self.assertLess(growth, self.BUDGET_MIB, "RSS grew %.1f MiB" % growth)
        # The server still serves its own.
        data = yield good.fetch("img1", 64, 64)
        self.assertEqual(len(data), 64 * 4096)
        self.assertTrue(os.path.exists("/proc/%d" % pid))
