"""Guest-initiated clones through the guest's own XenStore channel.

The guest side speaks the XenStore wire protocol through the VMM's port
channel (``tests.guest_channel``) over the socket that the embedded server
opened for that domain, so every check here is made against the guest's
domid, never dom0's."""

import json
import os
import time

from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from tests.guest_channel import GuestXenStore
from tests.test_xenstore_plane import PlaneCase
from xenclone.xenstore.plane import guest_socket_dir
from xenclone.xenstore.wire import HEADER, Op, XenStoreError


XSGUEST = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "guest", "build", "xsguest.bin")


def clone_request(count=1, token="t"):
    return json.dumps({"op": "clone", "count": count, "id": token}).encode()


class GuestCase(PlaneCase):
    settings = {"guest_requests": ["gm"], "guest_max_clones": 3, "guest_request_interval_ms": 0}

    @defer.inlineCallbacks
    def master(self, name="gm"):
        created = yield self.s.call("create", config={"name": name, "memory": 16})
        domid = created["domid"]
        yield self.value("/local/domain/%d/xenclone" % domid, b"")   # home made, introduced
        return domid

    def guest(self, domid):
        g = GuestXenStore(guest_socket_dir(self.s.settings), domid)
        self.addCleanup(g.close)
        return g


class GuestRequestTests(GuestCase, unittest.TestCase):
    @defer.inlineCallbacks
    def test_bless_me_and_launch_two(self):
        domid = yield self.master()
        g = self.guest(domid)
        answer = yield threads.deferToThread(g.ask, clone_request(2, "job-1"))
        self.assertEqual((answer["ok"], answer["id"], answer["clone_ids"], answer["image"]),
                         (True, "job-1", [1, 2], "gm-g1"))
        listed = yield self.s.call("list")
        clones = [d for d in listed["domains"] if d["image"] == "gm-g1"]
        self.assertEqual(len(clones), 2)
        # Each clone reads who it is, through its own channel, and nothing of the others.
        for clone_id, dom in enumerate(sorted(clones, key=lambda d: d["domid"]), 1):
            yield self.value("/local/domain/%d/xenclone/clone-id" % dom["domid"],
                             str(clone_id).encode())
            c = self.guest(dom["domid"])

            def look(c=c, other=domid):
                return (c.read("xenclone/clone-id"), c.read("xenclone/image"),
                        c.error(c.read, "/local/domain/%d/xenclone/response" % other),
                        c.error(c.write, "xenclone/request", clone_request()),
                        c.error(c.write, "xenclone/clone-id", b"7"))

            self.assertEqual((yield threads.deferToThread(look)),
                             (str(clone_id).encode(), b"gm-g1", "EACCES", "EACCES", "EACCES"))

    @defer.inlineCallbacks
    def test_hostile_requests_get_clear_errors_and_do_nothing(self):
        domid = yield self.master()
        other = yield self.master("other")          # not allowed to ask
        g = self.guest(domid)
        big = json.dumps({"op": "clone", "id": "x" * 3000}).encode()

        def session():
            codes = [g.ask(raw)["code"] for raw in [
                b"{not json", b"\xff\xfe", b"[1, 2]", b'"clone"', b"9" * 400 + b"[" * 100,
                big, b'{"op": "destroy"}', b'{"op": "clone", "domain": %d}' % other,
                b'{"op": "clone", "count": 99}', b'{"op": "clone", "count": -1}',
                b'{"op": "clone", "count": true}', b'{"op": "clone", "id": "../x"}',
                clone_request(4)]]
            paths = [g.error(g.write, "/local/domain/%d/xenclone/request" % other, clone_request()),
                     g.error(g.read, "/local/domain/%d/xenclone" % other),
                     g.error(g.write, "xenclone/../request", clone_request()),
                     g.error(g.write, "/tool/xenclone/requests/x", b'{"op": "list"}'),
                     g.error(g.read, "/tool/xenclone/host/budget_pages"),
                     g.error(g.directory, "/local/domain"),
                     g.error(g.write, "xenclone/response", b"{}")]
            return codes, paths

        codes, paths = yield threads.deferToThread(session)
        self.assertEqual(codes, ["bad-json", "bad-json", "bad-request", "bad-request", "bad-json",
                                 "too-large", "unknown-op", "bad-request", "quota",
                                 "bad-request", "bad-request", "bad-request", "quota"])
        self.assertEqual(paths, ["EACCES", "EACCES", "EINVAL", "EACCES", "EACCES", "EACCES",
                                 "EACCES"])
        o = self.guest(other)
        self.assertEqual((yield threads.deferToThread(o.error, o.write, "xenclone/request",
                                                      clone_request())), "EACCES")
        self.assertEqual(len((yield self.s.call("list"))["domains"]), 2)   # nothing launched

    @defer.inlineCallbacks
    def test_oversized_message_drops_only_the_guests_channel(self):
        domid = yield self.master()
        g = self.guest(domid)

        def session():
            for byte in HEADER.pack(Op.WRITE, 1, 0, 5000) + b"x" * 64:
                g.port.io_out(0x20, byte)
            dropped = g.error(g.read, "xenclone/request")
            # As a guest does (xsguest.c): no channel yet, ask again.
            for _ in range(50):
                try:
                    return dropped, g.ask(clone_request(1, "after"))["ok"]
                except XenStoreError as e:
                    if e.code != "ENOTCONN":
                        raise
                    time.sleep(0.1)
            return dropped, "no channel again after 5 s"

        self.assertEqual((yield threads.deferToThread(session)), ("ENOTCONN", True))

    @defer.inlineCallbacks
    def test_flood_of_ten_thousand_requests(self):
        domid = yield self.master()
        g = self.guest(domid)

        def flood():
            for i in range(10000):
                g.write("xenclone/request", b'{"op": "clone", "count": 0, "id": "f%d"}' % i)
            return g.ask(clone_request(1, "last"), "last")

        answer = yield threads.deferToThread(flood)
        self.assertEqual((answer["ok"], answer["clone_ids"]), (True, [1]))
        self.assertEqual(len((yield self.s.call("list"))["domains"]), 2)


