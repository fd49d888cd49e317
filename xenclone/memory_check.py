"""What a finished clone's data pages must hold: the image's data set plus
the clone's own writes.  The kill and cut self-tests compare every data
page of every clone with this (no page lost, none from another clone).

The data set is regenerated in C (``lx_fill_dataset_range``), one page at
a time, so checking a 1 GiB clone needs no copy of the image.
"""

from xenclone import workload
from xenclone.interfaces import PAGE_SIZE

M64 = (1 << 64) - 1


def data_pfns(params):
    return range(params.data_first_pfn, params.data_first_pfn + params.data_npages)


def _pages_c():
    """pages.c, from whichever shim this host built (a Xen dom0 builds
    only the Xen one)."""
    try:
        from xenclone._linux import ffi, lib
    except ImportError:
        from xenclone._xen import ffi, lib
    return ffi, lib


class ExpectedMemory:
    """The 64-bit word sums (``lx_page_sums``) a finished clone's data
    pages must have.  The clone's writes are worked out once (the workload
    is run in Python), the data set page by page in C."""

    def __init__(self, params, clone_id, input):
        self.params = params
        # A write changes one 32-bit word: the low or high half of a 64-bit one.
        self._delta = {}
        for (p, w), value in workload.clone_writes(params, clone_id, input).items():
            change = (value - params.image_word(p, w)) << (32 * (w & 1))
            self._delta[p] = (self._delta.get(p, 0) + change) & M64

    def sums(self, pfns):
        ffi, lib = _pages_c()
        params = self.params
        page = ffi.new("char[]", PAGE_SIZE)
        out = ffi.new("uint64_t[1]")
        sums = []
        for pfn in pfns:
            ffi.memmove(page, bytes(PAGE_SIZE), PAGE_SIZE)
            lib.lx_fill_dataset_range(page, pfn, 1, params.data_first_pfn, params.data_npages,
                                      params.seed, params.zero_every)
            lib.lx_page_sums(page, 1, out)
            sums.append((out[0] + self._delta.get(pfn, 0)) & M64)
        return sums
