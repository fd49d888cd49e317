"""Soak: launch and destroy clones in a loop; nothing may leak.

    .venv/bin/python bench/soak.py [--seconds 300] [--clones 8] [--memory-mib 16]

A private daemon (the real service tree, VMM host and memory server) runs
rounds of: launch N clones, check every answer, destroy them.  Before the
first round and after the last, it counts each process's open fds and
threads (/proc/<pid>/fd, /proc/<pid>/task) and its RSS; a leak is any fd or
thread more, or RSS grown by more than ``--rss-slack-mib``.  The first round
is a warm-up (caches, thread pools), so the "before" figures come after it.
Writes bench/results/soak-<timestamp>.json; exits 1 on a wrong answer or a
leak.  ``make soak`` runs it for 5 minutes.
"""

import argparse
import os
import sys
import time

from twisted.internet import defer, task

from xenclone.selftests.scenarios import private_session

import results_file


def _figures(pids):
    out = {}
    for name, pid in pids.items():
        with open("/proc/%d/status" % pid) as f:
            rss_kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        out[name] = {"fds": len(os.listdir("/proc/%d/fd" % pid)),
                     "threads": len(os.listdir("/proc/%d/task" % pid)),
                     "rss_mib": round(rss_kib / 1024, 1)}
    return out


@defer.inlineCallbacks
def _round(s, clones):
    launched = (yield s.call("launch", image="soak", count=clones))["clones"]
    wrong = 0
    for c in launched:
        info = yield s.call("wait", domain=c["domid"], timeout=300)
        wrong += info["result"] != info["expected"]
    for c in launched:
        yield s.call("destroy", domain=c["domid"])
    return wrong


@defer.inlineCallbacks
def soak(reactor, args):
    s = yield private_session(reactor)
    try:
        yield s.call("create", config={"name": "soak-master", "memory": args.memory_mib})
        yield s.call("bless", domain="soak-master", name="soak")
        pids = {k: v for k, v in (yield s.call("pids")).items() if v}
        wrong = yield _round(s, args.clones)          # warm-up
        before = _figures(pids)
        rounds, start = 0, time.monotonic()
        while time.monotonic() - start < args.seconds:
            wrong += yield _round(s, args.clones)
            rounds += 1
        yield task.deferLater(reactor, 1.0, lambda: None)    # destroys settle
        after = _figures(pids)
        yield s.call("discard", image="soak", force=True)
        yield s.call("destroy", domain="soak-master")
    finally:
        yield s.close()
    leaks = {name: {k: [before[name][k], after[name][k]] for k in ("fds", "threads")
                    if after[name][k] > before[name][k]}
             for name in before}
    leaks = {k: v for k, v in leaks.items() if v}
    grown = {name: round(after[name]["rss_mib"] - before[name]["rss_mib"], 1) for name in before}
    summary = {"seconds": args.seconds, "rounds": rounds, "clones_per_round": args.clones,
               "clones_launched": (rounds + 1) * args.clones, "wrong_answers": wrong,
               "fd_or_thread_leaks": leaks, "rss_growth_mib": grown,
               "rss_slack_mib": args.rss_slack_mib,
               "ok": not wrong and not leaks and all(g <= args.rss_slack_mib
                                                     for g in grown.values())}
    results_file.write("soak", summary, [], before=before, after=after)
    return 0 if summary["ok"] else 1


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, default=300)
    p.add_argument("--clones", type=int, default=8)
    p.add_argument("--memory-mib", type=int, default=16)
    p.add_argument("--rss-slack-mib", type=float, default=16.0)
    args = p.parse_args()
    sys.exit(task.react(lambda reactor: soak(reactor, args)))


if __name__ == "__main__":
    main()
