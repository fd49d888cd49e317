"""The pager: every clone fault the fast path could not serve, decided here.

    fault -> fetchable? -> fetch -> room? -> evict -> load -> resume

    pipeline.py   the claim: records in, requests queued, ``_pump`` serves them
    fast_path.py  the fast path's record batches, grouped, stale ones dropped
    requests.py   waiting faults: one request per clone and page, in queues
    fetching.py   fetches from the memory server, retried with backoff
    eviction.py   eviction rounds (from a clone, from the host) and cache holes
    hoard.py      hoard and working-set prefetch: filling ahead of faults
    audit.py      where the ledger, the state map and the kernel disagree
"""

from xenclone.pager.pipeline import Pager

__all__ = ["Pager"]
