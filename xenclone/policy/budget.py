"""Host budget policies: plain Python, no I/O.  The daemon feeds them what
the kernel says and applies what they answer.

``Watermarks`` moves the host budget with real memory pressure, as kswapd
does with its zone watermarks: below the low watermark of available memory
the budget shrinks until the high one would be met again; above the high
one it grows back, never past the ceiling (the configured budget).  In
between it holds, so the budget does not flap.

``Bursts`` is the host policy for clones (``memory_limit_mib``,
``burst_size_mib``, ``burst_time_ms``): a clone may hold up to its limit plus
the burst, for at most the burst time; then it is brought back to its limit
and held there for as long again.
"""

import attr


@attr.s
class Watermarks:
    ceiling = attr.ib()        # pages: the configured budget
    low = attr.ib()            # pages of available memory
    high = attr.ib()
    floor = attr.ib()          # pages: clones always get this much to run on
    psi_limit = attr.ib(default=0.0)   # PSI "some avg10" %, 0 = not used

    def __attrs_post_init__(self):
        if not 0 <= self.low <= self.high:
            raise ValueError("watermarks: need 0 <= low <= high")

    def budget(self, current, allocated, available, psi_some=None):
        """The budget (pages) for a host at ``available`` pages free, whose
        clones hold ``allocated`` under a budget of ``current``."""
        pressed = self.psi_limit and psi_some is not None and psi_some > self.psi_limit
        if available < self.low or pressed:
            # Give back what the high watermark lacks; under PSI pressure with
            # memory seemingly free (a cgroup limit), a tenth of it.
            shrink = max(self.high - available, allocated // 10 if pressed else 0, 1)
            new = min(current, allocated - shrink)
        elif available > self.high:
            new = current + (available - self.high)
        else:
            new = current
        return max(self.floor, min(self.ceiling, new))


@attr.s
class _Burst:
    over_since = attr.ib(default=None)   # when the clone went over its limit
    cool_until = attr.ib(default=None)   # no burst before this


@attr.s
class Bursts:
    limit = attr.ib()          # pages a clone may hold
    burst = attr.ib()          # pages over the limit, for a while
    burst_ns = attr.ib()
    _clones = attr.ib(factory=dict)

    def step(self, now_ns, resident):
        """``resident``: domid -> pages.  Returns domid -> (cap, evict_to):
        the cap its pages may not exceed now, and the count to evict down
        to at once (None: nothing to evict)."""
        out = {}
        for domid in set(self._clones) - set(resident):
            del self._clones[domid]
        for domid, pages in resident.items():
            b = self._clones.setdefault(domid, _Burst())
            evict_to = None
            if b.cool_until is not None and now_ns >= b.cool_until:
                b.cool_until = None
            if pages <= self.limit:
                b.over_since = None
            elif b.over_since is None:
                b.over_since = now_ns
            elif now_ns - b.over_since >= self.burst_ns:
                b.over_since = None
                b.cool_until = now_ns + self.burst_ns
                evict_to = self.limit
            cap = self.limit if b.cool_until is not None else self.limit + self.burst
            out[domid] = (cap, evict_to)
        return out
