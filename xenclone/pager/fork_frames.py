"""Forks' own frames in the ledger, as the hypervisor lists them.

The hypervisor fills a fork's pages itself, shared with its image domain
until written, so no fault tells the pager that a fork wrote a page.  So
every INTERVAL, and before each decision on room for a fork, the pager asks
for the pages each fork owns (``IForkRegion.owned``) and the ledger learns
the difference since the last time: pages owned now are private (the only
copy, which only page-out may take), pages owned no longer (a reset, its
balloon, or page-out) leave it unless the ledger holds them paged out.
Pages an eviction is working on are left for the eviction to account.
"""

from twisted.logger import Logger

from xenclone import ledger as L
from xenclone.interfaces import PageState

INTERVAL = 0.5      # seconds between two looks at every fork's frames


class ForkFrames:
    log = Logger()

    def __init__(self, ledger):
        self.ledger = ledger
        self._regions = {}      # domid -> IForkRegion
        self._owned = {}        # domid -> the pages it owned at the last look

    def __contains__(self, domid):
        return domid in self._regions

    def __bool__(self):
        return bool(self._regions)

    def add(self, region):
        self._regions[region.domid] = region
        self._owned[region.domid] = set()

    def remove(self, domid):
        self._regions.pop(domid, None)
        self._owned.pop(domid, None)

    def sync(self, domids=None, busy=frozenset()):
        """Look at the forks' frames (all, or ``domids``) and tell the
        ledger; ``busy``: (domid, pfn) an eviction works on."""
        for domid in list(self._regions) if domids is None else domids:
            region = self._regions.get(domid)
            if region is None:
                continue
            try:
                owned = set(region.owned())
            except Exception as e:      # a fork being destroyed: it goes soon
                self.log.debug("fork {domid}: no frame list: {why}", domid=domid, why=e)
                continue
            before = self._owned[domid]
            held = {p for d, p in busy if d == domid}
            kinds = self.ledger.kinds(domid)
            new = sorted(p for p in owned - before - held if kinds.get(p) != L.PAGED_OUT)
            gone = sorted(p for p in before - owned - held if kinds.get(p) == L.PRIVATE)
            # The region's states follow, so no load takes an owned page
            # for an absent one (a hoard's).
            if new:
                self.ledger.written(domid, new)
                region.remember(new, PageState.PRIVATE)
            if gone:
                self.ledger.unwritten(domid, gone)
                region.remember(gone, PageState.ABSENT)
            # A busy page is looked at again next time.
            self._owned[domid] = (owned - held) | (before & held)
