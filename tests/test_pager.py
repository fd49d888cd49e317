"""The pager pipeline over fakes: every step of the claim, no kernel."""

import os
import shutil
import tempfile

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial import unittest
from zope.interface import directlyProvides
from zope.interface.verify import verifyObject

from xenclone import ledger as L
from xenclone.backends.xen.evict import Dropped
from xenclone.interfaces import (IBackend, IFaultRegion, IFaultSource, IMemoryServer,
                                 IUnwatchedWrites, FaultKind, PageState)
from xenclone.image import OpenImage
from xenclone.ledger import Ledger
from xenclone.pager import Pager
from xenclone.policy.sharing import SharingPolicy

from tests.fakes import (FakeBackend, FakeImageData, FakeMemoryServer, FakeRegion, FakeSource,
                         page_data)

S, Z, W = FaultKind.SERVED, FaultKind.ZERO, FaultKind.WRITTEN
N, NW, F, H = FaultKind.MISSING, FaultKind.WRITE, FaultKind.FETCH, FaultKind.HOLD


class PagerTests(unittest.TestCase):
    def setUp(self):
        self.store = tempfile.mkdtemp(prefix="xenclone-store-")
        self.addCleanup(shutil.rmtree, self.store, True)
        self.clock = Clock()
        self.source = FakeSource()
        self.backend = FakeBackend()
        self.backend.states.update({1: "running", 2: "running"})
        self.memserver = FakeMemoryServer()
        # 64-page image: page 0 is zero, 63 pages cached; budget 80 host pages
        self.image = FakeImageData(64, zero_pages=[0])
        self.ledger = Ledger(80, SharingPolicy(protect=0), credit_batch=4)
        self.pager = Pager(self.clock, self.ledger, self.source, self.backend, self.memserver,
                           self.store)
        self.r1, self.r2 = FakeRegion(1, 64, self.image), FakeRegion(2, 64, self.image)
        self.pager.attach(self.r1, self.image)
        self.pager.attach(self.r2, self.image)

    def _cache_only(self, pfns):
        """Shrink the host's image cache to ``pfns`` (the rest is on disk)."""
        gone = [p for p in range(1, 64) if p not in pfns]
        self.ledger.uncached("img", gone)
        self.image.missing.update(gone)

    def test_fakes_implement_the_interfaces(self):
        verifyObject(IFaultSource, self.source)
        verifyObject(IBackend, self.backend)
        verifyObject(IMemoryServer, self.memserver)
        verifyObject(IFaultRegion, self.r1)

    def test_credits_granted_at_attach(self):
        self.assertEqual((self.source.credits, self.source.clone_credits), (4, {1: 64, 2: 64}))
        self.pager.set_knobs(1, limit=10)
        self.assertEqual(self.source.clone_credits, {1: 4, 2: 64})

    def test_fast_path_records_are_accounted(self):
        self.source.deliver([(1, S, 3), (1, Z, 0), (2, S, 3), (1, W, 3)])
        self.assertEqual(self.ledger.kind(1, 3), L.PRIVATE)
        self.assertEqual(self.ledger.kind(1, 0), L.ZERO)
        self.assertEqual(self.ledger.host_stats()["allocated_pages"], 64)

    def test_clone_at_its_limit_drops_its_own_clean_pages_then_maps(self):
        self.ledger.set_knobs(1, limit=3)
        self.source.deliver([(1, S, p) for p in (1, 2, 3)] + [(2, S, 9)])
        self.source.deliver([(1, N, 20)])
        [(domid, pfns)] = self.backend.drops
        self.assertEqual(domid, 1)
        self.assertIn(1, pfns)
        self.assertEqual(self.r1.loaded, {20: "shared"})
        self.assertEqual(self.r1.state[1], PageState.ABSENT)      # released: it faults again
        self.assertLessEqual(self.ledger.resident(1), 3)
        self.assertEqual(self.ledger.kind(2, 9), L.SHARED)        # the other clone untouched

    def test_a_higher_limit_lets_a_clone_stuck_at_its_limit_go_on(self):
        """Nothing it may evict (page-out only, and the store failed): its
        fault waits until the operator raises the limit, then is served."""
        self.pager.set_knobs(1, limit=3, classes=[L.PAGE_OUT])
        self.source.deliver([(1, S, p) for p in (1, 2, 3)])
        self.ledger.pageout_failed(1, "No space left on device")
        self.source.deliver([(1, N, 20)])
        self.assertNotIn(20, self.r1.loaded)
        self.pager.set_knobs(1, limit=0)
        self.assertEqual(self.r1.loaded[20], "shared")

    def test_a_round_that_keeps_failing_backs_off_and_is_logged_once(self):
        """A drop that fails every time (a bug) must neither spin the
        reactor nor fill the log: retries wait longer each time, and the
        same failure is logged once until a round moves pages again."""
        events = []
        self.pager.evictor.log = Logger(observer=events.append)
        self.ledger.set_knobs(1, limit=3)
        self.source.deliver([(1, S, p) for p in (1, 2, 3)])
        tries = []
        self.backend.drop_clean = lambda domid, pfns: (tries.append(pfns),
                                                       defer.fail(RuntimeError("bug")))[1]
        self.source.deliver([(1, N, 20)])
        for _ in range(200):
            self.clock.advance(0.01)                # 2 s
        self.assertLess(len(tries), 20)
        self.assertEqual(len([e for e in events if e.get("log_failure")]), 1)
        self.assertNotIn(20, self.r1.loaded)

    def test_drop_that_finds_a_page_written_makes_it_private(self):
        """Xen cannot write-protect: its drop finds writes by comparing, keeps
        those pages and names them; they are the clone's only copy now."""
        self.ledger.set_knobs(1, limit=3)
        self.source.deliver([(1, S, p) for p in (1, 2, 3)])

        def drop_clean(domid, pfns):
            dropped = Dropped(p for p in pfns if p != 2)
            dropped.written = [2]
            return defer.succeed(dropped)

        self.backend.drop_clean = drop_clean
        directlyProvides(self.backend, IUnwatchedWrites)
        self.source.deliver([(1, N, 20)])
        self.assertEqual(self.ledger.kind(1, 2), L.PRIVATE)
        self.assertEqual(self.r1.state[2], PageState.PRIVATE)
        self.assertEqual(self.ledger.kind(1, 1), L.EVICTED)

    def test_write_record_arriving_after_its_page_was_dropped_is_stale(self):
        """The fast path let a write through (the page is private in C) but
        its record is still on its way when an eviction drops the page, the
        write not landed: the late record must not call an absent page
        private, or the pager would later page out a page that is not there."""
        self.ledger.set_knobs(1, limit=3)
        self.source.deliver([(1, S, p) for p in (1, 2, 3)])
        self.r1.state[1] = PageState.PRIVATE      # C unprotected page 1
        self.source.deliver([(1, N, 20)])          # at its limit: drops 1, 2 and 3
        self.assertEqual(self.ledger.kind(1, 1), L.EVICTED)
        self.pager.on_faults([(1, W, 1)])          # the record of the write
        self.assertEqual(self.ledger.kind(1, 1), L.EVICTED)
        self.assertEqual(self.ledger.host_stats()["private_pages"], 0)

    def test_pages_mapped_around_a_fault_are_shared_and_not_faults(self):
        """A run C mapped around a fault: shared in the ledger, counted as
        fault-around, not as faults; a page of it evicted before its record
        arrived is stale."""
        self.source.deliver([(1, S, 5)])
        self.r1.state[6] = self.r1.state[8] = PageState.SHARED   # 7 dropped before the record
        self.pager.on_faults([(1, FaultKind.AROUND, range(6, 9))])
        self.assertEqual([self.ledger.kind(1, p) for p in (6, 7, 8)], [L.SHARED, None, L.SHARED])
        stats = self.ledger.clone_stats(1)
        self.assertEqual((stats["faults"], stats["around_pages"], stats["resident_pages"]),
                         (1, 2, 3))

    def test_zero_pages_mapped_around_a_fault_are_zero_and_not_faults(self):
        self.source.deliver([(1, S, 5), (1, FaultKind.AROUND_ZERO, range(10, 13))])
        self.assertEqual([self.ledger.kind(1, p) for p in (10, 12, 13)], [L.ZERO, L.ZERO, None])
        stats = self.ledger.clone_stats(1)
        self.assertEqual((stats["faults"], stats["around_pages"], stats["zero_pages"]), (1, 3, 3))

    def test_clone_that_does_not_share_gets_private_copies(self):
        self.pager.set_knobs(1, share=False)
        self.assertFalse(self.r1.sharing)
        self._cache_only([3])
        self.source.deliver([(1, FaultKind.COPY, 3), (1, Z, 0), (1, F, 9), (2, S, 3)])
        self.assertEqual(self.r1.loaded, {3: bytes([3]) * 4096, 9: bytes([9]) * 4096})
        self.assertEqual(self.memserver.fetches, [("img", 9, 1)])
        self.assertEqual((self.ledger.kind(1, 3), self.ledger.kind(1, 9)), (L.PRIVATE, L.PRIVATE))
        self.assertEqual(self.ledger.kind(2, 3), L.SHARED)     # the other clone still shares
        self.assertEqual(self.ledger.clone_stats(1)["flags"]["share.onfetch"], False)

    def test_write_without_host_room_pages_out_a_private_page_first(self):
        self._cache_only([8])
        self.ledger.budget_pages = 4                # 1 cached + 3 private
        self.ledger.set_knobs(2, classes=[L.PAGE_OUT])
        self.source.deliver([(2, Z, 5), (2, W, 5), (2, Z, 6), (2, W, 6), (2, Z, 7), (2, W, 7)])
        self.source.deliver([(1, S, 8), (1, NW, 8)])
        self.assertEqual(self.backend.pageouts, [(2, [5, 6, 7])])
        self.assertEqual(self.r1.loaded[8], "written")
        self.assertEqual(self.ledger.clone_stats(2)["paged_out_pages"], 3)
        self.assertEqual(self.r2.state[5], PageState.HOLD)        # its faults come to Python

    def _page_out_5_and_6(self):
        """Clone 2's private pages 5 and 6 go out so clone 1 can write 8."""
        self._cache_only([8])
        self.ledger.budget_pages = 3
        self.ledger.set_knobs(2, classes=[L.PAGE_OUT])
        self.source.deliver([(2, Z, 5), (2, W, 5), (2, Z, 6), (2, W, 6)])
        self.source.deliver([(1, S, 8), (1, NW, 8)])

    def test_paged_out_page_comes_back_from_the_store_intact(self):
        self._page_out_5_and_6()
        self.pager.detach(1)                                     # frees room for the page-in
        self.source.deliver([(2, H, 5)])
        self.assertEqual(self.r2.loaded[5], page_data(2, 5))
        self.assertEqual(self.ledger.kind(2, 5), L.PRIVATE)

    def test_corrupt_page_out_record_is_never_handed_to_the_guest(self):
        self._page_out_5_and_6()
        self.pager.detach(1)
        slot, _ = self.ledger.slot(2, 5)
        with open(self.pager.store_path(2), "r+b") as f:
            f.seek(slot * 4096 + 10)
            f.write(b"\xff")
        self.source.deliver([(2, H, 5)])
        self.assertNotIn(5, self.r2.loaded)
        self.assertIn("corrupt", self.ledger.clone_stats(2)["pageout_error"])

    def test_a_page_touched_during_its_page_out_stays_private(self):
        """Xen's evict fails for a page touched after its nominate: the
        page-out says so (None), and the page stays private, in memory,
        its slot free again; the rest are paged out."""
        page_out, slot_of_5 = self.backend.page_out, []

        def touched_5(domid, pfns, slots, *rest):
            slot_of_5.extend(s for p, s in zip(pfns, slots) if p == 5)
            return page_out(domid, pfns, slots, *rest).addCallback(
                lambda crcs: [None if p == 5 else c for p, c in zip(pfns, crcs)])

        self.backend.page_out = touched_5
        self._page_out_5_and_6()
        self.assertEqual((self.ledger.kind(2, 5), self.ledger.kind(2, 6)),
                         (L.PRIVATE, L.PAGED_OUT))
        self.assertEqual(self.r2.state[5], PageState.PRIVATE)
        self.assertEqual(self.ledger.clone_stats(2)["paged_out_pages"], 1)
        self.assertEqual(self.ledger.take_slots(2, 1), slot_of_5)     # free again

    def test_failed_page_out_drops_nothing(self):
        self._cache_only([8])
        self.ledger.budget_pages = 3
        self.ledger.set_knobs(2, classes=[L.PAGE_OUT])
        self.backend.pageout_error = "No space left on device"
        self.source.deliver([(2, Z, 5), (2, W, 5), (2, Z, 6), (2, W, 6)])
        self.source.deliver([(1, S, 8), (1, NW, 8)])
        self.assertEqual(self.ledger.kind(2, 5), L.PRIVATE)
        self.assertEqual(self.r2.state[5], PageState.PRIVATE)
        self.assertIn("No space", self.ledger.clone_stats(2)["pageout_error"])
        self.clock.advance(0.01)      # a round that freed nothing retries shortly
        self.assertIn("nothing to evict", self.pager.stalled)

    def test_page_out_on_a_full_disk_pauses_and_resumes_once_there_is_room(self):
        self._cache_only([8])
        self.ledger.budget_pages = 3
        self.ledger.set_knobs(2, classes=[L.PAGE_OUT])
        self.backend.pageout_error = "[Errno 28] No space left on device"
        self.source.deliver([(2, Z, 5), (2, W, 5), (2, Z, 6), (2, W, 6)])
        self.source.deliver([(1, S, 8), (1, NW, 8)])
        error = self.ledger.clone_stats(2)["pageout_error"]
        self.assertIn("disk full, page-out paused, retrying in 1 s", error)
        self.assertIn("No space", error)
        self.assertNotIn(8, self.r1.loaded)
        # Still full a second later: paused again, for twice as long.
        self.clock.advance(1.0)
        self.assertIn("retrying in 2 s", self.ledger.clone_stats(2)["pageout_error"])
        self.clock.advance(1.9)
        self.assertEqual(self.backend.pageouts, [])
        # Room again: the next try pages out, the write goes on, the reason goes.
        self.backend.pageout_error = None
        self.clock.advance(0.2)
        self.assertEqual(self.backend.pageouts, [(2, [5, 6])])
        self.assertEqual(self.r1.loaded[8], "written")
        stats = self.ledger.clone_stats(2)
        self.assertEqual((stats["pageout_error"], stats["flags"]["evict"]), (None, [L.PAGE_OUT]))

    def test_the_operators_evict_while_paused_is_kept(self):
        self._cache_only([8])
        self.ledger.budget_pages = 3
        self.ledger.set_knobs(2, classes=[L.PAGE_OUT])
        self.backend.pageout_error = "[Errno 28] No space left on device"
        self.source.deliver([(2, Z, 5), (2, W, 5), (2, Z, 6), (2, W, 6)])
        self.source.deliver([(1, S, 8), (1, NW, 8)])
        self.pager.set_knobs(2, classes=[L.DROP_CLEAN])
        self.clock.advance(5)
        self.assertEqual(self.ledger.clone_stats(2)["flags"]["evict"], [L.DROP_CLEAN])
        # A broken store (not a full disk) is not tried again.
        self.pager.set_knobs(2, classes=[L.PAGE_OUT])
        self.backend.pageout_error = "bad record"
        self.pager.pump()
        self.clock.advance(120)
        self.assertEqual(self.ledger.clone_stats(2)["flags"]["evict"], [])
        self.assertEqual(self.ledger.clone_stats(2)["pageout_error"], "bad record")

    def test_host_pressure_drops_a_shared_page_from_every_clone_and_the_cache(self):
        self._cache_only([4, 9])
        self.ledger.budget_pages = 2
        self.ledger.set_knobs(1, classes=[L.DROP_SHARED])
        self.ledger.set_knobs(2, classes=[L.DROP_SHARED])
        self.source.deliver([(1, S, 4), (2, S, 4)])
        self.source.deliver([(1, S, 9), (1, NW, 9)])
        self.assertIn(4, self.image.dropped)
        self.assertEqual(self.r1.state[4], PageState.ABSENT)
        self.assertEqual(self.r2.state[4], PageState.ABSENT)
        self.assertEqual(self.r1.loaded[9], "written")
        self.assertEqual(self.ledger.host_stats()["evictions"][L.DROP_SHARED], 2)

    def test_unmapped_cache_pages_go_first(self):
        self.ledger.budget_pages = 63
        self.source.deliver([(1, S, 9), (1, NW, 9)])
        self.assertEqual(len(self.image.dropped), 4)       # one credit batch
        self.assertEqual(self.backend.drops, [])
        self.assertEqual(self.r1.loaded[9], "written")

    def test_cache_keeps_a_page_whose_write_has_not_landed_in_a_held_clone(self):
        """Clone 2 was let write page 1, which a page-out now holds; the
        kernel does not show the copy yet, so clone 2 may still map the
        cache's page: the cache must not punch it from under the page-out."""
        self._cache_only([1, 2, 3, 4, 5])
        self.ledger.budget_pages = 6
        self.source.deliver([(2, S, 1), (2, W, 1)])
        self.r2.state[1] = PageState.HOLD           # a page-out in flight holds it
        self.source.deliver([(1, S, 9), (1, NW, 9)])   # 9 is fetched: room is made
        self.assertTrue(self.image.dropped)
        self.assertNotIn(1, self.image.dropped)

    def test_cache_keeps_a_page_a_clone_attached_to_while_it_was_checked(self):
        """The cache asks the kernel whether a writer's copy landed before
        it punches a page; a clone launched meanwhile maps that page."""
        self._cache_only([1, 2, 3, 4, 5])
        self.ledger.budget_pages = 6
        self.source.deliver([(2, S, 1), (2, W, 1)])
        self.backend.regions[2] = self.r2
        self.backend.hold_kinds = True
        self.source.deliver([(1, S, 2), (1, NW, 2)])        # no room: the cache lets go
        [(d, kinds)] = self.backend.pending_kinds
        r3 = FakeRegion(3, 64, self.image)
        r3.prefilled = [1]
        self.pager.attach(r3, self.image, self.pager.punch_seq)
        d.callback(kinds)
        self.assertTrue(self.image.dropped)
        self.assertNotIn(1, self.image.dropped)
        self.assertEqual((r3.state[1], self.ledger.kind(3, 1)), (PageState.SHARED, L.SHARED))

    def test_page_missing_from_host_cache_is_fetched_then_mapped(self):
        self.image.missing.add(9)
        self.ledger.uncached("img", [9])
        self.source.deliver([(1, F, 9)])
        self.assertEqual(self.memserver.fetches, [("img", 9, 1)])
        self.assertEqual(self.image.stored[9], bytes([9]) * 4096)
        self.assertEqual(self.r1.loaded, {9: "shared"})

    def test_fetch_waits_for_the_memory_server_with_backoff(self):
        waits = []
        self.pager.on_waiting = lambda domid, waiting: waits.append((domid, waiting))
        self.memserver.down = True
        self.image.missing.add(9)
        self.ledger.uncached("img", [9])
        self.source.deliver([(1, F, 9)])
        self.assertEqual((waits, self.pager.waiting()["memserver"]), ([(1, True)], 1))
        self.clock.advance(0.05)                   # the first retry fails too
        self.assertEqual(len(self.memserver.fetches), 2)
        self.clock.advance(0.05)                   # backing off: not yet
        self.assertEqual(len(self.memserver.fetches), 2)
        self.memserver.down = False
        self.clock.advance(0.05)
        self.assertEqual(len(self.memserver.fetches), 3)
        self.assertEqual(waits, [(1, True), (1, False)])
        self.assertEqual(self.r1.loaded, {9: "shared"})

    def test_no_fault_is_lost_while_eviction_is_in_flight(self):
        self.ledger.set_knobs(1, limit=2)
        self.backend.hold_drops = True
        self.source.deliver([(1, S, 1), (1, S, 2)])
        self.source.deliver([(1, N, 20)])
        self.source.deliver([(1, N, 21)])
        self.assertEqual(len(self.backend.pending_drops), 1)
        self.assertEqual(self.source.clone_credits[1], 0)
        d, dropped = self.backend.pending_drops.pop()
        d.callback(dropped)
        self.assertEqual({20, 21}, {p for p, how in self.r1.loaded.items()})

    def test_evict_to_a_target(self):
        self.source.deliver([(1, S, p) for p in range(1, 11)])
        n = self.successResultOf(self.pager.evict_to(1, 4))
        self.assertEqual(n, 6)
        self.assertEqual(self.ledger.resident(1), 4)

    def test_hoard_fills_remaining_pages_up_to_the_target(self):
        self.ledger.set_knobs(1, target=20)
        d = self.pager.hoard(1, rate=100)
        for _ in range(5):
            self.clock.advance(0.1)
        self.successResultOf(d)
        self.assertEqual(self.ledger.resident(1), 20)
        self.assertEqual(self.r1.loaded[0], "zero")

    def test_detach_forgets_waiting_faults_and_removes_the_store(self):
        self.ledger.set_knobs(1, limit=1)
        self.backend.hold_drops = True
        self.source.deliver([(1, S, 1), (1, N, 20)])
        self.pager.detach(1)
        d, dropped = self.backend.pending_drops.pop()
        d.callback(dropped)
        self.assertNotIn(20, self.r1.loaded)
        self.assertNotIn(1, self.source.regions)
        self.assertIsNone(self.pager.stats(1))
        self.assertFalse(os.path.exists(self.pager.store_path(1)))

    def test_pages_prefilled_at_launch_are_accounted(self):
        r3 = FakeRegion(3, 64, self.image)
        r3.prefilled = [15]
        self.pager.attach(r3, self.image)
        self.assertEqual(self.ledger.kind(3, 15), L.SHARED)
        self.assertEqual(r3.state[15], PageState.SHARED)

    def test_clone_filled_before_run_is_never_a_victim(self):
        """Its frames are its own (stock Xen): under host pressure the
        lazy clones' pages go, none of its."""
        r3 = FakeRegion(3, 64, self.image)
        r3.fill_mode, r3.prefilled = "fill-before-run", list(range(1, 41))
        self.backend.states[3] = "running"
        self.pager.attach(r3, self.image)
        self.source.deliver([(1, S, p) for p in range(41, 51)])
        self.pager.rebudget(30)
        self.assertEqual(self.ledger.clone_stats(3)["flags"]["evict"], [])
        self.assertEqual(self.ledger.resident(3), 40)
        self.assertEqual(self.ledger.resident(1), 0)

    def test_prefilled_page_punched_before_attach_is_left_to_fault(self):
        """The cache let a page go between launch and attach: the hole
        unmapped it from the new clone, so it is neither shared in C (a
        queued write would then be let through to an absent page) nor in
        the ledger."""
        since = self.pager.punch_seq
        self.ledger.budget_pages = 63
        self.source.deliver([(1, S, 9), (1, NW, 9)])       # the cache lets pages go
        gone, kept = self.image.dropped[0], 9
        r3 = FakeRegion(3, 64, self.image)
        r3.prefilled = [gone, kept]
        self.pager.attach(r3, self.image, since)
        self.assertEqual((r3.state[gone], r3.state[kept]), (PageState.ABSENT, PageState.SHARED))
        self.assertEqual((self.ledger.kind(3, gone), self.ledger.kind(3, kept)), (None, L.SHARED))

    def test_faults_of_unknown_clones_are_ignored(self):
        self.source.deliver([(99, S, 1)])
        self.assertEqual(self.ledger.host_stats()["resident_pages"], 0)


