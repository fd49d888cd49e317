"""The ledger's records: a page's kind, and an account per image and per clone.

A page's kind is one byte (its code, an index into ``KINDS``) in its
clone's ``Kinds``; an image page's mappers are a 2-byte count in its
``ImageAccount``, the clones themselves found from their kinds when asked.
Only ``xenclone.ledger`` changes them.
"""

from array import array

import attr

SHARED, PRIVATE, ZERO, EVICTED, PAGED_OUT = "shared", "private", "zero", "evicted", "paged-out"
DROP_CLEAN, DROP_SHARED, PAGE_OUT = "drop-clean", "drop-shared", "page-out"
CLASSES = (DROP_CLEAN, DROP_SHARED, PAGE_OUT)
KINDS = (None, SHARED, PRIVATE, ZERO, EVICTED, PAGED_OUT)     # a page's code is its index
_CODE = {kind: code for code, kind in enumerate(KINDS)}
_SHARED = _CODE[SHARED]


def key(domid, pfn):
    """A page's key in the eviction policy: one int, not a tuple."""
    return domid << 32 | pfn


def unkey(k):
    return k >> 32, k & 0xFFFFFFFF


class Kinds:
    """A clone's page kinds, one byte a page."""

    def __init__(self, npages):
        self.codes = bytearray(npages)

    def get(self, pfn):
        return KINDS[self.codes[pfn]] if 0 <= pfn < len(self.codes) else None

    def items(self):
        """(pfn, kind) of every page with a kind."""
        codes = self.codes
        return [(pfn, KINDS[c]) for pfn, c in enumerate(codes) if c]


@attr.s
class ImageAccount:
    npages = attr.ib()
    cached = attr.ib(factory=set)      # image pages this host holds in RAM
    clones = attr.ib(factory=dict)     # domid -> CloneAccount of its clones
    held = attr.ib(default=False)      # the hypervisor holds it: its cache is not budget memory

    def __attrs_post_init__(self):
        self.mapcount = array("H", bytes(2 * self.npages))   # clones mapping each page

    def mappers(self, pfn):
        if not self.mapcount[pfn]:
            return ()
        return tuple(d for d, a in self.clones.items() if a.kind.codes[pfn] == _SHARED)


@attr.s
class CloneAccount:
    image_id = attr.ib()
    npages = attr.ib()
    kind = attr.ib(default=None)       # Kinds: SHARED | PRIVATE | ZERO | EVICTED | PAGED_OUT | None
    counts = attr.ib(factory=lambda: dict.fromkeys((SHARED, PRIVATE, ZERO, EVICTED, PAGED_OUT), 0))
    slots = attr.ib(factory=dict)      # paged-out pfn -> (slot, crc)
    free_slots = attr.ib(factory=list)
    next_slot = attr.ib(default=0)
    target = attr.ib(default=None)     # pages; None: no target
    limit = attr.ib(default=None)      # pages; None: no limit
    cap = attr.ib(default=None)        # pages: the host's burst policy; None: none
    classes = attr.ib(factory=lambda: set(CLASSES))   # eviction classes allowed
    share = attr.ib(default=True)      # share.onfetch: map image pages, or copy them
    faults = attr.ib(default=0)
    prefetched = attr.ib(default=0)    # pages mapped ahead of their faults (working set)
    around = attr.ib(default=0)        # pages mapped around a fault (fault-around)
    evictions = attr.ib(factory=lambda: dict.fromkeys(CLASSES, 0))
    pageout_error = attr.ib(default=None)

    def __attrs_post_init__(self):
        if self.kind is None:
            self.kind = Kinds(self.npages)

    @property
    def resident(self):
        return self.counts[SHARED] + self.counts[PRIVATE]
