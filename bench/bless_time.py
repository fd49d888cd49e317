"""Time of a bless into the image store (copies to RAM and disk, CRCs),
best of N, for a memfd of ``--gib`` GiB whose pages are 90% non-zero.  The
store runs from the source tree ``--tree`` (default this one), so trees
can be compared.  Prints JSON.

    .venv/bin/python bench/bless_time.py [--tree DIR] [--gib 1] [--runs 5]
"""

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run inside the tree's interpreter path, so its ImageStore is the one timed.
_TIMED = r"""
import json, os, shutil, sys, tempfile, time
from xenclone.image import Capture
from xenclone.memserver.store import ImageStore
npages, runs = int(sys.argv[1]), int(sys.argv[2])
fd = os.memfd_create("bless")
os.ftruncate(fd, npages * 4096)
chunk = os.urandom(1 << 20)
for mib in range(npages * 4096 >> 20):
    if mib % 10:
        os.pwrite(fd, chunk, mib << 20)
times = []
for _ in range(runs):
    d = tempfile.mkdtemp(dir="/var/tmp")
    store = ImageStore(d)
    t0 = time.monotonic()
    store.put("img", Capture(arch="a", vcpu_state=b"", mem_fd=fd, npages=npages))
    times.append(time.monotonic() - t0)
    store.close()
    shutil.rmtree(d)
print(json.dumps({"best_s": round(min(times), 2), "runs_s": [round(t, 2) for t in times]}))
"""


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tree", default=HERE)
    p.add_argument("--gib", type=int, default=1)
    p.add_argument("--runs", type=int, default=5)
    a = p.parse_args()
    out = subprocess.run([sys.executable, "-c", _TIMED, str(a.gib * 262144), str(a.runs)],
                         env=dict(os.environ, PYTHONPATH=a.tree, PYTHONDONTWRITEBYTECODE="1"),
                         capture_output=True, text=True, check=True).stdout
    print(json.dumps(dict(json.loads(out), tree=a.tree, gib=a.gib)))


if __name__ == "__main__":
    main()
