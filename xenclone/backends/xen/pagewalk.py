"""x86-64 guest page-table walks over an image's pages (no I/O of its own).

A lazy Linux clone needs a few pages resident before it runs (see
``linux.resume_pages``); they are found from kernel virtual addresses in
the master's saved vCPU state, through the master's own page tables.
"""

import struct

PRESENT, LARGE = 1 << 0, 1 << 7
FRAME = 0x000FFFFFFFFFF000          # address bits 12-51 of an entry
CR4_LA57 = 1 << 12
SHIFTS = (39, 30, 21, 12)           # PML4, PDPT, PD, PT


class NotMapped(Exception):
    """The address has no mapping in these page tables."""


def virt_to_pfn(va, cr3, read_page, npages):
    """The pfn that backs virtual address ``va`` under 4-level paging rooted
    at ``cr3``; ``read_page(pfn)`` gives the image's page.  1 GiB and 2 MiB
    pages (Linux's direct map) are followed; a table outside the image's
    ``npages`` or an entry not present raises NotMapped."""
    table = (cr3 & FRAME) >> 12
    for shift in SHIFTS:
        if table >= npages:
            raise NotMapped("%#x: page table at pfn %#x is outside the image" % (va, table))
        entry, = struct.unpack_from("<Q", read_page(table), ((va >> shift) & 0x1FF) * 8)
        if not entry & PRESENT:
            raise NotMapped("%#x: not present at level %d" % (va, SHIFTS.index(shift) + 1))
        if shift in (30, 21) and entry & LARGE:
            span = (1 << shift) - 1
            return ((entry & FRAME & ~span) | (va & span)) >> 12
        table = (entry & FRAME) >> 12
    return table
