"""Working sets (REAP): what is recorded, kept and prefetched; and on the
real KVM backend, a clone with the set prefetched faults less on the part
of the workload common to all clones, and answers right."""

import json
import os
import shutil
import tempfile

import attr
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from tests.test_daemon import PrivateDaemon
from xenclone import workload
from xenclone.interfaces import FaultKind
from xenclone.working_set import WorkingSets

S, Z, F, W = FaultKind.SERVED, FaultKind.ZERO, FaultKind.FETCH, FaultKind.WRITTEN


@attr.s
class FakeImage:
    image_id = attr.ib(default="img")
    generation = attr.ib(default="g1")


class FakePager:
    def __init__(self):
        self.observe = None
        self.recorded = None
        self.prefetched = []
        self.around_restored = []

    def set_fault_around(self, domid, pages=None):
        self.around_restored.append(domid)

    def prefetch(self, domid, pfns):
        self.prefetched.append((domid, list(pfns)))
        return defer.succeed(len(pfns))


class WorkingSetTests(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="xenclone-ws-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.pager = FakePager()
        self.ws = WorkingSets(self.pager, self.dir)

    def test_first_clone_records_its_faults_in_order_then_later_clones_prefetch(self):
        self.ws.launched(1, FakeImage(), 64)
        self.assertEqual(self.pager.observe, self.ws.observe)
        # WRITTEN is a write to a page it had: not a first touch; a
        # repeated fault (a page dropped and faulted again) is kept once.
        self.ws.observe([(1, S, 9), (1, Z, 3), (1, W, 9), (1, F, 40), (1, S, 9), (2, S, 5)])
        self.assertIsNone(self.ws.get("img", "g1"))     # still recording
        self.ws.finished(1)
        self.assertEqual(self.ws.get("img", "g1"), [9, 3, 40])
        with open(os.path.join(self.dir, "img", "g1.json")) as f:
            self.assertEqual(json.load(f)["pages"], [9, 3, 40])
        self.ws.launched(2, FakeImage(), 64)
        self.assertEqual(self.pager.prefetched, [(2, [9, 3, 40])])
        self.assertEqual(self.ws.info("img", "g1"),
                         {"generation": "g1", "pages": 3, "recording": []})

    def test_two_recorded_clones_keep_their_common_pages(self):
        self.assertEqual(self.pager.recorded, self.ws.will_record)
        self.assertTrue(self.ws.will_record(FakeImage()))
        self.ws.launched(1, FakeImage(), 64)
        self.ws.launched(2, FakeImage(), 64)
        self.assertFalse(self.ws.will_record(FakeImage()))
        self.ws.launched(3, FakeImage(), 64)      # a third is neither recorded nor helped
        self.ws.observe([(1, S, 7), (2, S, 8), (1, S, 8), (1, S, 20), (2, S, 7), (3, S, 20)])
        self.ws.finished(1)
        self.assertIsNone(self.ws.get("img", "g1"))     # the other recording decides
        self.ws.finished(2)
        self.assertEqual(self.ws.get("img", "g1"), [7, 8])   # in the first's order
        self.assertEqual(self.pager.prefetched, [])
        # recorded without fault-around, given it back when the recording ends
        self.assertEqual(self.pager.around_restored, [1, 2])
        self.assertFalse(self.ws.will_record(FakeImage()))

    def test_an_empty_recording_leaves_the_set_to_the_next_clone(self):
        self.ws.launched(1, FakeImage(), 64)      # e.g. hoarded full before it ran
        self.ws.gone(1)
        self.assertIsNone(self.ws.get("img", "g1"))
        self.ws.launched(2, FakeImage(), 64)
        self.ws.observe([(2, S, 11)])
        self.ws.finished(2)
        self.assertEqual(self.ws.get("img", "g1"), [11])

    def test_sets_are_per_generation_kept_across_restarts_and_dropped_on_discard(self):
        self.ws.launched(1, FakeImage(), 64)
        self.ws.observe([(1, S, 4)])
        self.ws.finished(1)
        again = WorkingSets(FakePager(), self.dir)      # a new daemon
        self.assertEqual(again.get("img", "g1"), [4])
        self.assertIsNone(again.get("img", "g2"))
        again.launched(5, FakeImage(generation="g2"), 64)
        self.assertEqual(again.info("img", "g2")["recording"], [5])
        again.forget("img")
        self.assertIsNone(again.get("img", "g1"))
        self.assertFalse(os.path.exists(os.path.join(self.dir, "img")))

    def test_no_prefetch_when_asked_and_faults_counted_per_part(self):
        self.ws.launched(1, FakeImage(), 64)
        self.ws.observe([(1, S, 1), (1, S, 2)])
        self.ws.finished(1)
        self.ws.launched(2, FakeImage(), 64, prefetch=False)
        self.assertEqual(self.pager.prefetched, [])
        self.ws.observe([(2, S, 2), (2, S, 30)])
        self.assertEqual(self.ws.faults_on(2, {1, 2, 3}), 1)


class KvmWorkingSetTests(PrivateDaemon, unittest.TestCase):
    @defer.inlineCallbacks
    def _clone(self, prefetch, settle=False):
        """``settle``: keep it paused until its prefetch has landed.  The
        prefetch runs beside the guest, and on a loaded host a running
        guest can get to the pages first."""
        [c] = (yield self.s.call("launch", image="img", prefetch=prefetch,
                                 paused=settle))["clones"]
        if settle:
            for _ in range(200):
                if (yield self.s.call("info", domain=c["domid"]))["prefetched_pages"]:
                    break
                yield task.deferLater(reactor, 0.05, lambda: None)
            yield self.s.call("unpause", domain=c["domid"])
        info = yield self.s.call("wait", domain=c["domid"], timeout=300)
        self.assertEqual(info["result"], info["expected"])
        sets = self.s.service.getServiceNamed("core").controller.working_sets
        p = self.params
        common = {p.data_first_pfn + i * p.data_npages // p.common_reads
                  for i in range(p.common_reads)}
        return info, sets.faults_on(c["domid"], common), len(common)

    @defer.inlineCallbacks
    def test_prefetched_clones_fault_less_on_the_common_part_and_answer_right(self):
        yield self.s.call("create", config={"name": "m", "memory": 32})
        blessed = yield self.s.call("bless", domain="m", name="img")
        self.params = workload.Params(**blessed["meta"]["params"])
        first, first_common, common = yield self._clone(prefetch=True)   # records
        self.assertEqual(first["prefetched_pages"], 0)
        self.assertEqual(first["around_pages"], 0)     # a recorded clone touches each page
        self.assertEqual(first_common, common)
        [image] = (yield self.s.call("images"))["images"]
        self.assertGreater(image["working_set"]["pages"], common)
        self.assertEqual(image["working_set"]["generation"], blessed["generation"])
        plain, plain_common, _ = yield self._clone(prefetch=False)
        self.assertEqual(plain["prefetched_pages"], 0)
        self.assertGreater(plain["around_pages"], 0)
        reaped, reaped_common, _ = yield self._clone(prefetch=True, settle=True)
        self.assertGreaterEqual(reaped["prefetched_pages"], common)
        self.assertLessEqual(reaped_common * 5, common)
        self.assertLess(reaped["guest_faults"], plain["guest_faults"])
