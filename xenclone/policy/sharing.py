"""Sharing-aware eviction: cheap pages first, the only copies last."""

from zope.interface import implementer

from xenclone.ledger_interfaces import IEvictionPolicy
from xenclone.policy.clock import ClockPolicy


@implementer(IEvictionPolicy)
class SharingPolicy(ClockPolicy):
    """The ledger ranks each candidate: 0 a clean page one clone maps, 1 an
    image page several clones share (dropping it costs each of them a
    fault), 2 a private page (it must be written out first).  Lower ranks
    go first; within a rank, the clock order."""

    name = "sharing"

    def choose(self, count, rank):
        if count <= 0:
            return []
        recent = self._spared()
        by_rank = {}
        for r, k in self._old(rank, set(recent)):
            by_rank.setdefault(r, []).append(k)
            if r == 0 and len(by_rank[0]) == count:
                return by_rank[0]    # nothing ranks better: the sweep may stop
        out = [k for r in sorted(by_rank) for k in by_rank[r]][:count]
        # The recent window comes last whatever its class: a page just
        # faulted is about to be used, and evicting it only thrashes.
        new = sorted(self._new(rank, recent), key=lambda rk: rk[0])
        return out + [k for _, k in new][:count - len(out)]


POLICIES = {"clock": ClockPolicy, "sharing": SharingPolicy}
