"""The page ledger: every clone page on the host, against one budget.

Plain Python, no I/O: the pager tells it what the kernel (or hypervisor)
did, it answers how much room there is and which pages to evict.

The budget counts, for every clone, each page mapped into it, as
GridCentric's "resident".  That over-counts pages the clones share, so the
real host figure (measured from the kernel) stays below it.  A page a clone
has written is "private": the clean-eviction path never takes it, because
that would drop the only copy of the clone's data.
"""

import attr
from zope.interface import implementer

from xenclone.interfaces import ILedger


@attr.s
class CloneAccount:
    image_id = attr.ib()
    npages = attr.ib()
    resident = attr.ib(factory=set)
    private = attr.ib(factory=set)
    faults = attr.ib(default=0)
    evicted = attr.ib(default=0)


class LedgerError(Exception):
    pass


@implementer(ILedger)
class Ledger:
    def __init__(self, budget_pages, policy, credit_batch=256):
        if budget_pages <= 0:
            raise LedgerError("the host budget must be positive")
        self.budget_pages = budget_pages
        self.credit_batch = credit_batch
        self.policy = policy
        self._clones = {}
        self._used = 0
        self.peak = 0
        self._journal = None

    # -- journal

    def set_journal(self, write):
        self._journal = write

    def _log(self, *record):
        if self._journal is not None:
            self._journal(record)

    def replay(self, records):
        journal, self._journal = self._journal, None
        try:
            for op, *args in records:
                getattr(self, _REPLAYABLE[op])(*args)
        finally:
            self._journal = journal

    # -- clones

    def add_clone(self, domid, image_id, npages):
        if domid in self._clones:
            raise LedgerError("clone %d is already accounted" % domid)
        self._clones[domid] = CloneAccount(image_id, npages)
        self._log("add", domid, image_id, npages)

    def remove_clone(self, domid):
        acct = self._clones.pop(domid, None)
        if acct is None:
            return
        self._used -= len(acct.resident)
        for pfn in acct.resident:
            self.policy.dropped((domid, pfn))
        self._log("remove", domid)

    def has_clone(self, domid):
        return domid in self._clones

    # -- pages

    def loaded(self, domid, pfns):
        acct = self._clones.get(domid)
        if acct is None:
            return
        for pfn in pfns:
            if not 0 <= pfn < acct.npages:
                raise LedgerError("clone %d: page %d out of range" % (domid, pfn))
            acct.faults += 1
            if pfn not in acct.resident:
                acct.resident.add(pfn)
                self._used += 1
                self.policy.paged_in((domid, pfn))
        self.peak = max(self.peak, self._used)
        self._log("loaded", domid, list(pfns))

    def written(self, domid, pfns):
        """The kernel says these pages were written: never drop them clean."""
        acct = self._clones.get(domid)
        if acct is not None:
            acct.private.update(p for p in pfns if p in acct.resident)
            self._log("written", domid, list(pfns))

    def evicted(self, domid, pfns):
        acct = self._clones.get(domid)
        if acct is None:
            return
        for pfn in pfns:
            if pfn in acct.private:
                raise LedgerError("clone %d: page %d is private and cannot be dropped" % (domid, pfn))
            if pfn in acct.resident:
                acct.resident.discard(pfn)
                acct.evicted += 1
                self._used -= 1
                self.policy.dropped((domid, pfn))
        self._log("evicted", domid, list(pfns))

    def take_credits(self):
        return max(0, min(self.credit_batch, self.budget_pages - self._used))

    def victims(self, count):
        def clean(key):
            acct = self._clones.get(key[0])
            return acct is not None and key[1] in acct.resident and key[1] not in acct.private

        return self.policy.choose(count, clean)

    # -- figures

    def clone_stats(self, domid):
        acct = self._clones[domid]
        return {
            "image": acct.image_id,
            "nominal_pages": acct.npages,
            "resident_pages": len(acct.resident),
            "private_pages": len(acct.private),
            "faults": acct.faults,
            "evicted_pages": acct.evicted,
        }

    def host_stats(self):
        return {
            "budget_pages": self.budget_pages,
            "used_pages": self._used,
            "peak_pages": self.peak,
            "clones": len(self._clones),
        }


_REPLAYABLE = {
    "add": "add_clone",
    "remove": "remove_clone",
    "loaded": "loaded",
    "written": "written",
    "evicted": "evicted",
}
