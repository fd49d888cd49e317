"""Audit: where the ledger, the fast path's state map and the kernel disagree on a page.

Exact once the clone is quiet; while it runs, records on their way show as
brief disagreements.
"""

from xenclone import ledger as L
from xenclone.interfaces import PageState

# The ledger's kind -> the (fast path state, kernel kind) pairs that agree
# with it.  A held page may be mid-eviction (a page-out the kernel has done
# but the pager has not heard back from); a private page whose write has not
# landed is still the image's page in the kernel.
_S, _H, _P, _Z, _A = (PageState.SHARED, PageState.HOLD, PageState.PRIVATE, PageState.ZERO,
                      PageState.ABSENT)
AGREE = {
    L.SHARED: {(_S, _S), (_H, _S), (_H, _A)},
    L.PRIVATE: {(_P, _P), (_P, _S), (_P, _Z), (_H, _P), (_H, _S), (_H, _Z), (_H, _A)},
    L.ZERO: {(_Z, _Z), (_H, _Z), (_H, _A)},
    L.PAGED_OUT: {(_H, _A)},
    L.EVICTED: {(_A, _A), (_H, _A)},
    None: {(_A, _A), (_H, _A)},
}


def disagreements(ledger, domid, states, kernel):
    """(pfn, ledger kind, state, kernel kind) of each page whose three views disagree."""
    kinds = ledger.kinds(domid)
    return [(pfn, kinds.get(pfn), states[pfn], k) for pfn, k in enumerate(kernel)
            if (states[pfn], k) not in AGREE[kinds.get(pfn)]]
