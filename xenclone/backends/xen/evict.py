"""Taking pages out of lazy clones with mem_paging (runs in the thread pool).

Nominating a page makes it not present to the guest, so its contents are
frozen from then on: a touch pauses the vCPU and sends a paging request
(flagged EVICT_FAIL), which the region answers at once (``paging.py``),
and the evict that follows fails.  A page whose evict fails simply stays
the clone's; it is counted, never an error.  The foreign map that reads a
frozen page waits while a touch has it on its way back in.

Everything here has its own libxc handles and one lock, so the reactor's
handle (loads, ring answers) is never shared with a thread.
"""

import threading
import time

from xenclone.backends.xen import libxc, xenctrl
from xenclone.interfaces import PAGE_SIZE
from xenclone.pageout_store import write_pages

ZERO_PAGE = bytes(PAGE_SIZE)


class Dropped(list):
    """Pages dropped; ``written``: pages kept because the guest wrote them."""

    written = ()


class Evictor:
    def __init__(self):
        self.xc = xenctrl.XenCtrl()
        self.fm = libxc.ForeignMemory()
        self._lock = threading.Lock()
        self.evict_failed = 0       # pages that stayed after an evict, all clones

    def evict_all(self, domid, pfns):
        """A fresh lazy clone, paused: nominate and evict every page in one
        C call.  Returns ({pfn: errno} of pages Xen kept, µs per page)."""
        with self._lock:
            t = time.monotonic_ns()
            errs = self.xc.paging_evict_pages(domid, pfns, nominate=True, evict=True)
            us = (time.monotonic_ns() - t) / 1000 / max(1, len(pfns))
        return {p: e for p, e in zip(pfns, errs) if e}, us

    def _nominated(self, domid, pfns):
        errs = self.xc.paging_evict_pages(domid, pfns, nominate=True, evict=False)
        return [p for p, e in zip(pfns, errs) if not e]

    def _evict(self, domid, pfns):
        errs = self.xc.paging_evict_pages(domid, pfns, nominate=False, evict=True)
        self.evict_failed += sum(1 for e in errs if e)
        return [p for p, e in zip(pfns, errs) if not e]

    def drop_clean(self, domid, pfns, image):
        """Evict the pages that still hold the image's contents; a page the
        guest wrote (Xen does not tell us) is found changed and kept.  The
        list's ``written`` names every page kept."""
        with self._lock:
            frozen = self._nominated(domid, pfns)
            if not frozen:
                return []
            clean = []
            with self.fm.map(domid, frozen, writable=False) as m:
                buf = memoryview(m.buffer)
                for i, pfn in enumerate(frozen):
                    want = ZERO_PAGE if image.zero[pfn] else image.read_page(pfn)
                    if buf[i * PAGE_SIZE:(i + 1) * PAGE_SIZE] == want:
                        clean.append(pfn)
            dropped = Dropped(self._evict(domid, clean))
            # Kept, so taken as written: found changed, or not frozen (a
            # failed nominate or evict), so possibly changed since.
            dropped.written = sorted(set(pfns) - set(dropped))
            return dropped

    def page_out(self, domid, pfns, slots, store_path, sync):
        """Write the pages to their slots of the store (and its index), then
        evict them; nothing is evicted if the store fails.  A page already
        nominated (an earlier drop found it written) is frozen too.
        Returns each page's CRC32, None for a page that stayed (its evict
        failed: touched meanwhile, or never frozen)."""
        with self._lock:
            self._nominated(domid, pfns)
            with self.fm.map(domid, pfns, writable=False) as m:
                data = bytes(m.buffer)
            crcs = write_pages(store_path, pfns, slots, data, sync)
            evicted = set(self._evict(domid, pfns))
        return [crc if pfn in evicted else None for pfn, crc in zip(pfns, crcs)]

    def close(self):
        self.fm.close()
        self.xc.close()

