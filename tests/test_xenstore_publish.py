"""Published state: rate limits on a fake clock, diffs, domain homes, and
republishing after a reconnect; against the embedded server in this process."""

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.test_xenstore_client import Events, settle, until
from tests.xenstore_helpers import Dom, FakeController, embedded_xenstore
from xenclone.interfaces import FIRST_HANDLE
from xenclone.xenstore.publish import DomainHomes, Publisher, flatten
from xenclone.xenstore.server import XenStoreServer
from xenclone.xenstore.tree import Caller

DOM0 = Caller(0)


class PublishCase(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        yield embedded_xenstore(self)
        self.clock = Clock()
        self.controller = FakeController()
        self.homes = DomainHomes(self.client, True, lambda dom: dom.role == "master")
        self.publisher = Publisher(self.clock, self.client, self.controller, self.homes, 1.0)
        self.addCleanup(self.publisher.stop)
        self.client.on_connect.append(self.publisher.forget)

    def read(self, path):
        return self.server.store.read(DOM0, path)

    @defer.inlineCallbacks
    def update(self, seconds=0):
        """Let ``seconds`` of fake time pass, then let the update finish."""
        self.clock.advance(seconds)
        yield until(lambda: self.publisher._running is None)


class RateTests(PublishCase):
    @defer.inlineCallbacks
    def test_at_most_one_update_an_interval(self):
        for _ in range(100):
            self.controller.add(Dom(5, "img.1", clone_id=1))
        yield self.update()
        self.assertEqual(self.controller.calls, ["images"])
        self.controller.domains[5].state = "paused"
        self.publisher.changed()
        yield self.update(0.5)
        self.assertEqual(self.controller.calls, ["images"])          # too soon
        yield self.update(0.5)
        self.assertEqual(self.controller.calls, ["images"] * 2)
        self.assertEqual(self.read("/tool/xenclone/clones/5/state"), b"paused")
        yield self.update(5)
        # One look more (the last update wrote something), then idle: nothing runs.
        self.assertEqual(len(self.controller.calls), 3)
        yield self.update(5)
        self.assertEqual(len(self.controller.calls), 3)

    @defer.inlineCallbacks
    def test_running_clones_are_refreshed_every_interval(self):
        self.controller.add(Dom(5, "img.1", state="running", clone_id=1))
        yield self.update()
        for _ in range(3):
            yield self.update(1.0)
        self.assertEqual(len(self.controller.calls), 4)


    @defer.inlineCallbacks
    def test_figures_that_move_after_a_clone_ended_are_published(self):
        figures = {"faults": 3}
        self.controller.pager.stats = lambda domid: dict(figures)
        self.controller.add(Dom(5, "img.1", state="running", clone_id=1))
        yield self.update()
        self.assertEqual(self.read("/tool/xenclone/clones/5/faults"), b"3")
        figures["faults"] = 100
        self.controller.domains[5].state = "done"
        self.publisher.changed()
        yield self.update(1.0)
        self.assertEqual(self.read("/tool/xenclone/clones/5/state"), b"done")
        figures["faults"] = 120             # the fault path's last batch, after the end
        yield self.update(1.0)
        self.assertEqual(self.read("/tool/xenclone/clones/5/faults"), b"120")
        calls = len(self.controller.calls)
        yield self.update(1.0)              # nothing new: then idle
        yield self.update(5)
        self.assertEqual(len(self.controller.calls), calls + 1)


class TreeTests(PublishCase):
    @defer.inlineCallbacks
    def test_only_changes_are_written(self):
        self.controller.add(Dom(5, "img.1", clone_id=1))
        self.controller.add(Dom(6, "img.2", clone_id=2))
        yield self.update()
        events = Events()
        yield self.client.watch("/tool/xenclone", "t", events)
        yield events.until(1)
        self.controller.domains[6].state = "crashed"
        self.publisher.changed()
        yield self.update(1.0)
        yield settle()
        self.assertEqual(events.seen[1:], [("/tool/xenclone/clones/6/state", "t")])

    @defer.inlineCallbacks
    def test_tree_and_removal(self):
        self.controller.images[0]["image_id"] = "img.v2"
        self.controller.add(Dom(5, "img.1", clone_id=1))
        yield self.update()
        self.assertEqual(self.read("/tool/xenclone/images/img@v2/image_id"), b"img.v2")
        self.assertEqual(self.read("/tool/xenclone/images/img@v2/master"), b"m")
        self.assertEqual(self.read("/tool/xenclone/host/evictions/drop-clean"), b"0")
        self.assertEqual(self.read("/tool/xenclone/clones/5/image"), b"img")
        del self.controller.domains[5]
        self.controller.images = []
        self.publisher.changed()
        yield self.update(1.0)
        self.assertEqual(self.server.store.directory(DOM0, "/tool/xenclone/clones"), [])
        self.assertEqual(self.server.store.directory(DOM0, "/tool/xenclone/images"), [])

    @defer.inlineCallbacks
    def test_first_update_replaces_a_dead_daemons_tree(self):
        self.store.write(DOM0, "/tool/xenclone/clones/99/state", b"running")
        self.store.write(DOM0, "/tool/xenclone/requests/keep", b"{}")
        self.controller.add(Dom(5, "img.1", clone_id=1))
        yield self.update()
        self.assertEqual(self.store.directory(DOM0, "/tool/xenclone/clones"), ["5"])
        self.assertEqual(self.store.directory(DOM0, "/tool/xenclone/requests"), ["keep"])

    def test_flatten(self):
        self.assertEqual(flatten("/a", {"x": 1, "y": None, "z": {"p.q": "s"}, "l": [1]}),
                         {"/a/x": b"1", "/a/y": b"", "/a/z/p_q": b"s"})


class HomeTests(PublishCase):
    @defer.inlineCallbacks
    def test_homes_permissions_and_introduction(self):
        self.controller.add(Dom(5, "img.1", clone_id=1))
        self.controller.add(Dom(3, "m", role="master", image=None))
        yield self.update()
        store = self.server.store
        self.assertEqual(store.get_perms(DOM0, "/local/domain/5"), ["n0", "r5"])
        self.assertEqual(store.get_perms(DOM0, "/local/domain/5/xenclone/clone-id"), ["n0", "r5"])
        self.assertEqual(self.read("/local/domain/5/xenclone/generation"), b"g1")
        self.assertEqual(store.directory(DOM0, "/local/domain/5/xenclone"),
                         ["clone-id", "image", "generation"])
        self.assertEqual(store.directory(DOM0, "/local/domain/3/xenclone"), ["request", "response"])
        self.assertEqual(store.get_perms(DOM0, "/local/domain/3/xenclone/request"), ["n0", "b3"])
        self.assertEqual(store.get_perms(DOM0, "/local/domain/3/xenclone/response"), ["n0", "r3"])
        self.assertTrue(store.is_introduced(5) and store.is_introduced(3))
        del self.controller.domains[5]
        self.publisher.changed()
        yield self.update(1.0)
        self.assertFalse(store.is_introduced(5))
        self.assertEqual(store.directory(DOM0, "/local/domain"), ["3"])

    @defer.inlineCallbacks
    def test_on_xen_a_domain_not_yet_numbered_gets_no_home(self):
        """libxl made the homes; a clone still under the controller's handle
        (launch in progress) has none to write in, and none is made."""
        self.publisher.homes = self.homes = DomainHomes(self.client, False, lambda dom: False)
        self.server.store.write(DOM0, "/local/domain/5/name", b"img.1")
        self.controller.add(Dom(5, "img.1", clone_id=1))
        self.controller.add(Dom(FIRST_HANDLE + 1, "img.2", clone_id=2))
        yield self.update()
        self.assertEqual(self.read("/local/domain/5/xenclone/clone-id"), b"1")
        self.assertEqual(self.server.store.directory(DOM0, "/local/domain"), ["5"])

    @defer.inlineCallbacks
    def test_on_xen_a_gone_domain_gets_no_home_again(self):
        """libxl removed the home of a domain that died before the daemon
        heard of it: the area is not written, which would make the home."""
        self.publisher.homes = self.homes = DomainHomes(self.client, False, lambda dom: False)
        self.server.store.write(DOM0, "/local/domain/5/name", b"img.1")
        self.controller.add(Dom(7, "img.3", clone_id=3))
        yield self.update()
        self.assertEqual(self.server.store.directory(DOM0, "/local/domain"), ["5"])

    @defer.inlineCallbacks
    def test_everything_again_after_a_reconnect(self):
        self.controller.add(Dom(5, "img.1", clone_id=1))
        yield self.update()
        yield self.server.stop()
        yield until(lambda: not self.client.connected)
        self.server = XenStoreServer(reactor, self.server.path)    # a new xenstored: empty
        self.server.listen()
        yield until(lambda: self.client.connected)
        yield self.update(1.0)
        self.assertEqual(self.read("/tool/xenclone/clones/5/state"), b"done")
        self.assertEqual(self.read("/local/domain/5/xenclone/clone-id"), b"1")
        self.assertTrue(self.server.store.is_introduced(5))
