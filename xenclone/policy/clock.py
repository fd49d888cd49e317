"""Clock sweep that spares recently paged-in pages (xenpaging's default)."""

from collections import OrderedDict, deque

from zope.interface import implementer

from xenclone.interfaces import IEvictionPolicy


@implementer(IEvictionPolicy)
class ClockPolicy:
    """Oldest resident page first, but never one of the last ``protect``
    pages brought in: a page just faulted is likely touched again soon, and
    evicting it would make the clone fault on it at once."""

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

    def choose(self, count, evictable):
        recent = set(self._recent or ())
        chosen = []
        for key in self._ring:
            if len(chosen) >= count:
                break
            if key not in recent and evictable(key):
                chosen.append(key)
        if len(chosen) < count:
            # Under real pressure the protected window is not sacred.
            for key in reversed(self._recent or ()):
                if len(chosen) >= count:
                    break
                if key in self._ring and key not in chosen and evictable(key):
                    chosen.append(key)
        return chosen
