"""Waiting faults: per-clone queues, counts kept (not summed), a page queued once."""

import time

from twisted.trial import unittest

from xenclone.pager.requests import FaultRequest, WaitingFaults, Waits


class WaitingFaultsTests(unittest.TestCase):
    def setUp(self):
        self.faults = WaitingFaults()

    def test_room_requests_are_per_clone_oldest_first_and_counted(self):
        f = self.faults
        for pfn in (5, 3, 9):
            f.wait_room(1, pfn)
        f.wait_room(2, 7)
        f.wait_room(1, 5)          # asked again: keeps its place, counted once
        self.assertEqual((f.room_waiting(1), f.room_waiting(2), f.waiting(1)), (3, 1, 3))
        self.assertEqual(sorted(f.clones_waiting_room()), [1, 2])
        self.assertEqual(f.take_room(1), FaultRequest(1, 5, Waits.ROOM))
        self.assertEqual(f.take_room(1).pfn, 3)
        self.assertEqual(f.counts()[Waits.ROOM], 2)
        f.served(1, [9, 40])
        self.assertEqual(sorted(f.clones_waiting_room()), [2])
        self.assertEqual(f.counts()[Waits.ROOM], 1)

    def test_host_queue_is_one_queue_oldest_first_with_the_newer_want(self):
        f = self.faults
        f.wait_host(1, 4, Waits.WRITE)
        f.wait_host(2, 4, Waits.FETCH)
        f.wait_host(1, 4, Waits.COPY)     # asked again: its place, the new want
        self.assertEqual(f.host_waiting(), 2)
        self.assertEqual(f.counts(), {Waits.ROOM: 0, Waits.EVICTION: 0, Waits.MEMSERVER: 0,
                                      Waits.FETCH: 1, Waits.COPY: 1})
        self.assertEqual(set(f.copying()), {(1, 4)})
        self.assertIn((1, 4), f)
        self.assertEqual(f.take_host(), FaultRequest(1, 4, Waits.COPY))
        self.assertEqual(set(f.copying()), set())
        self.assertNotIn((1, 4), f)
        self.assertEqual((f.waiting(1), f.waiting(2)), (0, 1))

    def test_a_write_does_not_replace_a_page_in(self):
        """A fork may ask room for a page it also asks back in: the page-in
        gives the page its frame, which the write waits for too, so either
        order leaves the page-in (and the write is answered with it)."""
        f = self.faults
        f.wait_host(1, 4, Waits.PAGE_IN)
        f.wait_host(1, 4, Waits.WRITE)
        f.wait_host(1, 5, Waits.WRITE)
        f.wait_host(1, 5, Waits.PAGE_IN)
        self.assertEqual(f.counts()[Waits.PAGE_IN], 2)
        self.assertNotIn(Waits.WRITE, f.counts())
        self.assertEqual([f.take_host(), f.take_host()],
                         [FaultRequest(1, 4, Waits.PAGE_IN), FaultRequest(1, 5, Waits.PAGE_IN)])

    def test_parked_faults_come_back_once(self):
        f = self.faults
        f.park(1, 8, Waits.EVICTION)
        f.park(1, 8, Waits.EVICTION)
        f.park(1, 9, Waits.MEMSERVER)
        f.park(2, 9, Waits.MEMSERVER)
        self.assertEqual((f.parked(1, Waits.EVICTION), f.count(Waits.MEMSERVER)), (1, 2))
        self.assertNotIn((1, 8), f)          # parked faults do not spare a page
        self.assertEqual(f.unpark(1, [8, 10], Waits.EVICTION), [8])
        self.assertEqual(f.unpark(1, [8], Waits.EVICTION), [])
        back = f.unpark_all(Waits.MEMSERVER)
        self.assertEqual(sorted(r.key for r in back), [(1, 9), (2, 9)])
        self.assertEqual(f.counts(), {Waits.ROOM: 0, Waits.EVICTION: 0, Waits.MEMSERVER: 0})

    def test_forget_drops_only_that_clones_requests(self):
        f = self.faults
        for domid in (1, 2):
            f.wait_room(domid, 1)
            f.wait_host(domid, 2, Waits.COPY)
            f.park(domid, 3, Waits.EVICTION)
            f.park(domid, 4, Waits.MEMSERVER)
        f.forget(1)
        self.assertEqual((f.waiting(1), f.waiting(2)), (0, 4))
        self.assertEqual(f.counts(), {Waits.ROOM: 1, Waits.EVICTION: 1, Waits.MEMSERVER: 1,
                                      Waits.COPY: 1})
        self.assertEqual(set(f.copying()), {(2, 2)})
        self.assertEqual(f.take_host().domid, 2)

    def test_counting_does_not_grow_with_the_faults_waiting(self):
        """A clone's count is kept, not summed: asking it with 100,000
        faults waiting costs what it costs with 2."""
        def cost(n):
            f = WaitingFaults()
            for pfn in range(n):
                f.wait_room(pfn % 2, pfn)
                f.wait_host(pfn % 2, pfn, Waits.FETCH)
            t = time.perf_counter()
            for _ in range(2000):
                f.waiting(0), f.room_waiting(1), f.counts()
            return time.perf_counter() - t

        small, big = min(cost(2) for _ in range(3)), min(cost(100_000) for _ in range(3))
        self.assertLess(big, small * 10)

    def test_draining_a_queue_oldest_first_is_linear(self):
        """Taking the oldest request again and again costs the same per
        request however long the queue (a dict's front pops would not)."""
        def per_request(n):
            f = WaitingFaults()
            for pfn in range(n):
                f.wait_room(1, pfn)
                f.wait_host(1, pfn, Waits.FETCH)
            t = time.perf_counter()
            while f.host_waiting():
                f.take_host()
            while f.room_waiting(1):
                f.take_room(1)
            return (time.perf_counter() - t) / n

        short, long = (min(per_request(n) for _ in range(3)) for n in (5_000, 80_000))
        self.assertLess(long, short * 4)
