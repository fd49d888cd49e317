"""What the operator set and what guests asked for outlives the daemon:
the store writes whole files atomically, a restarted controller gives each
clone taken back its settings and the host its budget, and a guest's
quota, rate window and images hold across a restart."""

import json
import os
import types

from twisted.internet import defer, task
from twisted.trial import unittest

from tests.xenstore_helpers import Dom, FakeController
from xenclone.control.controller import Controller
from xenclone.control.records import Domain
from xenclone.control.operator_state import OperatorState
from xenclone.wire import WireError
from xenclone.xenstore.guest import GuestPolicy, GuestRequests


class StoreTests(unittest.TestCase):
    def setUp(self):
        self.dir = self.mktemp()
        os.makedirs(self.dir)

    def test_kept_across_a_reload_and_guarded_by_the_name(self):
        kept = OperatorState(self.dir)
        kept.set_clone(7, "web.1", {"limit": 4096, "evict": ["page-out"], "junk": 1})
        kept.set_host_budget(9000)
        kept.set_guest(3, {"last": 12.5, "images": ["gm-g1"], "answers": 2})
        again = OperatorState(self.dir)
        self.assertEqual(again.clone_knobs(7, "web.1"), {"limit": 4096, "evict": ["page-out"]})
        self.assertEqual(again.clone_knobs(7, "other.1"), {})     # another domain got id 7
        self.assertEqual((again.host_budget(), again.guest(3)["images"]), (9000, ["gm-g1"]))
        again.forget_clone(7)
        self.assertEqual(OperatorState(self.dir).clone_knobs(7, "web.1"), {})
        self.assertEqual(sorted(os.listdir(self.dir)), ["operator.json"])   # no temp left

    def test_an_unreadable_file_is_moved_aside(self):
        with open(os.path.join(self.dir, "operator.json"), "w") as f:
            f.write('{"clones": [')
        kept = OperatorState(self.dir)
        self.assertEqual(kept.host_budget(), None)
        self.assertTrue(os.path.exists(os.path.join(self.dir, "operator.json.bad")))
        self.flushLoggedErrors()


class _Pager:
    def __init__(self):
        self.knobs = {}
        self.ledger = types.SimpleNamespace(host_stats=lambda: {"budget_pages": 1},
                                            has_clone=lambda d: True)

    def set_knobs(self, domid, **knobs):
        self.knobs[domid] = knobs

    def evict_to(self, domid, pages):
        return defer.succeed(0)

    def stats(self, domid):
        return {"faults": 0}

    def requests(self, domid):
        return None

    def detach(self, domid):
        pass


class _Host:
    def __init__(self):
        self.ceiling = None

    def set_ceiling(self, pages):
        self.ceiling = pages


class RestoreTests(unittest.TestCase):
    """Set, restart (a new controller on the same state), restored."""

    def controller(self, kept):
        c = Controller(None, types.SimpleNamespace(name="kvm", fill_mode="lazy"), None,
                       _Pager(), _Host(), kept=kept)
        c.domains[5] = Domain(5, "img.1", "clone", 16, image="img", clone_id=1)
        c.domains[6] = Domain(6, "img.2", "clone", 16, image="img", clone_id=2)
        return c

    def test_settings_and_budget_come_back(self):
        state = self.mktemp()
        os.makedirs(state)
        first = self.controller(OperatorState(state))
        self.successResultOf(defer.maybeDeferred(first.op_set, {
            "domain": 5, "knobs": {"limit": 2048, "evict": ["drop-clean", "page-out"]}}))
        first.op_set_host({"budget_pages": 123456})
        # Refused settings are not kept.
        self.assertRaises(WireError, first.op_set, {"domain": 6, "knobs": {"limit": "x"}})

        second = self.controller(OperatorState(state))
        del second.domains[6]               # not taken back
        second.restore_settings()
        self.assertEqual(second.pager.knobs, {5: {"target": None, "limit": 2048,
                                                  "classes": ["drop-clean", "page-out"],
                                                  "share": None}})
        self.assertEqual(second.host_memory.ceiling, 123456)
        with open(os.path.join(state, "operator.json")) as f:
            self.assertEqual(list(json.load(f)["clones"]), ["5"])
        # A clone destroyed takes its settings with it.
        second._forget(second.domains[5])
        self.assertEqual(OperatorState(state).clone_knobs(5, "img.1"), {})


class GuestRestartTests(unittest.TestCase):
    def test_quota_rate_and_images_hold_across_a_restart(self):
        state = self.mktemp()
        os.makedirs(state)
        clock = task.Clock()
        clock.advance(1000)

        def daemon():
            controller = FakeController()
            controller.kept = OperatorState(state)
            controller.add(Dom(3, "gm", role="master", image=None))
            return controller, GuestRequests(clock, None, controller,
                                             GuestPolicy(["gm"], 3, 10.0))

        controller, guests = daemon()
        first = self.successResultOf(guests._answer(3, b'{"op": "clone", "count": 2}'))
        self.assertEqual((first["ok"], first["seq"]), (True, 1))
        # The daemon restarts: its clones live on, taken back.
        controller, guests = daemon()
        for i in (1, 2):
            controller.add(Dom(100 + i, "gm-g1.%d" % i, image="gm-g1"))
        answer = self.successResultOf(guests._answer(3, b'{"op": "clone"}'))
        self.assertEqual((answer["code"], answer["seq"]), ("rate-limited", 2))
        clock.advance(10)
        answer = self.successResultOf(guests._answer(3, b'{"op": "clone", "count": 2}'))
        self.assertEqual(answer["code"], "quota")
        # A master gone while no daemon ran takes its record with it.
        controller = FakeController()
        controller.kept = OperatorState(state)
        GuestRequests(clock, None, controller, GuestPolicy(["gm"], 3, 10.0))
        self.assertEqual(OperatorState(state).guest(3), {})
