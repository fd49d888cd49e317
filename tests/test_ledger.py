"""The ledger and the policies, on plain Python: no backend, no kernel."""

from twisted.trial import unittest

from xenclone import ledger as L
from xenclone.ledger import Ledger, LedgerError
from xenclone.policy.clock import ClockPolicy
from xenclone.policy.sharing import SharingPolicy


class LedgerTests(unittest.TestCase):
    def setUp(self):
        self.ledger = Ledger(100, ClockPolicy(protect=0), credit_batch=32)
        self.ledger.add_image("img", 64, cached=range(1, 41))   # 40 cached pages
        self.ledger.add_clone(1, "img", 64)
        self.ledger.add_clone(2, "img", 64)

    def test_slots_of_a_failed_page_out_are_given_out_again(self):
        slots = self.ledger.take_slots(1, 3)
        self.ledger.free_slots(1, slots[1:])
        self.assertEqual(self.ledger.take_slots(1, 3), [slots[2], slots[1], 3])

    def test_a_paused_page_out_comes_back_unless_the_operator_changed_the_classes(self):
        left = self.ledger.pause_pageout(1, "disk full: retrying")
        self.assertNotIn(L.PAGE_OUT, left)
        self.assertEqual(self.ledger.clone_stats(1)["pageout_error"], "disk full: retrying")
        self.ledger.resume_pageout(1, left)
        self.assertIn(L.PAGE_OUT, self.ledger.clone_stats(1)["flags"]["evict"])
        self.ledger.pageout_works(1, "disk full")
        self.assertIsNone(self.ledger.clone_stats(1)["pageout_error"])
        left = self.ledger.pause_pageout(2, "disk full: retrying")
        self.ledger.set_knobs(2, classes=[L.DROP_CLEAN])
        self.ledger.resume_pageout(2, left)
        self.assertEqual(self.ledger.clone_stats(2)["flags"]["evict"], [L.DROP_CLEAN])

    def test_cached_image_pages_count_once_however_many_clones_map_them(self):
        self.ledger.mapped_shared(1, [1, 2, 3])
        self.ledger.mapped_shared(2, [1, 2, 3])
        stats = self.ledger.host_stats()
        self.assertEqual((stats["allocated_pages"], stats["resident_pages"]), (40, 6))

    def test_a_write_allocates_a_private_page(self):
        self.ledger.mapped_shared(1, [5])
        self.ledger.written(1, [5])
        self.assertEqual(self.ledger.allocated, 41)
        s = self.ledger.clone_stats(1)
        self.assertEqual((s["shared_pages"], s["private_pages"], s["resident_pages"]), (0, 1, 1))
        self.assertEqual(self.ledger.mappers("img", 5), ())
        self.assertEqual(self.ledger.images["img"].mapcount[5], 0)

    def test_a_run_mapped_around_a_fault_is_accounted_whole(self):
        self.ledger.mapped_shared(1, [4])
        self.ledger.dropped_clean(1, [4])
        self.ledger.mapped_shared(1, range(2, 8), how="around")     # 4 was evicted
        s = self.ledger.clone_stats(1)
        self.assertEqual((s["shared_pages"], s["around_pages"], s["faults"]), (6, 6, 1))
        self.assertEqual(self.ledger.mappers("img", 4), (1,))
        self.ledger.mapped_shared(1, range(6, 10), how="around")    # 6, 7 resident already
        self.assertEqual(self.ledger.clone_stats(1)["shared_pages"], 8)
        self.assertEqual(list(self.ledger.images["img"].mapcount[:11]), [0, 0] + [1] * 8 + [0])
        self.ledger.written(1, [9])
        self.assertRaises(LedgerError, self.ledger.mapped_shared, 1, range(8, 11), how="around")
        self.assertRaises(LedgerError, self.ledger.mapped_shared, 1, range(60, 65), how="around")
        self.assertEqual(self.ledger.clone_stats(1)["shared_pages"], 7)

    def test_zero_pages_cost_nothing(self):
        self.ledger.mapped_zero(1, [50, 51])
        self.assertEqual(self.ledger.allocated, 40)
        self.assertEqual(self.ledger.clone_stats(1)["zero_pages"], 2)
        self.assertEqual(self.ledger.clone_stats(1)["resident_pages"], 0)

    def test_an_image_the_hypervisor_holds_is_outside_the_budget(self):
        """Its cache here is dom0's memory: not counted, and no eviction
        drops it (that would free nothing of the hypervisor's)."""
        self.ledger.set_knobs(1, classes=[L.DROP_SHARED])
        self.ledger.mapped_shared(1, [1, 2])
        self.assertEqual(self.ledger.allocated, 40)
        self.ledger.hold_image("img")
        self.ledger.hold_image("img")                     # once is enough
        self.assertEqual(self.ledger.allocated, 0)
        self.ledger.cached("img", [50])
        self.ledger.written(2, [60])
        self.assertEqual(self.ledger.allocated, 1)        # the written page alone
        self.assertEqual(self.ledger.unmapped_cache(10), [])
        self.assertEqual(self.ledger.host_victims(10), [(2, 60)])   # not its shared 1, 2
        self.ledger.uncached("img", [50])
        self.assertEqual(self.ledger.allocated, 1)

    def test_credits_follow_host_room_and_clone_limit(self):
        self.ledger.set_knobs(1, limit=10)
        host, clones = self.ledger.take_credits()
        # no limit: room for fault-around, mapping cached pages costs no host page
        self.assertEqual((host, clones[1], clones[2]), (32, 10, 64))
        self.ledger.set_knobs(2, limit=50)
        self.assertEqual(self.ledger.take_credits()[1][2], 32)
        self.ledger.mapped_shared(1, range(1, 9))
        self.assertEqual(self.ledger.take_credits()[1][1], 2)
        self.ledger.written(2, range(0, 60))
        self.assertEqual(self.ledger.take_credits()[0], 0)

    def test_a_clone_with_no_limit_may_map_its_whole_room(self):
        """However big: a clone out of credits between two reactor turns
        would fault a page at a time through Python."""
        self.ledger.add_image("big", 1 << 20, cached=())
        self.ledger.add_clone(3, "big", 1 << 20)
        self.assertEqual(self.ledger.take_credits()[1][3], 1 << 20)

    def test_the_only_copy_of_a_written_page_is_never_dropped(self):
        self.ledger.mapped_shared(1, [5])
        self.ledger.written(1, [5])
        self.assertRaises(LedgerError, self.ledger.dropped_clean, 1, [5])
        self.assertEqual(self.ledger.kind(1, 5), L.PRIVATE)

    def test_page_out_and_back(self):
        self.ledger.written(1, [7, 8])
        slots = self.ledger.take_slots(1, 2)
        self.ledger.paged_out(1, [7, 8], slots, [111, 222])
        self.assertEqual(self.ledger.allocated, 40)
        self.assertEqual(self.ledger.clone_stats(1)["paged_out_pages"], 2)
        self.assertEqual(self.ledger.slot(1, 8), (slots[1], 222))
        self.ledger.paged_in(1, 8)
        self.assertEqual(self.ledger.kind(1, 8), L.PRIVATE)
        self.assertEqual(self.ledger.take_slots(1, 2), [slots[1], 2])   # the freed slot first
        self.assertRaises(LedgerError, self.ledger.paged_in, 1, 8)

    def test_only_private_pages_can_be_paged_out(self):
        self.ledger.mapped_shared(1, [3])
        self.assertRaises(LedgerError, self.ledger.paged_out, 1, [3], [0], [0])

    def test_cache_page_cannot_leave_while_a_clone_maps_it(self):
        self.ledger.mapped_shared(1, [3])
        self.assertRaises(LedgerError, self.ledger.uncached, "img", [3])
        self.ledger.dropped_clean(1, [3], L.DROP_SHARED)
        self.ledger.uncached("img", [3])
        self.assertEqual(self.ledger.allocated, 39)
        self.assertEqual(self.ledger.host_stats()["evictions"][L.DROP_SHARED], 1)

    def test_clone_victims_clean_first_and_only_allowed_classes(self):
        self.ledger.mapped_shared(1, [1, 2])
        self.ledger.written(1, [3])
        self.ledger.mapped_shared(2, [4])
        self.assertEqual(self.ledger.clone_victims(1, 10), [(1, 1), (1, 2), (1, 3)])
        self.ledger.set_knobs(1, classes=[L.DROP_CLEAN])
        self.assertEqual(self.ledger.clone_victims(1, 10), [(1, 1), (1, 2)])

    def test_host_victims_free_memory_only(self):
        self.ledger.mapped_shared(1, [1])
        self.ledger.mapped_shared(2, [1])
        self.ledger.written(2, [9])
        self.ledger.mapped_zero(1, [60])
        victims = self.ledger.host_victims(10)
        self.assertIn((2, 9), victims)
        self.assertTrue({(1, 1), (2, 1)} & set(victims))
        self.assertNotIn((1, 60), victims)
        self.ledger.set_knobs(2, classes=[L.DROP_CLEAN])
        # Clone 2 refuses drop-shared and page-out: its pages are safe.
        self.assertEqual([v for v in self.ledger.host_victims(10) if v[0] == 2], [])

    def test_unmapped_cache_pages_are_free_to_drop(self):
        self.ledger.mapped_shared(1, range(1, 40))
        self.assertEqual(self.ledger.unmapped_cache(5), [("img", 40)])

    def test_pageout_failure_stops_page_out_for_the_clone(self):
        self.ledger.written(1, [3])
        self.ledger.pageout_failed(1, "ENOSPC")
        self.assertEqual(self.ledger.clone_victims(1, 5), [])
        self.assertEqual(self.ledger.clone_stats(1)["pageout_error"], "ENOSPC")

    def test_knobs_are_checked(self):
        self.assertRaises(LedgerError, self.ledger.set_knobs, 1, limit=65)
        self.assertRaises(LedgerError, self.ledger.set_knobs, 1, classes=["drop-everything"])

    def test_remove_clone_frees_its_private_pages_and_mappings(self):
        self.ledger.mapped_shared(1, [1, 2])
        self.ledger.mapped_shared(2, [2])
        self.assertEqual((self.ledger.mappers("img", 1), self.ledger.mappers("img", 2)),
                         ((1,), (1, 2)))
        self.ledger.written(1, [3])
        self.ledger.remove_clone(1)
        self.assertEqual(self.ledger.allocated, 40)
        self.assertEqual((self.ledger.mappers("img", 1), self.ledger.mappers("img", 2)), ((), (2,)))
        self.assertEqual(list(self.ledger.images["img"].mapcount[:4]), [0, 0, 1, 0])
        self.assertRaises(LedgerError, self.ledger.remove_image, "img")
        self.ledger.remove_clone(2)
        self.ledger.remove_image("img")
        self.assertEqual(self.ledger.allocated, 0)

    def test_eviction_counters_survive_the_clone(self):
        self.ledger.mapped_shared(1, [1, 2])
        self.ledger.dropped_clean(1, [1, 2])
        self.ledger.remove_clone(1)
        self.assertEqual(self.ledger.host_stats()["evictions"][L.DROP_CLEAN], 2)

    def test_out_of_range_page_is_refused(self):
        self.assertRaises(LedgerError, self.ledger.mapped_shared, 1, [64])

    def test_journal_replay_rebuilds_state(self):
        records = []
        ledger = Ledger(100, ClockPolicy(), 32)
        ledger.set_journal(records.append)
        ledger.add_image("img", 20, cached=[1, 2, 3])
        ledger.add_clone(3, "img", 20)
        ledger.set_knobs(3, limit=10)
        ledger.mapped_shared(3, [1, 2, 3])
        ledger.mapped_zero(3, [9])
        ledger.written(3, [2])
        ledger.paged_out(3, [2], ledger.take_slots(3, 1), [99])
        ledger.dropped_clean(3, [1])
        ledger.hold_image("img")
        again = Ledger(100, ClockPolicy(), 32)
        again.replay(records)
        self.assertEqual(again.clone_stats(3), ledger.clone_stats(3))
        self.assertEqual(again.host_stats(), ledger.host_stats())


