"""The fast path's records: grouped by kind and clone, stale ones dropped.

The backend's fault source reports what it did, and what it could not do,
in batches of (domid, kind, pfn) records, where pfn may be a list of one
clone's pages of that kind (a storm's, in one record) and a fault-around
record's is a range.  The pipeline accounts a batch one kind and clone at
a time, whole or not at all.
"""

from collections import defaultdict

from xenclone.interfaces import FaultKind, PageState


# What a fast-path record says the page became; a record whose page is no
# longer in that state is stale.
FAST_PATH_STATE = {FaultKind.SERVED: PageState.SHARED, FaultKind.ZERO: PageState.ZERO,
                   FaultKind.WRITTEN: PageState.PRIVATE, FaultKind.AROUND: PageState.SHARED,
                   FaultKind.AROUND_ZERO: PageState.ZERO}


def _still(run, states, now):
    """The pages of a run still in state ``now``: the run itself if all are."""
    if bytes(states[run.start:run.stop]).count(now) == len(run):
        return run
    return [p for p in run if states[p] == now]


def group(records, clones):
    """{kind: {domid: pfns}} of the records of clones still served; a
    fault-around kind's pfns are runs, kept whole where they still hold."""
    by_kind = defaultdict(lambda: defaultdict(list))
    for domid, kind, pfn in records:
        if kind == FaultKind.AROUND or isinstance(pfn, int):
            by_kind[kind][domid].append(pfn)      # fault-around: runs, kept whole
        else:       # a list, or zero pages around a fault: mostly 1-page runs
            by_kind[kind][domid] += pfn
    for kind, by_clone in by_kind.items():
        for domid in list(by_clone):
            if domid not in clones:
                del by_clone[domid]
            elif kind in FAST_PATH_STATE:
                # A page held or evicted since the fast path decided: the
                # record is stale.  The eviction accounted for it (a write
                # allowed but not landed was dropped with the page).
                states, now = clones[domid][0].states(), FAST_PATH_STATE[kind]
                if kind == FaultKind.AROUND:
                    by_clone[domid] = [_still(run, states, now) for run in by_clone[domid]]
                else:
                    by_clone[domid] = [p for p in by_clone[domid] if states[p] == now]
    return by_kind


def account(ledger, by_kind):
    """Tell the ledger what the fast path mapped."""
    for domid, pfns in by_kind[FaultKind.SERVED].items():
        ledger.mapped_shared(domid, pfns)
    for domid, mapped in by_kind[FaultKind.AROUND].items():
        for run in mapped:
            ledger.mapped_shared(domid, run, how="around")
    for domid, pfns in by_kind[FaultKind.AROUND_ZERO].items():
        ledger.mapped_zero(domid, pfns, how="around")
    for domid, pfns in by_kind[FaultKind.ZERO].items():
        ledger.mapped_zero(domid, pfns)
    for domid, pfns in by_kind[FaultKind.WRITTEN].items():
        ledger.written(domid, pfns)
