"""Sharing-aware eviction: cheap pages first, the only copies last."""

from zope.interface import implementer

from xenclone.interfaces import IEvictionPolicy
from xenclone.policy.clock import ClockPolicy


@implementer(IEvictionPolicy)
class SharingPolicy(ClockPolicy):
    """The ledger ranks each candidate: 0 a clean page one clone maps, 1 an
    image page several clones share (dropping it costs each of them a
    fault), 2 a private page (it must be written out first).  Lower ranks
    go first; within a rank, the clock order."""

    name = "sharing"

    def choose(self, count, rank):
        old, new = self._candidates(rank)
        # The recent window comes last whatever its class: a page just
        # faulted is about to be used, and evicting it only thrashes.
        ordered = sorted(old, key=lambda rk: rk[0]) + sorted(new, key=lambda rk: rk[0])
        return [k for _, k in ordered[:count]]


POLICIES = {"clock": ClockPolicy, "sharing": SharingPolicy}
