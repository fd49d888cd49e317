"""Issue #7: xenclone against QEMU and CRIU, same guest, same workloads.

    .venv/bin/python bench/compare.py [--quick] [--runs N] [--only SIDE ...]

Every side runs every workload (clones x master MiB x % of pages read);
each run records time from launch to all answers, launch to first
instruction, total PSS and RSS (kernel_memory.py), faults and pages moved.
Only runs whose every answer is right count.  The limits of the same run
(memcpy, first touch, a raw C userfaultfd loop) come first.

Goal ratios are computed twice: (a) the memory machinery alone, the lazy
run less the all-resident run of the same workload on the same side, and
(b) end to end.  Writes bench/results/compare-<timestamp>.json (its
``summary`` holds the goals) and a Markdown table beside it.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from twisted.internet import task

import criu_peer
import fault_storm
import qemu_peer
import report
import results_file

HERE = os.path.dirname(os.path.abspath(__file__))
KERNEL = os.path.join(os.path.dirname(HERE), "guest", "build", "guest.elf")
GOAL = (8, 1024, 10)                      # clones, MiB, % read: the goals
QUICK_GOAL = (8, 256, 10)                 # bench-quick reports its goals on this one
FULL = [(c, m, p) for p in (10, 100) for m in (256, 1024) for c in (1, 8)]
QUICK = [(1, 256, 10), QUICK_GOAL]
LAUNCH_SAMPLES = 5                        # single launches timed at 1 GiB
QEMU_MODES = ("resident",) + qemu_peer.MODES
CRIU_MODES = ("resident",) + criu_peer.MODES
# CRIU's lazy restore of 8 x 1 GiB takes minutes (docs/design.md,
# Performance; criu_peer.py says why): one run of it, whatever
# --runs says, stopped after CRIU_LIMIT_S, to keep make bench short.
CRIU_ONE_RUN = (8, 1024)
CRIU_LIMIT_S = 60.0
SIDES = ("xenclone", "qemu", "criu")


def xenclone_runs(clones, mib, pct, runs, launches=0):
    spec = {"memory_mib": mib, "read_percent": pct, "clones": clones,
            "modes": ["lazy", "reap", "resident"], "runs": runs, "launches": launches}
    # Its daemon logs to a file, kept when it fails (XENCLONE_KEEP_TMP).
    out = subprocess.run([sys.executable, os.path.join(HERE, "xenclone_side.py"), json.dumps(spec)],
                         capture_output=True, text=True, cwd=HERE,
                         env=dict(os.environ, XENCLONE_KEEP_TMP="1"))
    kept = [l for l in out.stderr.splitlines() if "private daemon files kept in" in l]
    if out.returncode:
        raise RuntimeError("xenclone side failed: %s" % out.stderr[-2000:])
    for line in kept:
        shutil.rmtree(line.rsplit(" ", 1)[-1], ignore_errors=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["runs"]


def qemu_runs(clones, mib, pct, runs):
    peer = qemu_peer.Peer(mib, pct, KERNEL)
    try:
        peer.bless()
        return {m: [qemu_peer.run(peer, m, clones) for _ in range(runs)] for m in QEMU_MODES}
    finally:
        peer.close()


def criu_runs(clones, mib, pct, runs):
    peer = criu_peer.Peer(mib, pct)
    try:
        peer.bless()
        return {m: [criu_peer.run(peer, m, clones, limit_s=CRIU_LIMIT_S) for _ in range(runs)]
                for m in CRIU_MODES}
    finally:
        peer.close()


def spread(runs, key):
    values = [r[key] for r in runs if r["answers_right"] and r.get(key) is not None]
    return results_file.spread(values) if values else None


def workload_figures(sides):
    """Per side and mode: min/median/max of each figure, over right runs;
    and (a), the machinery time: lazy less resident, per run pair."""
    figures = {}
    for side, modes in sides.items():
        resident = modes.get("resident", [])
        for mode, runs in modes.items():
            f = {k: spread(runs, k) for k in report.FIGURES}
            f["runs"] = len(runs)
            f["right"] = sum(1 for r in runs if r["answers_right"])
            machinery = [r["time_to_answers_s"] - b["time_to_answers_s"]
                         for r, b in zip(runs, resident)
                         if mode != "resident" and r["answers_right"] and b["answers_right"]]
            f["machinery_s"] = results_file.spread(machinery) if machinery else None
            figures["%s %s" % (side, mode)] = f
    return figures


def _median(f, key):
    return f[key]["median"] if f and f.get(key) else None


def _ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def summary(results, storm, launch_ms, goal):
    key = "%dx%dMiB-%d%%" % goal
    s = {"goal_workload": key}
    fig = results.get(key)
    if fig:
        xc = fig.get("xenclone lazy")
        peers = [(p, "qemu " + p) for p in qemu_peer.MODES] + [
            ("criu_" + p, "criu " + p) for p in criu_peer.MODES]
        for name, row in peers:
            s["machinery_%s_over_xenclone" % name] = _ratio(
                _median(fig.get(row), "machinery_s"), _median(xc, "machinery_s"))
            s["end_to_end_%s_over_xenclone" % name] = _ratio(
                _median(fig.get(row), "time_to_answers_s"), _median(xc, "time_to_answers_s"))
        s["xenclone_machinery_vs_template"] = _ratio(_median(xc, "machinery_s"),
                                                     _median(fig.get("qemu template"), "machinery_s"))
        s["xenclone_pss_vs_template"] = _ratio(_median(xc, "pss_mib"),
                                               _median(fig.get("qemu template"), "pss_mib"))
        reap = fig.get("xenclone reap")
        s["reap_common_part_faults_lazy_over_reap"] = _ratio(
            _median(xc, "common_part_faults"), max(1, _median(reap, "common_part_faults") or 0))
        s["reap_time_over_lazy"] = _ratio(_median(reap, "time_to_answers_s"),
                                          _median(xc, "time_to_answers_s"))
    s["pager_vs_raw_uffd"] = results_file.spread(r["pager_vs_raw"] for r in storm)
    s["launch_ms_single"] = results_file.spread(launch_ms) if launch_ms else None
    goals = {
        "machinery_le_quarter_of_template": _le(s.get("xenclone_machinery_vs_template"), 0.25),
        "pss_le_template": _le(s.get("xenclone_pss_vs_template"), 1.0),
        "machinery_10x_less_than_eager": _ge(s.get("machinery_eager_over_xenclone"), 10),
        "machinery_10x_less_than_postcopy": _ge(s.get("machinery_postcopy_over_xenclone"), 10),
        "reap_5x_fewer_common_part_faults": _ge(s.get("reap_common_part_faults_lazy_over_reap"), 5),
        "reap_less_time_to_answer": _le(s.get("reap_time_over_lazy"), 0.999999),
        "pager_ge_0.8_raw_uffd": _ge(s["pager_vs_raw_uffd"]["median"], 0.8),
        "launch_median_le_1ms": _le(s["launch_ms_single"]["median"], 1.0)
        if s["launch_ms_single"] else None,
    }
    s["goals_met"] = goals
    return s


def _le(v, limit):
    return None if v is None else v <= limit


def _ge(v, limit):
    return None if v is None else v >= limit


def bench(reactor, args):
    started = time.monotonic()
    workloads = QUICK if args.quick else FULL
    storm_runs = []
    for _ in range(max(3, args.runs)):
        storm_runs.append((yield fault_storm.measure(reactor, npages=8192 if args.quick else 32768)))
    limits = {mib: fault_storm.limits(mib << 20) for mib in sorted({w[1] for w in workloads})}
    goal = QUICK_GOAL if args.quick else GOAL
    results, raw, launch_ms, notes = {}, {}, [], []
    for clones, mib, pct in workloads:
        key = "%dx%dMiB-%d%%" % (clones, mib, pct)
        runs = args.runs if (clones, mib, pct) == goal else 1
        launches = LAUNCH_SAMPLES if (clones, pct) == (1, 10) and mib == workloads[-1][1] else 0
        print("bench: %s, %d run(s), %.0f s in" % (key, runs, time.monotonic() - started),
              file=sys.stderr, flush=True)
        sides = {}
        if "xenclone" in args.only:
            sides["xenclone"] = xenclone_runs(clones, mib, pct, runs, launches)
            launch_ms += sides["xenclone"].pop("launch_ms")
        if "qemu" in args.only and qemu_peer.available():
            sides["qemu"] = qemu_runs(clones, mib, pct, runs)
        if "criu" in args.only and criu_peer.available():
            one = (clones, mib) == CRIU_ONE_RUN
            sides["criu"] = criu_runs(clones, mib, pct, 1 if one else runs)
            if one and runs > 1:
                notes.append("criu: 1 run of %s (a lazy restore there takes 20-120 s), "
                             "%d of the other sides" % (key, runs))
            for mode, mode_runs in sides["criu"].items():
                if any(r.get("over_limit_s") for r in mode_runs):
                    notes.append("criu %s %s: stopped after %d s (its lazy-pages daemon "
                                 "walks a list of page ranges for every fault)"
                                 % (mode, key, CRIU_LIMIT_S))
        raw[key] = sides
        results[key] = workload_figures(sides)
    out = {"summary": summary(results, storm_runs, launch_ms, goal), "figures": results,
           "notes": notes,
           "limits": {"memcpy_first_touch": limits, "fault_storm": storm_runs},
           "peers": {"qemu": qemu_peer.version(), "criu": criu_peer.status()}}
    path = results_file.write("compare", out["summary"], raw, host=os.uname().release,
                              **{k: v for k, v in out.items() if k != "summary"})
    table = report.markdown(out)
    with open(path[:-len(".json")] + ".md", "w") as f:
        f.write(table)
    print(table)
    print("bench: done, %.0f s" % (time.monotonic() - started), file=sys.stderr)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="a small subset (make bench-quick)")
    p.add_argument("--runs", type=int, default=3, help="runs of the goal workload")
    p.add_argument("--only", nargs="+", choices=SIDES, default=SIDES,
                   help="run these sides alone (the limits are always measured)")
    args = p.parse_args()
    from twisted.internet import defer

    def run(reactor):
        # Stopped (a CI timeout, kill): the peers' finally blocks still
        # remove their tmpfs images, gigabytes of RAM otherwise.  Set once
        # the reactor runs, as it installs its own (a stop that would wait
        # for the blocking peer runs to end).
        reactor.callWhenRunning(signal.signal, signal.SIGTERM, lambda *_: sys.exit(143))
        return defer.inlineCallbacks(bench)(reactor, args)

    task.react(run)


if __name__ == "__main__":
    sys.exit(main())