_NAMES = "abcdpqsxy"


def keys(names):
    """Policy keys (the ledger's: domid << 32 | pfn) of pages named by
    letters, of two clones."""
    return [L.key(1 + _NAMES.index(n) % 2, _NAMES.index(n)) for n in names]


def names(ks):
    return [_NAMES[pfn] for _, pfn in map(L.unkey, ks)]


def by_name(rank):
    """A rank function over keys from one over names."""
    return lambda k: rank(names([k])[0])


class PolicyTests(unittest.TestCase):
    def test_clock_spares_recent_pages_while_others_exist(self):
        policy = ClockPolicy(protect=2)
        policy.paged_in(keys("abcd"))
        self.assertEqual(names(policy.choose(2, lambda k: 0)), ["a", "b"])

    def test_clock_takes_recent_pages_last_under_pressure(self):
        policy = ClockPolicy(protect=2)
        policy.paged_in(keys("abc"))
        self.assertEqual(names(policy.choose(3, lambda k: 0)), ["a", "b", "c"])

    def test_clock_never_offers_a_page_twice(self):
        policy = ClockPolicy(protect=4)
        policy.paged_in(keys("abab"))
        self.assertEqual(names(policy.choose(5, lambda k: 0)), ["a", "b"])

    def test_clock_skips_unevictable_and_dropped(self):
        policy = ClockPolicy(protect=0)
        policy.paged_in(keys("abc"))
        policy.dropped(keys("a"))
        self.assertEqual(names(policy.choose(5, by_name(lambda n: None if n == "b" else 0))), ["c"])

    def test_pages_mapped_ahead_are_newest_but_not_spared(self):
        policy = ClockPolicy(protect=2)
        policy.paged_in(keys("ab"))
        policy.added(keys("xy"))
        self.assertEqual(names(policy.choose(3, lambda k: 0)), ["x", "y", "a"])
        policy.dropped(keys("xa"))
        self.assertEqual(names(policy.choose(3, lambda k: 0)), ["y", "b"])

    def test_clock_order_survives_compaction_and_a_clone_gone_leaves_nothing(self):
        policy = ClockPolicy(protect=0)
        policy.added(L.key(7, p) for p in range(2000))
        policy.dropped([L.key(7, p) for p in range(1500)])
        policy.paged_in([L.key(7, 5)])
        self.assertLess(len(policy._keys), 2000)        # the log lost its stale entries
        order = [pfn for _, pfn in map(L.unkey, policy.choose(1000, lambda k: 0))]
        self.assertEqual(order, list(range(1500, 2000)) + [5])
        policy.dropped([L.key(7, p) for p in order])
        self.assertEqual((policy._stamps, policy.choose(5, lambda k: 0)), ({}, []))

    def test_clock_numbers_entries_afresh_before_they_run_out(self):
        policy = ClockPolicy(protect=0)
        policy.paged_in(keys("ab"))
        policy._seq = 0xFFFFFFFF - 1        # as after 4G page-ins
        policy.paged_in(keys("ca"))
        self.assertEqual(list(policy._seqs), [1, 2, 3, 4])
        self.assertEqual(names(policy.choose(3, lambda k: 0)), ["b", "c", "a"])

    def test_sharing_policy_evicts_clean_then_shared_then_private(self):
        policy = SharingPolicy(protect=0)
        rank = {"p": 2, "s": 1, "c": 0, "q": 2}
        policy.paged_in(keys("pscq"))
        self.assertEqual(names(policy.choose(4, by_name(rank.get))), ["c", "s", "p", "q"])

    def test_sharing_policy_spares_recent_pages_of_any_class(self):
        policy = SharingPolicy(protect=1)
        rank = {"p": 2, "c": 0}
        policy.paged_in(keys("pc"))
        self.assertEqual(names(policy.choose(2, by_name(rank.get))), ["p", "c"])


class InterfaceTests(unittest.TestCase):
    def test_ledger_and_policies_provide_their_interfaces(self):
        from zope.interface.verify import verifyObject
        from xenclone.ledger_interfaces import IEvictionPolicy, ILedger
        verifyObject(ILedger, Ledger(10, ClockPolicy()))
        verifyObject(IEvictionPolicy, ClockPolicy())
        verifyObject(IEvictionPolicy, SharingPolicy())
