"""Clock sweep that spares recently paged-in pages (xenpaging's default)."""

from collections import OrderedDict, deque

from zope.interface import implementer

from xenclone.interfaces import IEvictionPolicy


@implementer(IEvictionPolicy)
class ClockPolicy:
    """Oldest resident page first, but never one of the last ``protect``
    pages brought in: a page just faulted is likely touched again soon, and
    evicting it would make the clone fault on it at once."""

    name = "clock"

    def __init__(self, protect=64):
        self._ring = OrderedDict()
        self._recent = deque(maxlen=protect) if protect else None

    def paged_in(self, key):
        self._ring[key] = None
        self._ring.move_to_end(key)
        if self._recent is not None:
            self._recent.append(key)

    def dropped(self, key):
        self._ring.pop(key, None)

    def _candidates(self, rank):
        """(rank, key) of evictable pages, oldest first, recent ones last."""
        # Each recent page once, by its latest fault, least recent first.
        recent = list(dict.fromkeys(reversed(self._recent or ())))[::-1]
        spared = set(recent)
        old = [(r, k) for k in self._ring if k not in spared for r in (rank(k),) if r is not None]
        new = [(r, k) for k in recent if k in self._ring for r in (rank(k),) if r is not None]
        return old, new

    def choose(self, count, rank):
        old, new = self._candidates(rank)
        # Under real pressure the protected window is not sacred.
        return [k for _, k in (old + new)[:count]]
