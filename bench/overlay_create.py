"""Time to give clones their disk overlays: ``DiskSnapshots.clone_disks``
(one ``qemu-img create -b`` through the reactor) for N clones of an image
whose master has one sparse raw disk.  Prints JSON: median and p90 in ms.

    .venv/bin/python bench/overlay_create.py [--clones 50] [--disk-gib 4]
"""

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time

from twisted.internet import defer, task

from xenclone.xl_devices import Disk
from xenclone.backends.xen.disk_snapshots import DiskSnapshots


@defer.inlineCallbacks
def bench(reactor, args):
    tmp = tempfile.mkdtemp(prefix="xenclone-overlay-bench-")
    try:
        master = os.path.join(tmp, "master.img")
        with open(master, "wb") as f:
            f.truncate(args.disk_gib << 30)
            f.write(os.urandom(16 << 20))       # some data: the snapshot is not all holes
        store = DiskSnapshots(reactor, os.path.join(tmp, "store"))
        t0 = time.monotonic()
        taken = yield store.snapshot("bench", [Disk(target=master, vdev="xvda")])
        snapshot_ms = (time.monotonic() - t0) * 1000
        times = []
        for clone_id in range(1, args.clones + 1):
            t0 = time.monotonic()
            yield store.clone_disks("bench", clone_id)
            times.append((time.monotonic() - t0) * 1000)
        times.sort()
        print(json.dumps({"clones": args.clones, "disk_gib": args.disk_gib,
                          "snapshot": taken[0]["how"], "snapshot_ms": round(snapshot_ms, 1),
                          "overlay_create_ms_median": round(statistics.median(times), 2),
                          "overlay_create_ms_p90": round(times[int(len(times) * 0.9)], 2)}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clones", type=int, default=50)
    parser.add_argument("--disk-gib", type=int, default=4)
    task.react(bench, [parser.parse_args()])


if __name__ == "__main__":
    main()
