"""Balloon targets for clones the hypervisor cannot page: plain Python, no I/O.

On a Xen without MEM_PAGING a clone's frames are its own, and only the
guest can give some back: its balloon driver follows ``memory/target``.
``Balloons`` answers the targets for the hypervisor's free memory, with the
host's watermarks: below the low one, the clones are asked for what the
high one lacks, each in proportion to what it holds above its floor; above
the high one, targets grow back toward each clone's ceiling (its nominal
memory, or the operator's target), in proportion to what each lacks.  In
between they hold, so targets do not flap.  A guest gives memory back at
its own pace, and may refuse: the policy asks, it cannot take.
"""

import attr


@attr.s(frozen=True)
class Balloonable:
    nominal = attr.ib()     # pages the clone was made with
    ceiling = attr.ib()     # the most it may be given back (nominal or the operator's)
    target = attr.ib()      # the target it has now


@attr.s
class Balloons:
    low = attr.ib()             # pages of hypervisor free memory
    high = attr.ib()
    floor_percent = attr.ib()   # of its nominal memory, a clone is never asked below

    def __attrs_post_init__(self):
        if not 0 <= self.low <= self.high:
            raise ValueError("balloon watermarks: need 0 <= low <= high")
        if not 1 <= self.floor_percent <= 100:
            raise ValueError("balloon floor: a percentage from 1 to 100")

    def floor(self, clone):
        return min(clone.ceiling, clone.nominal * self.floor_percent // 100)

    def targets(self, free, clones):
        """``clones``: domid -> Balloonable.  Returns domid -> new target,
        for the clones whose target changes."""
        if free < self.low:
            room = {d: c.target - self.floor(c) for d, c in clones.items()}
            moves = _share(self.high - free, room)
            return {d: clones[d].target - n for d, n in moves.items()}
        if free > self.high:
            lack = {d: c.ceiling - c.target for d, c in clones.items()}
            moves = _share(free - self.high, lack)
            return {d: clones[d].target + n for d, n in moves.items()}
        return {}


def _share(amount, room):
    """``amount`` split over ``room`` (domid -> pages it can move) in
    proportion to it, rounded up and never past a clone's room; only
    non-zero moves."""
    total = sum(r for r in room.values() if r > 0)
    if amount <= 0 or total <= 0:
        return {}
    out = {}
    for domid, r in sorted(room.items()):
        if r > 0:
            n = min(r, -(-amount * r // total))
            if n:
                out[domid] = n
    return out
