"""Firecracker's adversarial handler test, ours: hostile clones read out of
order, write across page boundaries as fast as they can, and re-fault
pages evicted an instant before (a limit far below what they touch), all
under a host budget that makes every clone evict for the others.  Every
other clone's answer stays right, nothing disagrees with the kernel, and
the hostile clones' own answers are right too: their data never changed."""

from twisted.internet import defer
from twisted.trial import unittest

from tests.test_daemon import PrivateDaemon


class HostileCloneTests(PrivateDaemon, unittest.TestCase):
    @defer.inlineCallbacks
    def test_hostile_clones_harm_no_other(self):
        yield self.s.call("create", config={"name": "m", "memory": 32})
        yield self.s.call("bless", domain="m", name="img")
        yield self.s.call("create", config={"name": "h", "memory": 32, "hostile": 8000})
        yield self.s.call("bless", domain="h", name="himg")
        budget = (yield self.s.call("images"))["images"][0]["nonzero_pages"] // 2
        yield self.s.call("set_host", budget_pages=budget)
        hostile = (yield self.s.call("launch", image="himg", count=2, paused=True))["clones"]
        for c in hostile:
            yield self.s.call("set", domain=c["domid"],
                              knobs={"limit": 64, "evict": ["drop-clean", "page-out"]})
            yield self.s.call("unpause", domain=c["domid"])
        normal = (yield self.s.call("launch", image="img", count=8))["clones"]
        for c in normal + hostile:
            info = yield self.s.call("wait", domain=c["domid"], timeout=300)
            self.assertEqual((info["state"], info["result"]), ("done", info["expected"]), info)
            audit = yield self.s.call("audit", domain=c["domid"])
            self.assertEqual(audit["disagree"], 0, audit)
        for c in hostile:
            info = yield self.s.call("info", domain=c["domid"])
            self.assertGreater(info["evictions"]["page-out"], 0)
            self.assertGreater(info["faults"], 1000)
        iso = yield self.s.call("isolation_check", image="img")
        self.assertTrue(iso["isolated"], iso)
