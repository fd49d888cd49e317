"""``xenclone memserver stop``: what the controller does around the memory
server when the memory-server domain goes (fakes; the real domain goes in
the rig's memserver job)."""

import os
import types

from twisted.internet import defer
from twisted.trial import unittest

from tests.fakes import FakeBackend
from xenclone.control.controller import Controller
from xenclone.control.records import Domain
from xenclone.interfaces import DomainState
from xenclone.wire import WireError


class DomainMemoryServer:
    """Just the ``domain`` call, holding images ``held``."""

    def __init__(self, held):
        self.held = list(held)
        self.calls = []

    def domain(self, action, force=False):
        self.calls.append((action, force))
        status = {"running": True, "images": list(self.held)}
        if action == "stop":
            status, self.held = {"running": False, "dropped": self.held}, []
        return defer.succeed(status)


class MemserverStopTests(unittest.TestCase):
    def setUp(self):
        self.backend = FakeBackend()
        self.backend.forgotten = []
        self.backend.forget_image = self.backend.forgotten.append
        self.memserver = DomainMemoryServer(["img"])
        self.pager = types.SimpleNamespace(forgotten=[])
        self.pager.forget_image = self.pager.forgotten.append
        self.controller = Controller(None, self.backend, self.memserver, self.pager, None)
        self.image = types.SimpleNamespace(image_id="img", mem_fd=os.memfd_create("img"))
        self.controller._images["img"] = self.image
        for domid, fill in ((11, "lazy"), (12, "fill-before-run")):
            self.controller.domains[domid] = Domain(domid, "img.%d" % domid, "clone", 16,
                                                    image="img", state=DomainState.RUNNING,
                                                    fill_mode=fill)
            self.backend.states[domid] = "running"

    def test_refused_while_lazy_clones_fault_from_it(self):
        e = self.failureResultOf(self.controller.op_memserver({"action": "stop"}),
                                 WireError).value
        self.assertEqual(e.code, "busy")
        self.assertIn("img.11", str(e))
        self.assertNotIn("img.12", str(e))      # filled before it ran: depends on nothing
        self.assertEqual(self.memserver.calls, [("status", False)])
        self.assertEqual(self.backend.forgotten, [])

    def test_forced_pauses_them_with_a_clear_state_and_forgets_the_images(self):
        result = self.successResultOf(self.controller.op_memserver(
            {"action": "stop", "force": True}))
        self.assertEqual(result["paused"], [11])
        self.assertEqual(self.memserver.calls, [("status", False), ("stop", True)])
        self.assertEqual(self.backend.forgotten, [self.image])
        self.assertEqual(self.backend.states, {11: "paused", 12: "running"})
        self.assertEqual(self.controller.domains[11].state, DomainState.IMAGE_GONE)
        self.assertEqual(self.controller.domains[12].state, DomainState.RUNNING)
        self.assertNotIn("img", self.controller._images)
        self.assertEqual(self.pager.forgotten, [])     # clones still account to it

    def test_unknown_action(self):
        e = self.assertRaises(WireError, self.controller.op_memserver, {"action": "reboot"})
        self.assertEqual(e.code, "bad-argument")
