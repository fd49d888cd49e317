"""xenclone's side of bench/compare.py, in a process of its own (a private
daemon, its helpers, nothing else of the bench in its memory).

    .venv/bin/python bench/xenclone_side.py SPEC_JSON

SPEC: {"memory_mib", "read_percent", "clones", "modes": ["lazy", "reap", "resident"],
"runs", "launches"}.  Prints one JSON object: {"image": ..., "runs": {mode:
[run, ...], "launch_ms": [...]}}, the last from ``launches`` single clones
launched one after the other (launch to first instruction, as bench/launch.py).

- first, not counted: two clones record the image's working set (the
  pages both touched), faulting page by page (no fault-around);
- lazy: launch all clones, time to the last answer (no prefetch; C maps
  pages around their faults);
- reap: the same, the recorded working set prefetched at launch;
- resident: the same clones launched paused and hoarded full first, timed
  from unpause (the all-resident run of the same workload).
Memory is the kernel's (kernel_memory.py), taken once every clone answered.
Faults are the guest's (the C fast path's count); ``common_part_faults``
those on the pages every clone reads.
"""

import json
import statistics
import sys
import time

from twisted.internet import defer, task

from xenclone import workload
from xenclone.selftests.scenarios import private_session
from xenclone.wire import WireError

import kernel_memory


@defer.inlineCallbacks
def _answers(s, clones, t0):
    infos = []
    for c in clones:
        infos.append((yield s.call("wait", domain=c["domid"], timeout=1200)))
    t_end = time.perf_counter()
    return infos, t_end - t0


@defer.inlineCallbacks
def destroy(s, domid, tries=50):
    """On a loaded host a vCPU can take longer to stop (unmapping a
    gigabyte it has mapped) than the VMM host waits: ask again."""
    for _ in range(tries):
        try:
            yield s.call("destroy", domain=domid)
            return
        except WireError as e:
            if e.code == "no-domain":
                return
            if e.code != "busy":
                raise
        yield task.deferLater(s.reactor, 0.2, lambda: None)
    raise RuntimeError("clone %d would not go" % domid)


def common_pages(params):
    """The pages every clone reads (the workload's common part)."""
    p = workload.Params(**params)
    return {p.data_first_pfn + i * p.data_npages // p.common_reads for i in range(p.common_reads)}


@defer.inlineCallbacks
def one_run(s, image, mode, count, common):
    pids = list((yield s.call("pids")).values())
    if mode in ("lazy", "reap"):
        t0 = time.perf_counter()
        clones = (yield s.call("launch", image=image, count=count,
                               prefetch=mode == "reap"))["clones"]
    else:
        clones = (yield s.call("launch", image=image, count=count, paused=True,
                               prefetch=False))["clones"]
        for c in clones:
            yield s.call("hoard", domain=c["domid"], rate=10**7, wait=True)
        t0 = time.perf_counter()
        for c in clones:
            yield s.call("unpause", domain=c["domid"])
    infos, took = yield _answers(s, clones, t0)
    mem = kernel_memory.measure(pids, memfd_pids=pids)
    sets = s.service.getServiceNamed("core").controller.working_sets
    common_faults = sum(sets.faults_on(c["domid"], common) for c in clones)
    for c in clones:
        yield destroy(s, c["domid"])
    launch_ms = [i["launch_ms"] for i in infos if i["launch_ms"] is not None]
    if mode == "resident":
        launch_ms = []      # launched paused: its first instruction waited for the hoard
    return {
        "answers_right": all(i["result"] == i["expected"] for i in infos) and len(infos) == count,
        "time_to_answers_s": took,
        "launch_to_first_instruction_ms": statistics.median(launch_ms) if launch_ms else None,
        "pss_mib": mem["pss"] / 2**20, "rss_mib": mem["rss"] / 2**20,
        "faults": sum(i["guest_faults"] for i in infos),
        "common_part_faults": common_faults,
        "pages_moved": sum(i["resident_pages"] + i["zero_pages"] for i in infos),
        "prefetched_pages": sum(i["prefetched_pages"] for i in infos),
        "around_pages": sum(i["around_pages"] for i in infos),
    }


@defer.inlineCallbacks
def main(reactor, spec):
    s = yield private_session(reactor)
    out = {"runs": {m: [] for m in spec["modes"]}}
    try:
        image = "bench"
        yield s.call("create", config={"name": "bench-master", "memory": spec["memory_mib"],
                                       "read_percent": spec["read_percent"]})
        out["image"] = yield s.call("bless", domain="bench-master", name=image)
        # The image holds the master's memory now; its own copy would only
        # add to the figures (QEMU's master is gone too).
        yield destroy(s, "bench-master")
        common = common_pages(out["image"]["meta"]["params"])
        yield one_run(s, image, "lazy", 2, common)      # records the working set
        for _ in range(spec["runs"]):
            for mode in spec["modes"]:
                out["runs"][mode].append((yield one_run(s, image, mode, spec["clones"], common)))
        out["runs"]["launch_ms"] = []
        for _ in range(spec.get("launches", 0)):
            run = yield one_run(s, image, "lazy", 1, common)
            if run["answers_right"]:
                out["runs"]["launch_ms"].append(run["launch_to_first_instruction_ms"])
    finally:
        yield s.close()
    print(json.dumps(out))


if __name__ == "__main__":
    task.react(main, [json.loads(sys.argv[1])])