class BringInTests(unittest.TestCase):
    """A mirrored image brought in whole, for clones filled before they run."""

    def test_fetches_every_missing_non_zero_page_in_runs(self):
        memserver = FakeMemoryServer()
        ledger = Ledger(10000, SharingPolicy())
        pager = Pager(Clock(), ledger, FakeSource(), FakeBackend(), memserver, self.mktemp())
        npages = 600
        zero = bytearray(npages)
        zero[5] = zero[300] = 1
        fd = os.memfd_create("mirror")
        os.ftruncate(fd, npages * 4096)
        image = OpenImage("m", "g", "fake", b"", npages, fd, bytes(zero),
                          origin={"server": "h:1", "image": "m"})
        image.store_page(7, b"\x07" * 4096)             # fetched by an earlier fault
        pager.track_image(image)
        fetched = self.successResultOf(pager.bring_in(image))
        self.assertEqual(fetched, npages - 3)
        self.assertEqual([f[1:] for f in memserver.fetches],
                         [(0, 5), (6, 1), (8, 256), (264, 36), (301, 256), (557, 43)])
        self.assertEqual(image.read_page(9), bytes([8]) * 4096)    # the run from 8's data
        self.assertEqual(image.read_page(7), b"\x07" * 4096)
        self.assertEqual(sorted(image.cached_pages()),
                         [p for p in range(npages) if not zero[p]])
        self.assertEqual(len(ledger.images["m"].cached), npages - 2)
