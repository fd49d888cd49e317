"""Issue #3's numbers, through the real daemon on the KVM backend.

    .venv/bin/python bench/ledger.py [--memory-mib 64] [--runs 3]

- clean eviction: a clone is hoarded full, then ``evict --to 0`` with
  drop-clean only; pages/s against the 100k pages/s goal.
- page-out and back: the clone writes most of its pages, is evicted with
  page-out, then hoarded back (every page read from the store, CRC checked);
  pages/s each way, and the same clone's memory checksums before and after.
- a paged-out page against a page fetched from the memory server: per page,
  bringing pages back from the page-out store (read, CRC, UFFDIO_COPY) vs
  the memory-server fetch the pager makes on a FETCH fault, same run.
Every page count comes from the kernel (the VMM host's pagemap).
Writes bench/results/ledger-<timestamp>.json and prints its summary.
"""

import argparse
import sys
import time

from twisted.internet import defer, task

from xenclone.selftests.scenarios import private_session

import results_file

EVICT_GOAL = 100_000


def _now():
    return time.perf_counter()


@defer.inlineCallbacks
def one_run(s, memory_mib, n):
    name = "bl%d" % n
    pages = memory_mib * 256
    yield s.call("create", config={"name": name + "-m", "memory": memory_mib,
                                   "write_pages": pages * 3 // 4})
    yield s.call("bless", domain=name + "-m", name=name)

    # clean eviction
    [c] = (yield s.call("launch", image=name, paused=True))["clones"]
    yield s.call("hoard", domain=c["domid"], rate=10**7, wait=True)
    yield s.call("set", domain=c["domid"], knobs={"evict": ["drop-clean"]})
    before = (yield s.call("host"))["kernel"]["clones"][str(c["domid"])]
    t0 = _now()
    yield s.call("evict", domain=c["domid"], to=0)
    dt = _now() - t0
    after = (yield s.call("host"))["kernel"]["clones"][str(c["domid"])]
    dropped = before["shared"] - after["shared"]
    yield s.call("destroy", domain=c["domid"])

    # page-out and back, with checksums of all memory
    [w] = (yield s.call("launch", image=name))["clones"]
    info = yield s.call("wait", domain=w["domid"], timeout=600)
    sums = (yield s.call("page_sums", domain=w["domid"], pfns=list(range(pages))))["sums"]
    yield s.call("set", domain=w["domid"], knobs={"evict": ["drop-clean", "page-out"]})
    t0 = _now()
    out = yield s.call("evict", domain=w["domid"], to=0)
    t_out = _now() - t0
    paged = out["paged_out_pages"]
    t0 = _now()
    yield s.call("hoard", domain=w["domid"], rate=10**7, wait=True)
    t_in = _now() - t0
    again = (yield s.call("page_sums", domain=w["domid"], pfns=list(range(pages))))["sums"]
    yield s.call("destroy", domain=w["domid"])

    # what the pager does on a FETCH fault: one page from the memory server
    memserver = s.service.getServiceNamed("core").controller.memserver
    fetched = 256
    t0 = _now()
    for pfn in range(1000, 1000 + fetched):
        yield memserver.fetch(name, pfn, 1)
    t_fetch = _now() - t0
    yield s.call("discard", image=name, force=True)
    yield s.call("destroy", domain=name + "-m")
    return {
        "answer_right": info["result"] == info["expected"],
        "clean_evicted_pages": dropped, "clean_evict_s": dt,
        "clean_evict_pages_per_s": dropped / dt if dt else None,
        "paged_out_pages": paged, "page_out_s": t_out,
        "page_out_pages_per_s": paged / t_out if t_out else None,
        "page_in_s": t_in, "page_in_us_per_page": 1e6 * t_in / max(1, paged),
        "memory_intact": sums == again,
        "fetched_pages": fetched,
        "fetch_us_per_page": 1e6 * t_fetch / max(1, fetched),
    }


@defer.inlineCallbacks
def bench(reactor, args):
    s = yield private_session(reactor)
    runs = []
    try:
        for n in range(args.runs):
            runs.append((yield one_run(s, args.memory_mib, n)))
    finally:
        yield s.close()

    def spread(key):
        return results_file.spread(r[key] for r in runs)

    evict = spread("clean_evict_pages_per_s")
    page_in, fetch = spread("page_in_us_per_page"), spread("fetch_us_per_page")
    summary = {
        "runs": args.runs, "memory_mib": args.memory_mib,
        "all_right": all(r["answer_right"] and r["memory_intact"] for r in runs),
        "clean_evict_pages_per_s": evict,
        "clean_evict_goal_ratio": evict["median"] / EVICT_GOAL,
        "page_out_pages_per_s": spread("page_out_pages_per_s"),
        "page_in_us_per_page": page_in,
        "fetch_from_memserver_us_per_page": fetch,
        "paged_out_vs_memserver_ratio": page_in["median"] / fetch["median"],
    }
    results_file.write("ledger", summary, runs)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--memory-mib", type=int, default=64)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    task.react(lambda reactor: bench(reactor, args))


if __name__ == "__main__":
    sys.exit(main())
