from twisted.trial import unittest

from xenclone.ledger import Ledger, LedgerError
from xenclone.policy.clock import ClockPolicy


class LedgerTests(unittest.TestCase):
    def setUp(self):
        self.ledger = Ledger(100, ClockPolicy(protect=2), credit_batch=32)
        self.ledger.add_clone(1, "img", 50)
        self.ledger.add_clone(2, "img", 50)

    def test_credits_bounded_by_batch_and_budget(self):
        self.assertEqual(self.ledger.take_credits(), 32)
        self.ledger.loaded(1, range(50))
        self.ledger.loaded(2, range(40))
        self.assertEqual(self.ledger.take_credits(), 10)
        self.ledger.loaded(2, range(40, 50))
        self.assertEqual(self.ledger.take_credits(), 0)

    def test_reloading_a_resident_page_costs_nothing(self):
        self.ledger.loaded(1, [3, 3, 3])
        self.assertEqual(self.ledger.host_stats()["used_pages"], 1)
        self.assertEqual(self.ledger.clone_stats(1)["faults"], 3)

    def test_victims_come_from_any_clone_oldest_first_never_private(self):
        self.ledger.loaded(1, [1, 2])
        self.ledger.loaded(2, [7, 8, 9])
        self.ledger.written(1, [1])
        victims = self.ledger.victims(10)
        self.assertNotIn((1, 1), victims)
        self.assertEqual(victims[0], (1, 2))
        self.assertIn((2, 7), victims)

    def test_private_page_can_never_be_evicted(self):
        self.ledger.loaded(1, [5])
        self.ledger.written(1, [5])
        self.assertRaises(LedgerError, self.ledger.evicted, 1, [5])
        self.assertEqual(self.ledger.clone_stats(1)["resident_pages"], 1)

    def test_eviction_frees_budget(self):
        self.ledger.loaded(1, range(50))
        self.ledger.loaded(2, range(50))
        self.ledger.evicted(2, [0, 1, 2])
        self.assertEqual(self.ledger.take_credits(), 3)
        self.assertEqual(self.ledger.clone_stats(2)["evicted_pages"], 3)

    def test_remove_clone_frees_its_pages(self):
        self.ledger.loaded(1, range(30))
        self.ledger.remove_clone(1)
        self.assertEqual(self.ledger.host_stats()["used_pages"], 0)
        self.assertEqual(self.ledger.victims(5), [])

    def test_out_of_range_page_is_refused(self):
        self.assertRaises(LedgerError, self.ledger.loaded, 1, [50])

    def test_journal_replay_rebuilds_state(self):
        records = []
        ledger = Ledger(100, ClockPolicy(), 32)
        ledger.set_journal(records.append)
        ledger.add_clone(3, "img", 20)
        ledger.loaded(3, [1, 2, 3])
        ledger.written(3, [2])
        ledger.evicted(3, [1])
        again = Ledger(100, ClockPolicy(), 32)
        again.replay(records)
        self.assertEqual(again.clone_stats(3), ledger.clone_stats(3))
        self.assertEqual(again.host_stats(), ledger.host_stats())


class ClockPolicyTests(unittest.TestCase):
    def test_recent_pages_are_spared_while_others_exist(self):
        policy = ClockPolicy(protect=2)
        for key in "abcd":
            policy.paged_in(key)
        self.assertEqual(policy.choose(2, lambda k: True), ["a", "b"])

    def test_recent_pages_go_last_under_pressure(self):
        policy = ClockPolicy(protect=2)
        for key in "abc":
            policy.paged_in(key)
        self.assertEqual(policy.choose(3, lambda k: True), ["a", "c", "b"])

    def test_dropped_pages_are_not_chosen(self):
        policy = ClockPolicy(protect=0)
        policy.paged_in("a")
        policy.paged_in("b")
        policy.dropped("a")
        self.assertEqual(policy.choose(5, lambda k: True), ["b"])
