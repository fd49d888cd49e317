"""The balloon service against a fake balloonable backend and a clock:
targets follow the hypervisor's free memory, a failure does not stop it;
and ``set target=`` of a clone that only its balloon can shrink."""

from twisted.internet import defer, task
from twisted.trial import unittest
from zope.interface import implementer

from xenclone.control.balloons import BalloonService
from xenclone.control.controller import Controller
from xenclone.control.records import Domain
from xenclone.interfaces import DomainState, IBalloonBackend
from xenclone.policy.balloon import Balloons
from xenclone.wire import WireError

MIB = 256


class FakeBalloons:
    """Clones whose guests take their target at once, giving their frames
    back to a hypervisor's free pool."""

    def __init__(self, free):
        self.free = free
        self.clones = {}            # domid -> [nominal, ceiling, target]
        self.refuse = set()
        self.calls = []

    def balloonable(self):
        return defer.succeed({d: tuple(v) for d, v in self.clones.items()})

    def balloon(self, domid, pages, operator=False):
        self.calls.append((domid, pages))
        if domid in self.refuse:
            return defer.fail(WireError("no-balloon", "gone"))
        self.free += self.clones[domid][2] - pages
        self.clones[domid][2] = pages
        return defer.succeed(None)


class BalloonServiceTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.backend = FakeBalloons(free=50 * MIB)
        self.backend.clones = {3: [128 * MIB, 128 * MIB, 128 * MIB],
                               4: [128 * MIB, 128 * MIB, 128 * MIB]}
        self.service = BalloonService(self.clock, self.backend,
                                      Balloons(low=64 * MIB, high=96 * MIB, floor_percent=50),
                                      lambda: self.backend.free, interval=2.0)
        self.service.startService()
        self.addCleanup(self.service.stopService)

    def test_pressure_asks_for_the_high_watermarks_lack_then_holds(self):
        self.assertEqual(self.backend.free, 96 * MIB)       # the first tick runs at once
        self.assertEqual(sorted(self.backend.calls), [(3, 105 * MIB), (4, 105 * MIB)])
        self.clock.advance(2)
        self.assertEqual(len(self.backend.calls), 2)         # between the watermarks
        self.assertEqual(self.service.last["targets"], {"3": 105 * MIB, "4": 105 * MIB})

    def test_targets_grow_back_when_memory_is_free_again(self):
        self.backend.free += 200 * MIB                      # another domain went away
        self.clock.advance(2)
        self.assertEqual({d: c[2] for d, c in self.backend.clones.items()},
                         {3: 128 * MIB, 4: 128 * MIB})

    def test_a_refusal_is_logged_and_the_next_tick_goes_on(self):
        self.backend.clones = {3: [128 * MIB, 128 * MIB, 128 * MIB]}
        self.backend.refuse = {3}
        self.backend.free = 10 * MIB
        self.clock.advance(2)
        self.assertEqual(len(self.flushLoggedErrors(WireError)), 1)
        self.backend.refuse = set()
        self.clock.advance(2)
        self.assertEqual(self.backend.clones[3][2], 64 * MIB)   # its floor
        self.assertTrue(self.service._loop.running)


@implementer(IBalloonBackend)
class _Ballooning:
    name, fill_mode = "xen", "fill-before-run"

    def __init__(self, has_driver=True):
        self.has_driver, self.calls = has_driver, []

    def balloonable(self):
        return defer.succeed({})

    def balloon(self, domid, pages, operator=False):
        if not self.has_driver:
            return defer.fail(WireError("no-balloon", "lx.1 has no balloon driver"))
        self.calls.append((domid, pages, operator))
        return defer.succeed(None)


class _Pager:
    def __init__(self):
        self.knobs, self.evicted = [], []

    def set_knobs(self, domid, **knobs):
        self.knobs.append(knobs)

    def evict_to(self, domid, pages):
        self.evicted.append(pages)
        return defer.succeed(0)

    def stats(self, domid):
        return {"faults": 0}

    def requests(self, domid):
        return None


class ControllerTargetTests(unittest.TestCase):
    """``xenclone set CLONE target=N``: a clone the hypervisor cannot page
    is asked through its balloon; a lazy one is evicted as before."""

    def controller(self, backend, fill_mode):
        pager = _Pager()
        c = Controller(None, backend, None, pager, None)
        c.domains[9] = Domain(9, "lx.1", "clone", 128, image="lx", clone_id=1,
                              state=DomainState.RUNNING, fill_mode=fill_mode)
        return c, pager

    def test_filled_clone_is_ballooned_with_the_operators_ceiling(self):
        backend = _Ballooning()
        c, pager = self.controller(backend, "fill-before-run")
        self.successResultOf(c.op_set({"domain": "lx.1", "knobs": {"target": 16384,
                                                                    "limit": 20000}}))
        self.assertEqual(backend.calls, [(9, 16384, True)])
        self.assertEqual(pager.evicted, [])
        self.assertEqual(pager.knobs[0]["target"], None)
        self.assertEqual(pager.knobs[0]["limit"], 20000)

    def test_no_balloon_driver_changes_nothing(self):
        c, pager = self.controller(_Ballooning(has_driver=False), "fill-before-run")
        f = self.failureResultOf(c.op_set({"domain": "lx.1", "knobs": {"target": 16384,
                                                                        "limit": 9}}))
        self.assertEqual(f.value.code, "no-balloon")
        self.assertEqual(pager.knobs, [])

    def test_lazy_clone_is_evicted(self):
        backend = _Ballooning()
        c, pager = self.controller(backend, "lazy")
        self.successResultOf(c.op_set({"domain": "lx.1", "knobs": {"target": 16384}}))
        self.assertEqual(backend.calls, [])
        self.assertEqual(pager.evicted, [16384])
        self.assertEqual(pager.knobs[0]["target"], 16384)
