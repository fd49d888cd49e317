"""The memory-server domain on real Xen: a paused domain holds an image in
its own memory, dom0 seeds its grants and copies through grant maps, and a
clone is filled from them.  Also: the image does not count against dom0, a
revoked grant refuses maps, and a size past Xen's grant-frame cap gets a
clear error.  Figures: pages/s of each copy, grants against foreign maps.

Results: grant-results.json in $RIG_OUT (checks, figures, ok).
"""

import json
import os
import sys
import time

from twisted.internet import defer, task

from xenclone.backends.xen import server_domain as sd
from xenclone.backends.xen import libxc, xenctrl, xl
from xenclone.wire import WireError

KERNEL = os.path.join(os.environ["RIG_PROJECT"], "guest", "build", "guest.elf")
SERVER_MIB, SOURCE_MIB = 96, 32
NPAGES = SOURCE_MIB * 256 - 64       # the source's RAM, bar its last pages
BATCH = 1024


def mem_available_kib():
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))


def copy_rate(src_map, dst_map, n):
    t = time.monotonic()
    for b in range(0, n, BATCH):
        k = min(BATCH, n - b)
        with src_map(b, k) as s, dst_map(b, k) as d:
            d.buffer[:] = s.buffer
    return round(n / (time.monotonic() - t))


@defer.inlineCallbacks
def run(reactor, checks, figures):
    fm, gt = libxc.ForeignMemory(), libxc.GntTab()
    os.makedirs("/tmp/xcgrant", exist_ok=True)
    srv_id = yield sd.create(reactor, "/tmp/xcgrant", sd.NAME, KERNEL, SERVER_MIB)
    made = [srv_id]
    try:
        src = yield sd.create(reactor, "/tmp/xcgrant", "xcg-src", KERNEL, SOURCE_MIB)
        made.append(src)
        dst = yield sd.create(reactor, "/tmp/xcgrant", "xcg-dst", KERNEL, SOURCE_MIB)
        made.append(dst)
        server = sd.ServerDomain(srv_id, SERVER_MIB, fm, gt)
        run_ = server.slots.take(NPAGES)
        server.grant(run_)
        with fm.map(src, range(NPAGES)) as m:      # a pattern: each page's number
            for p in range(NPAGES):
                m.buffer[p * 4096:p * 4096 + 8] = (p + 1).to_bytes(8, "little")
            want = m.page_sums()
        before = mem_available_kib()
        figures["bless_through_grants_pages_s"] = copy_rate(
            lambda b, k: fm.map(src, range(b, b + k), writable=False),
            lambda b, k: server.map(run_, b, k, writable=True), NPAGES)
        figures["dom0_mem_available_change_kib"] = mem_available_kib() - before
        figures["image_kib"] = NPAGES * 4
        checks["image_not_in_dom0"] = abs(figures["dom0_mem_available_change_kib"]) < NPAGES
        with server.map(run_) as m:
            checks["image_read_back_through_grants"] = m.page_sums() == want
        figures["fill_from_grants_pages_s"] = copy_rate(
            lambda b, k: server.map(run_, b, k),
            lambda b, k: fm.map(dst, range(b, b + k)), NPAGES)
        with fm.map(dst, range(NPAGES), writable=False) as m:
            checks["clone_filled_from_grants"] = m.page_sums() == want
        figures["fill_from_master_foreign_pages_s"] = copy_rate(
            lambda b, k: fm.map(src, range(b, b + k), writable=False),
            lambda b, k: fm.map(dst, range(b, b + k)), NPAGES)
        figures["grants_vs_foreign"] = round(figures["fill_from_grants_pages_s"]
                                             / figures["fill_from_master_foreign_pages_s"], 3)
        info = {d.domid: d for d in xenctrl.XenCtrl().domains()}
        checks["server_never_ran"] = info[srv_id].cpu_time == 0
        checks["nothing_mapped_at_revoke"] = server.revoke(run_) == 0
        try:
            server.map(run_, 0, 1)
            checks["revoked_grant_refused"] = False
        except libxc.XenError as e:
            checks["revoked_grant_refused"] = "EINVAL" in str(e)
        server.slots.give_back(run_)
        checks["slots_given_back"] = server.slots.free() == sd.usable_pages(SERVER_MIB)
        server.close()
    finally:
        for domid in made:
            yield xl.destroy(reactor, domid)
    # Past the cap: 512 MiB needs more than 64 grant frames.
    try:
        yield sd.create(reactor, "/tmp/xcgrant", "xcg-big", KERNEL, 512)
        checks["grant_cap_named"] = False
        yield xl.run(reactor, ["destroy", "xcg-big"])
    except WireError as e:
        figures["grant_cap_error"] = str(e)
        checks["grant_cap_named"] = e.code == "grant-limit" and "gnttab_max_frames" in str(e)
    listed = yield xl.run(reactor, ["list"])
    checks["nothing_left_in_xl_list"] = "xcg-" not in listed and sd.NAME not in listed


def main(reactor):
    checks, figures = {}, {}
    res = {"checks": checks, "figures": figures}

    def failed(f):
        checks["completed"] = False
        res["error"] = f.getTraceback()

    def done(_):
        res["ok"] = all(checks.values())
        with open("grant-results.json", "w") as f:
            json.dump(res, f, indent=1, sort_keys=True)
        print(json.dumps(res, indent=1, sort_keys=True))
        if not res["ok"]:
            sys.exit(1)

    return run(reactor, checks, figures).addErrback(failed).addCallback(done)


if __name__ == "__main__":
    task.react(main)