class RateLimitTests(GuestCase, unittest.TestCase):
    settings = dict(GuestCase.settings, guest_request_interval_ms=3600 * 1000)

    @defer.inlineCallbacks
    def test_one_request_an_interval(self):
        domid = yield self.master()
        g = self.guest(domid)

        def twice():
            return g.ask(clone_request(1, "a")), g.ask(clone_request(1, "b"))

        first, second = yield threads.deferToThread(twice)
        self.assertTrue(first["ok"], first)
        self.assertEqual((second["ok"], second["code"], second["id"]), (False, "rate-limited", "b"))


class KvmGuestTests(GuestCase, unittest.TestCase):
    """A real micro-VM guest (guest/xsguest.c) asks through its I/O ports."""

    settings = dict(GuestCase.settings, guest_kernel=XSGUEST)

    @defer.inlineCallbacks
    def result(self, domain):
        for _ in range(600):
            info = yield self.s.call("info", domain=domain)
            if info["result"] is not None:
                return info
            yield task.deferLater(reactor, 0.1, lambda: None)
        raise AssertionError("%s never reported" % domain)

    @defer.inlineCallbacks
    def test_guest_asks_to_be_cloned_through_its_ports(self):
        yield self.master()
        yield self.s.call("unpause", domain="gm")       # past its bless point: it asks
        master = yield self.result("gm")
        self.assertEqual(master["result"], 1)           # the answer was ok
        [clone] = [d for d in (yield self.s.call("list"))["domains"] if d["image"] == "gm-g1"]
        clone = yield self.result(clone["domid"])
        self.assertEqual(clone["result"], 0x100 + 1)    # it read clone-id 1 through its ports

    @defer.inlineCallbacks
    def test_a_domain_that_may_not_ask_is_refused_by_xenstore(self):
        yield self.master("other")
        yield self.s.call("unpause", domain="other")
        self.assertEqual((yield self.result("other"))["result"], 3)
        self.assertEqual(len((yield self.s.call("list"))["domains"]), 1)
