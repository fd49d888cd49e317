"""The guest-request policy on a fake clock and a fake controller: who may
ask, how often, how many live clones, and the names of the images made."""

from twisted.internet import task
from twisted.trial import unittest

from tests.xenstore_helpers import Dom, FakeController
from xenclone.xenstore.guest import GuestPolicy, GuestRequests


class PolicyTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.controller = FakeController()
        self.controller.add(Dom(3, "gm", role="master", image=None))
        self.controller.add(Dom(4, "other", role="master", image=None))
        self.guests = GuestRequests(self.clock, None, self.controller,
                                    GuestPolicy(["gm"], 3, 10.0))

    def ask(self, domid, raw):
        return self.successResultOf(self.guests._answer(domid, raw))

    def test_rate_quota_and_names(self):
        first = self.ask(3, b'{"op": "clone", "count": 2}')
        self.assertEqual((first["ok"], first["image"], first["clone_ids"], first["seq"]),
                         (True, "gm-g1", [1, 2], 1))
        self.assertEqual(self.ask(3, b'{"op": "clone"}')["code"], "rate-limited")
        self.clock.advance(10)
        for clone_id in (1, 2):                 # its two clones are alive
            self.controller.add(Dom(100 + clone_id, "gm-g1.%d" % clone_id, image="gm-g1"))
        self.assertEqual(self.ask(3, b'{"op": "clone", "count": 2}')["code"], "quota")
        self.controller.images.append({"image_id": "gm-g2"})    # made before a restart
        second = self.ask(3, b'{"op": "clone", "count": 1, "id": "b"}')
        self.assertEqual((second["ok"], second["image"], second["id"], second["seq"]),
                         (True, "gm-g3", "b", 4))

    def test_only_allowed_masters(self):
        self.assertEqual(self.ask(4, b'{"op": "clone"}')["code"], "refused")
        self.controller.add(Dom(5, "gm-g1.1", image="gm-g1"))
        self.assertEqual(self.ask(5, b'{"op": "clone"}')["code"], "refused")
        self.assertEqual(self.controller.calls, [])
