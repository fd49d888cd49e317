"""The pager on a fault storm against a raw C userfaultfd loop, same faults.

Threads read every page of a private mapping of an image memfd, in one
random order, split between them.  Served twice:
- raw: ``lx_limit_raw_uffd`` (C only: read messages, UFFDIO_CONTINUE);
- pager: xenclone's own fault path (UffdFaultSource's C serve loop, the
  Pager and its Ledger in the reactor, credits and records as in the
  daemon), the threads reading in C with the GIL released.
Also the other limits of the same run: memcpy of the image size and first
touch of fresh memory.
"""

import os
import random
import tempfile
import threading
import time

from twisted.internet import defer, threads as tthreads

from xenclone._linux import ffi, lib
from xenclone.backends.kvm.microvm import CLONE_UFFD_FEATURES, CLONE_UFFD_MODES
from xenclone.backends.kvm.uffd_source import KvmRegion, UffdFaultSource
from xenclone.image import OpenImage
from xenclone.ledger import Ledger
from xenclone.pager import Pager
from xenclone.policy.clock import ClockPolicy

PAGE = 4096


def _image(npages):
    fd = os.memfd_create("xenclone-storm")
    os.ftruncate(fd, npages * PAGE)
    addr = lib.lx_map_memfd(fd, npages * PAGE, 0)
    lib.lx_fill_dataset(ffi.cast("void *", addr), npages, 0, npages, 7, 0)
    lib.lx_unmap(addr, npages * PAGE)
    return fd


def raw(fd, npages, order, nthreads):
    faults = ffi.new("uint64_t *")
    ns = lib.lx_limit_raw_uffd(fd, npages, order, len(order), nthreads, faults)
    if ns < 0:
        raise OSError(-ns, os.strerror(-ns))
    return {"faults": faults[0], "s": ns / 1e9}


def _touch_all(base, order, nthreads):
    ts = [threading.Thread(target=lib.lx_touch_pages, args=(base, order, len(order), t, nthreads))
          for t in range(nthreads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return time.perf_counter() - t0


@defer.inlineCallbacks
def pager(reactor, fd, npages, order, nthreads):
    zero = KvmRegion.zero_buffer(bytes(npages))
    image = OpenImage("storm", "g0", "kvm-x86-32", b"", npages, fd, zero)
    source = UffdFaultSource(reactor)
    ledger = Ledger(npages * 4, ClockPolicy())
    store = tempfile.mkdtemp(prefix="xc-storm-")
    p = Pager(reactor, ledger, source, None, None, store)
    base = lib.lx_map_memfd(fd, npages * PAGE, 1)
    uffd = lib.lx_uffd_open(CLONE_UFFD_FEATURES, ffi.NULL)
    try:
        assert base > 0 and uffd >= 0
        assert lib.lx_uffd_register(uffd, base, npages * PAGE, CLONE_UFFD_MODES) == 0
        region = KvmRegion(1, uffd, base, npages, zero)
        p.attach(region, image)
        took = yield tthreads.deferToThread(_touch_all, base, order, nthreads)
        # the ledger hears of the last batch a moment later
        while ledger.clone_stats(1)["faults"] < len(order):
            yield tthreads.deferToThread(time.sleep, 0.001)
        faults = ledger.clone_stats(1)["faults"]
    finally:
        p.stop()
        p.detach(1)
        source.stop()
        lib.lx_unmap(base, npages * PAGE)
        os.rmdir(store)
    return {"faults": faults, "s": took}


@defer.inlineCallbacks
def measure(reactor, npages=32768, nthreads=4, seed=1):
    """Throughputs (faults/s) of both loops on the same storm, and limits."""
    order_list = list(range(npages))
    random.Random(seed).shuffle(order_list)
    order = ffi.new("uint32_t[]", order_list)
    fd = _image(npages)
    try:
        r = raw(fd, npages, order, nthreads)
        pg = yield pager(reactor, fd, npages, order, nthreads)
    finally:
        os.close(fd)
    return {
        "pages": npages, "threads": nthreads,
        "raw_faults_per_s": r["faults"] / r["s"], "raw_faults": r["faults"],
        "pager_faults_per_s": pg["faults"] / pg["s"], "pager_faults": pg["faults"],
        "pager_vs_raw": (pg["faults"] / pg["s"]) / (r["faults"] / r["s"]),
    }


def limits(nbytes):
    """memcpy of ``nbytes`` and first touch of as much fresh memory (s)."""
    copy = lib.lx_limit_memcpy(nbytes)
    touch = lib.lx_limit_first_touch(nbytes)
    return {"bytes": nbytes, "memcpy_s": copy / 1e9, "first_touch_s": touch / 1e9,
            "memcpy_pages_per_s": nbytes / PAGE / (copy / 1e9),
            "first_touch_pages_per_s": nbytes / PAGE / (touch / 1e9)}


if __name__ == "__main__":
    import json
    from twisted.internet import task

    def main(reactor):
        print(json.dumps(limits(256 << 20)))
        return measure(reactor).addCallback(lambda r: print(json.dumps(r)))

    task.react(main)
