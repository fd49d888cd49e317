"""Issue #2's numbers: clone launch latency and host memory, on this host.

    .venv/bin/python bench/launch.py [--memory-mib 256] [--clones 16] [--runs 3]

Launch latency is timed from the daemon receiving ``launch`` to the clone's
first port write after it resumes (its first instruction): ``launch_ms`` of
``xenclone info``.  "sequential" launches one clone at a time (each runs to
its answer before the next starts); "burst" launches all at once, as the
demo does.  Host memory is measured from the kernel (hostmem.py) while the
burst runs.  Writes bench/results/launch-<timestamp>.json and prints it.
"""

import argparse
import os
import statistics
import sys

from twisted.internet import defer, task

from xenclone.selftests.scenarios import launch_job, private_session

import results_file

LAUNCH_LIMIT_MS = 2.0
MEMORY_LIMIT = 0.35


@defer.inlineCallbacks
def sequential(s, image, count):
    times = []
    for _ in range(count):
        [clone] = (yield s.call("launch", image=image))["clones"]
        info = yield s.call("wait", domain=clone["domid"], timeout=300)
        if info["result"] != info["expected"]:
            raise RuntimeError("wrong answer from %s" % clone["name"])
        times.append(info["launch_ms"])
        yield s.call("destroy", domain=clone["domid"])
    return times


@defer.inlineCallbacks
def bench(reactor, args):
    s = yield private_session(reactor)
    runs = []
    try:
        for run in range(args.runs):
            name = "bench%d" % run
            burst = yield launch_job(s, args.clones, args.memory_mib, name=name)
            seq = yield sequential(s, name, args.clones)
            yield s.call("discard", image=name, force=True)
            yield s.call("destroy", domain="%s-master" % name)
            runs.append({"burst": burst, "sequential_launch_ms": seq})
    finally:
        yield s.close()
    seq_p50 = [statistics.median(r["sequential_launch_ms"]) for r in runs]
    mem_ratio = [r["burst"]["host_peak_mib"] / r["burst"]["eager_mib"] for r in runs]
    summary = {
        "runs": args.runs, "clones": args.clones, "memory_mib": args.memory_mib,
        "answers_right": all(r["burst"]["results_ok"] for r in runs),
        "launch_ms_p50_sequential": results_file.spread(seq_p50),
        "launch_ms_p50_burst": [r["burst"]["launch_ms_p50"] for r in runs],
        "launch_goal_ratio": statistics.median(seq_p50) / LAUNCH_LIMIT_MS,
        "host_memory_vs_eager": results_file.spread(mem_ratio),
        "memory_goal_ratio": statistics.median(mem_ratio) / MEMORY_LIMIT,
        "pages_faulted_vs_nominal": runs[-1]["burst"]["pages_faulted"] / runs[-1]["burst"]["pages_nominal"],
    }
    summary["goals_met"] = (summary["answers_right"] and summary["launch_goal_ratio"] <= 1
                            and summary["memory_goal_ratio"] <= 1)
    results_file.write("launch", summary, runs, host=os.uname().release)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--memory-mib", type=int, default=256)
    p.add_argument("--clones", type=int, default=16)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    task.react(lambda reactor: bench(reactor, args))


if __name__ == "__main__":
    sys.exit(main())
