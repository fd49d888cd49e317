"""Clock sweep that spares recently paged-in pages (xenpaging's default)."""

from collections import deque

from zope.interface import implementer

from xenclone.interfaces import IEvictionPolicy


@implementer(IEvictionPolicy)
class ClockPolicy:
    """Oldest resident page first, but never one of the last ``protect``
    pages brought in: a page just faulted is likely touched again soon, and
    evicting it would make the clone fault on it at once.

    The order is a plain dict (insertion-ordered, a page moved to its end
    when paged in again): a host holds millions of pages here."""

    name = "clock"

    def __init__(self, protect=64):
        self._ring = {}
        self._recent = deque(maxlen=protect) if protect else None

    def paged_in(self, keys):
        ring, pop = self._ring, self._ring.pop
        for k in keys:
            pop(k, None)    # paged in again: to the end
            ring[k] = None
        if self._recent is not None:
            self._recent.extend(keys)

    def added(self, keys):
        """Pages resident with no fault of theirs (fault-around, a working
        set): newest, but not spared, as nothing touched them yet.  None of
        them was resident."""
        self._ring.update(dict.fromkeys(keys))

    def dropped(self, keys):
        pop = self._ring.pop
        for k in keys:
            pop(k, None)

    def _spared(self):
        """Each recent page once, by its latest fault, least recent first."""
        return list(dict.fromkeys(reversed(self._recent or ())))[::-1]

    def _old(self, rank, spared):
        """(rank, key) of evictable pages outside the recent window, oldest first."""
        for k in self._ring:
            if k not in spared:
                r = rank(k)
                if r is not None:
                    yield r, k

    def _new(self, rank, recent):
        return [(r, k) for k in recent if k in self._ring for r in (rank(k),) if r is not None]

    def choose(self, count, rank):
        if count <= 0:
            return []
        recent = self._spared()
        out = []
        for _, k in self._old(rank, set(recent)):
            out.append(k)
            if len(out) == count:
                return out
        # Under real pressure the protected window is not sacred.
        return out + [k for _, k in self._new(rank, recent)][:count - len(out)]
