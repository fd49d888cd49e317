"""UffdFaultSource against a real userfaultfd (no VM): its serve thread
spends exactly the credits granted beyond the records the reactor saw."""

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from tests.test_microvm import require_kvm
from tests.test_uffd_pager import NPAGES, Mapping
from xenclone.interfaces import FaultKind


class GroupRecordsTests(unittest.TestCase):
    """lx_group_records: what the reactor gets from a batch of records."""

    def test_one_group_per_clone_and_kind_in_order(self):
        from xenclone._linux import ffi, lib
        S, F, A = lib.LX_SERVED, lib.LX_FETCH, lib.LX_AROUND
        records = [(0, S, 1, 7), (1, S, 1, 3), (0, A, 16, 32), (0, S, 1, 5), (0, F, 1, 9),
                   (1, S, 1, 2), (0, A, 4, 64)]
        out = ffi.new("struct lx_fault[]", records)
        groups = ffi.new("struct lx_group[]", len(records))
        pfns = ffi.new("uint64_t[]", len(records))
        n = lib.lx_group_records(out, len(records), groups, pfns)
        got = [(g.region, g.kind, range(g.first, g.first + g.count) if g.kind == A
                else ffi.unpack(pfns + g.first, g.count)) for g in groups[0:n]]
        self.assertEqual(got, [(0, S, [7, 5]), (1, S, [3, 2]), (0, A, range(32, 48)),
                               (0, F, [9]), (0, A, range(64, 68))])


class UffdFaultSourceTests(unittest.TestCase):
    def setUp(self):
        require_kvm()
        from xenclone.backends.kvm.uffd_source import KvmRegion, UffdFaultSource
        self.m = Mapping()
        self.addCleanup(self.m.close)       # closes the uffd: waiting readers go
        self.records = []
        self.source = UffdFaultSource(reactor)
        self.source.start(self.records.extend)
        self.addCleanup(self.source.stop)
        self.source.add(KvmRegion(1, self.m.uffd, self.m.addr, NPAGES, self.m.zero))

    @defer.inlineCallbacks
    def _touch_each(self, pfns):
        """Touch the pages one after the other; the kinds of their records."""
        first = len(self.records)
        for i, pfn in enumerate(pfns):
            self.m.touch(pfn)
            for _ in range(500):
                if len(self.records) > first + i:
                    break
                yield task.deferLater(reactor, 0.01, lambda: None)
        return [kind for _, kind, _ in self.records[first:]]

    @defer.inlineCallbacks
    def test_a_grant_counts_from_the_records_seen(self):
        """The same grant twice is one grant; once the reactor has seen the
        pages C mapped, granting n again lets C map n more."""
        S, N = FaultKind.SERVED, FaultKind.MISSING
        self.source.set_credits(0, {1: 2})
        self.source.set_credits(0, {1: 2})
        self.assertEqual((yield self._touch_each([3, 4, 6])), [S, S, N])
        self.source.set_credits(0, {1: 2})
        self.assertEqual((yield self._touch_each([7, 8, 9])), [S, S, N])
