"""The memory-server domain: a Xen domain whose own memory holds blessed
images, so they do not count against dom0, reached through grants.

It never runs.  xenclone creates it paused and owns it, as libxl owns the
console and XenStore grants it seeds into every new guest: dom0 writes the
grant entries into the domain's own table (``GrantTableMapping.seed``) and
maps image pages with xengnttab, as any backend maps a frontend's grants.
Why no agent inside (a Linux domU with gntalloc was the alternative):
nothing runs there, so there is nothing to boot, attack or crash, no guest
kernel spends the domain's memory, and gntalloc's 1024-grant default limit
does not apply.  What limits it is Xen's: ``max_grant_frames`` of the
domain (set from its size), capped by the hypervisor's ``gnttab_max_frames``.

Frames and refs are tied: server frame ``FIRST_GFN + i`` is always granted
as ref ``FIRST_REF + i``, so an image stored in a run of frames is a run of
refs, published in XenStore as one node (``first-ref count``).
"""

import os

import attr
from twisted.internet import defer

from xenclone.backends.xen import xl
from xenclone.backends.xen.libxc import GRANTS_PER_FRAME, PAGE_SIZE
from xenclone.wire import WireError

NAME = "xenclone-memserver"
FIRST_GFN = 1024        # below 4 MiB: the (never run) kernel and boot pages
FIRST_REF = 64          # libxl seeds refs 0 and 1; Linux reserves up to 8
DEFAULT_GNTTAB_MAX_FRAMES = 64  # Xen's default cap: about 128 MiB of v1 grants


def usable_pages(memory_mib):
    return memory_mib * (1 << 20) // PAGE_SIZE - FIRST_GFN


def grant_frames(memory_mib):
    """``max_grant_frames`` for a server domain of ``memory_mib``."""
    refs = FIRST_REF + usable_pages(memory_mib)
    return -(-refs // GRANTS_PER_FRAME)


def xl_settings(name, kernel, memory_mib):
    return {"name": name, "type": "pvh", "kernel": kernel, "memory": memory_mib,
            "maxmem": memory_mib, "vcpus": 1, "max_grant_frames": grant_frames(memory_mib),
            "on_crash": "preserve"}


@defer.inlineCallbacks
def create(reactor, config_dir, name, kernel, memory_mib):
    """``xl create -p`` of a server domain; its domid.  A size needing more
    grant frames than the hypervisor allows is named as such."""
    settings = xl_settings(name, kernel, memory_mib)
    path = os.path.join(config_dir, name + ".cfg")
    with open(path, "w") as f:
        f.write(xl.config_text(settings))
    try:
        return (yield xl.create_paused(reactor, path, name))
    except WireError as e:
        if e.code == "xl-failed" and settings["max_grant_frames"] > DEFAULT_GNTTAB_MAX_FRAMES:
            raise WireError("grant-limit", "a %d MiB memory-server domain needs "
                            "max_grant_frames=%d, above what Xen allows (its boot option "
                            "gnttab_max_frames, default %d): raise gnttab_max_frames on "
                            "Xen's command line or use a smaller domain (%s)"
                            % (memory_mib, settings["max_grant_frames"],
                               DEFAULT_GNTTAB_MAX_FRAMES, e))
        raise


@attr.s(frozen=True)
class Run:
    """``count`` server frames from slot ``first`` (frame FIRST_GFN + first)."""
    first = attr.ib()
    count = attr.ib()

    @property
    def gfns(self):
        return range(FIRST_GFN + self.first, FIRST_GFN + self.first + self.count)

    @property
    def refs(self):
        return range(FIRST_REF + self.first, FIRST_REF + self.first + self.count)

    def xenstore(self):
        return "%d %d" % (self.refs.start, self.count)


class Slots:
    """Which server frames hold which image (plain Python, first fit)."""

    def __init__(self, total):
        self.total = total
        self._used = {}         # first slot -> count

    def take(self, count):
        """A run of ``count`` free slots, or None if no run is that long."""
        start = 0
        for first in sorted(self._used):
            if first - start >= count:
                break
            start = max(start, first + self._used[first])
        if self.total - start < count:
            return None
        self._used[start] = count
        return Run(start, count)

    def keep(self, run):
        """A run known from before (a restarted memory server)."""
        self._used[run.first] = run.count

    def give_back(self, run):
        del self._used[run.first]

    def free(self):
        return self.total - sum(self._used.values())


class ServerDomain:
    """dom0's handle on a running memory-server domain."""

    def __init__(self, domid, memory_mib, fm, gnttab):
        self.domid = domid
        self.slots = Slots(usable_pages(memory_mib))
        self._gnttab = gnttab
        self._table = fm.map_grant_table(domid, grant_frames(memory_mib))

    def grant(self, run, grantee=0):
        self._table.seed(run.refs.start, run.gfns, grantee)

    def revoke(self, run):
        """End the run's grants; how many pages dom0 still had mapped."""
        return self._table.revoke(run.refs.start, run.count)

    def map(self, run, first=0, count=None, writable=False):
        """Pages ``first``.. of the run, grant-mapped into dom0."""
        count = run.count - first if count is None else count
        if first < 0 or count < 1 or first + count > run.count:
            raise ValueError("pages %d..%d outside a run of %d"
                             % (first, first + count - 1, run.count))
        start = run.refs.start + first
        return self._gnttab.map(self.domid, range(start, start + count), writable)

    def close(self):
        self._table.close()
