"""Clones whose pages the pager never faults in: filled before they run
(stock Xen: no MEM_PAGING), or forks that Xen fills itself.

The backend copies every non-zero page of the image into the clone before
its first instruction, so the pager never hears of a fault from it.  The
region still answers the pager's calls truthfully: a page the pager loads
is written through a foreign mapping, and the page states follow.
"""

from zope.interface import implementer

from xenclone.interfaces import IFaultRegion, IFaultSource, PageState


@implementer(IFaultRegion)
class FilledRegion:
    """A clone whose pages the backend filled; ``prefilled`` are the
    image's non-zero pages, each now the clone's own frame."""

    fill_mode = "fill-before-run"

    def __init__(self, domid, npages, image, fmem, prefilled):
        self.domid = domid
        self.npages = npages
        self.prefilled = list(prefilled)
        self._image = image
        self._fmem = fmem
        self._state = bytearray(npages)
        for pfn in self.prefilled:
            self._state[pfn] = PageState.SHARED

    def fileno(self):
        return -1       # nothing to poll: the clone never faults

    def _write(self, pfn, data):
        with self._fmem.map(self.domid, [pfn]) as page:
            page.buffer[:] = data

    def load_zero(self, pfn):
        # A page the image has as zero is still zero in the fresh domain.
        self._state[pfn] = PageState.ZERO

    def load_shared(self, pfn):
        self._write(pfn, self._image.read_page(pfn))
        self._state[pfn] = PageState.SHARED
        return True

    def unprotect(self, pfn):
        # Xen does not write-protect a filled page: the write went through.
        self._state[pfn] = PageState.PRIVATE

    def load_copy(self, pfn, data):
        self._write(pfn, data)
        self._state[pfn] = PageState.PRIVATE

    def share(self, on):
        """Stock Xen shares nothing: each clone has its own frames."""

    def wake_all(self):
        """Nothing waits: a filled clone never faults."""

    def hold(self, pfns):
        before = [self._state[pfn] for pfn in pfns]
        self.remember(pfns, PageState.HOLD)
        return before

    def release(self, pfns):
        self.remember(pfns, PageState.ABSENT)

    def remember(self, pfns, state):
        for pfn in pfns:
            self._state[pfn] = state

    def states(self):
        return memoryview(self._state).toreadonly()

    def close(self):
        """Nothing is held for the pager: no fault handle, no mapping."""


class TouchFill:
    """A fork's loads (a hoard's): a read-only foreign map of the page makes
    Xen fill it from the image domain, shared (writing the image's bytes
    would give the clone a private copy).  A mixin of the fork regions;
    needs ``domid``, ``_fmem`` and ``_state``."""

    def _touch(self, pfn):
        with self._fmem.map(self.domid, [pfn], writable=False):
            pass

    def load_zero(self, pfn):
        self._touch(pfn)
        self._state[pfn] = PageState.ZERO

    def load_shared(self, pfn):
        self._touch(pfn)
        self._state[pfn] = PageState.SHARED
        return True


class ForkRegion(TouchFill, FilledRegion):
    """A fork of an image domain: Xen fills each page on the clone's first
    touch, inside the hypervisor (shared with the image domain until
    written), so the pager hears of no fault and nothing is prefilled."""

    fill_mode = "fork"

    def __init__(self, domid, npages, image, fmem):
        super().__init__(domid, npages, image, fmem, [])

    def drop_paged_out(self):
        """Before a reset: nothing, as Xen alone fills this fork."""


@implementer(IFaultSource)
class FilledSource:
    """The fault source of filled clones: they raise no faults, so there is
    nothing to serve, to grant credits to or to keep out of the way."""

    def start(self, deliver):
        pass

    def add(self, region):
        pass

    def remove(self, domid):
        pass

    def set_credits(self, host, clones):
        pass

    def exclusively(self, fn):
        return fn()

    def stop(self):
        pass
