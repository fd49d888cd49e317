"""Spike (issue 4): clone a suspended Linux PVH domU on real Xen 4.17.

Run by rig/jobs/linux_clone.sh (rig/jobs/linux_clone_variants.sh: a
2-vCPU master and three clone variants) in the rig's dom0 after the master
(rig/domu/pvh.cfg, name rig-pvh) printed XENCLONE-DOMU-UP.  Not wired into
the daemon: plain libxc calls through the project's shim, and ctypes for
what the shim does not bind (xc_hvm_param_get, xc_domain_resume,
xs_resume_domain).  Prints one JSON object, linux-clone-results.json, and
exits non-zero if a clone did not resume.

Steps:
1. cooperative suspend of the master: write "suspend" to
   /local/domain/<d>/control/shutdown (libxl's protocol,
   libxl_dom_suspend.c: a PVH guest with HVM_PARAM_CALLBACK_IRQ set and no
   suspend event channel is asked through the XenBus control node); the
   guest acks by writing "" there, then calls
   SCHEDOP_shutdown(SHUTDOWN_suspend); wait for Xen's shutdown reason 2;
2. capture: HVM context (all vCPUs) and RAM pfns 0..npages-1 by foreign
   maps, noting any pfn that does not map;
3. for each clone: xl create -p of the master's config under a new name
   (libxl: fresh store/console pages, their event channels, introduce),
   write the master's RAM pages, set the HVM context, write
   /local/domain/<clone>/xenclone/clone-id readable by the clone, unpause;
   wait for "XENCLONE-CLONE-ID <id>" and a later tick on its console;
4. resume the master: xc_domain_resume(fast=1) (vCPU 0's rax := 1, the
   "cancelled" return) and xs_resume_domain, then a clone-id written after
   the resume shows on its console.

What the rig showed (4 boots, 2026-11-27; 2 shared cores, TCG, load 1.5-4):
- The domU reads its own XenStore home with Debian's xenstore-read
  (xenstore-utils' binary plus libxenstore, libxentoolcore, libc and the
  loader, copied into the busybox initramfs; it opens /dev/xen/xenbus from
  devtmpfs).  A relative path is the domain's home.  A node dom0 writes
  needs a read permission for the domU (here: xenstore-chmod -r
  <home>/xenclone n0 r<domid>); a missing node: "couldn't read path".
- Suspend works: the guest lists control/feature-suspend = 1 and
  platform-feature-multiprocessor-suspend = 1, acks in 0.17-1.0 s, and Xen
  reports shutdown reason 2 (suspend) 0.17-2.1 s after the write.  The
  guest's console shows "Freezing user space processes ... Freezing
  remaining freezable tasks completed" before it suspends.
- Capture: every pfn 0..32767 of the 128 MiB guest maps (no holes: Linux
  6.1 PVH keeps grant frames outside RAM; maximum_gpfn 0xfefff is the
  console page); ~15.5k of 32768 pages are zero; tot_pages 32784.
  getcontext + 32 read-only maps of 1024 pages + copy in Python: 3.0-8.7 s.
  The HVM record is 2504 bytes (1 vCPU) or 4912 (2 vCPUs): HEADER, CPU,
  LAPIC, LAPIC_REGS, PCI_IRQ, ISA_IRQ, PCI_LINK, MTRR, VMCE_VCPU,
  TSC_ADJUST, END; vCPU 0's rax is already 0 (the suspend hypercall's
  return: "resumed in a new domain"), rip 0xffffffff81a43c83 (the
  hypercall page).  Nothing needs patching for a clone.
- HVM params of the master, of a fresh clone and of a running clone are
  the same: STORE_PFN 0xfeffc, STORE_EVTCHN 1, CONSOLE_PFN 0xfefff,
  CONSOLE_EVTCHN 2, IOREQ 0xfeffd, BUFIOREQ 0xfeffb, PAGING/MONITOR/
  SHARING rings 0xfeff8/9/a, IDENT_PT 0xfeffe000, TIMER_MODE 1; only
  CALLBACK_IRQ differs (0 in a fresh clone; the guest sets it again on
  resume).  So libxl's special pages all lie above RAM (0xfeff8-0xfefff),
  each clone gets its own at the same gfns, and the same store and console
  ports (1, 2: port allocation in a fresh domain is deterministic), which
  is what Linux needs: on resume it re-binds the port numbers it had and
  re-maps the same gfns (it does not re-read the params).  No HVM param is
  copied or set, no event channel made, no introduce: xl create -p did it.
- Clones resume, with 1 and 2 vCPUs: Xen logs "HVM<d> restore: CPU 0,
  LAPIC 0, ..." and "d<d>v0: upcall vector f3" (per vCPU: the guest
  re-registers its upcall vector); the console gets "xen:grant_table:
  Grant tables using version 1 layout", "OOM killer enabled", "Restarting
  tasks ... done.", then XENCLONE-CLONE-ID clone-<n> 1.0-5.5 s after the
  unpause, then ticks (timers run; "hrtimer: interrupt took 13-148 ms" is
  TCG).  Each clone reads its own home: clone-1, clone-2, ... and the
  master, after its resume, "master".  The clones and the master run on
  together (4 domains of 128 MiB; free memory before the clones: 869 MiB).
- Fill variants (all resumed): every page written (same config);
  only the master's non-zero pages written (the backend's _fill): a
  fresh same-config clone has 0 pages that are non-zero where the master's
  are zero, because what libxl loaded (kernel, initrd, start info) is
  still non-zero in the master (freed init memory is poisoned, not
  zeroed) -- true of this guest, not of every guest; placeholder (the
  project's tiny guest as the clone's kernel, no ramdisk): 2 such pages
  (pfns 0x1-0x2, libxl's start info for the placeholder) that a non-zero
  fill would leave behind.
- Timings: xl create of the master 4.4-14.9 s, its marker 14-59 s later;
  xl create -p of a clone 0.8-5.5 s same config, 5.8-8.9 s placeholder
  (no faster); fill of 32768 pages 0.6-3.7 s (13.5 s once, under load);
  create + fill + setcontext + unpause 1.4-9.5 s (17 s once).
- Master resume: xc_domain_resume is in libxenguest (not libxenctrl);
  with fast=1 it returns 0 in 0.06-0.32 s with xs_resume_domain; the
  master reads a clone-id written after its resume 0.5-2.7 s later and its
  ticks go on (slowly under load: its busybox loop ticks every ~10
  xenstore-read rounds).
"""

import ctypes
import json
import os
import struct
import subprocess
import sys
import time

from xenclone.backends.xen import libxc

PAGE = 4096
CFG = "/mnt/rig/domu/pvh.cfg"
MASTER = "rig-pvh"
# Variants (LINUX_CLONE_VARIANTS, comma-separated; one clone each):
#   same-config   xl create -p of the master's config, every page written
#   nonzero-only  same config, only the master's non-zero pages written (as
#                 the backend's _fill): the clone keeps what libxl loaded
#   placeholder   the project's tiny guest as the clone's kernel and no
#                 ramdisk (what libxl loads is overwritten anyway), every
#                 page written
VARIANTS = os.environ.get("LINUX_CLONE_VARIANTS", "same-config,same-config").split(",")
VARIANT_EXTRA = {"same-config": [], "nonzero-only": [],
                 "placeholder": ['kernel="/mnt/project/guest/build/guest.elf"',
                                 'ramdisk=""', 'extra=""']}
# xl settings the master was created with (the job passes the same)
MASTER_EXTRA = [a for a in os.environ.get("LINUX_MASTER_EXTRA", "").split(";") if a]
CONSOLE = "/var/log/xen/console/guest-%s.log"
SHUTDOWN_SUSPEND = 2
BATCH = 1024

# HVM params worth seeing (xen/include/public/hvm/params.h)
PARAMS = {"CALLBACK_IRQ": 0, "STORE_PFN": 1, "STORE_EVTCHN": 2, "PAE": 4,
          "IOREQ_PFN": 5, "BUFIOREQ_PFN": 6, "TIMER_MODE": 10, "HPET": 11,
          "IDENT_PT": 12, "ACPI_S_STATE": 14, "VM86_TSS": 15, "VPT_ALIGN": 16,
          "CONSOLE_PFN": 17, "CONSOLE_EVTCHN": 18, "ACPI_IOPORTS": 19,
          "PAGING_RING_PFN": 27, "MONITOR_RING_PFN": 28, "SHARING_RING_PFN": 29,
          "IOREQ_SERVER_PFN": 32, "NR_IOREQ_SERVER_PAGES": 33,
          "VM_GENERATION_ID_ADDR": 34, "ALTP2M": 35, "X87_FIP_WIDTH": 36,
          "VM86_TSS_SIZED": 37, "MCA_CAP": 38}

T0 = time.monotonic()
res = {"steps": [], "clones": []}


def log(msg, **kw):
    kw = dict(kw, t=round(time.monotonic() - T0, 2), msg=msg)
    res["steps"].append(kw)
    print("linux-clone:", json.dumps(kw), file=sys.stderr, flush=True)


def sh(*args, check=True):
    p = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if check and p.returncode:
        raise RuntimeError("%s: rc %d: %s" % (" ".join(args), p.returncode,
                                               (p.stderr or p.stdout).strip()))
    return p.stdout.strip()


def xs_read(path):
    p = subprocess.run(["xenstore-read", path], capture_output=True, text=True)
    return p.stdout.strip() if p.returncode == 0 else None


# ---- what the shim lacks: ctypes on dom0's libxenctrl and libxenstore ----
XC = ctypes.CDLL("libxenctrl.so.4.17", use_errno=True)
XC.xc_interface_open.restype = ctypes.c_void_p
XC.xc_interface_open.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint]
XC.xc_hvm_param_get.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                ctypes.POINTER(ctypes.c_uint64)]
XC.xc_hvm_param_set.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                ctypes.c_uint64]
# xc_domain_resume lives in libxenguest (tools/libs/guest/xg_resume.c)
XG = ctypes.CDLL("libxenguest.so.4.17", use_errno=True)
XG.xc_domain_resume.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int]
XCH = XC.xc_interface_open(None, None, 0)
XS = ctypes.CDLL("libxenstore.so.4", use_errno=True)
XS.xs_open.restype = ctypes.c_void_p
XS.xs_open.argtypes = [ctypes.c_ulong]
XS.xs_resume_domain.argtypes = [ctypes.c_void_p, ctypes.c_uint]
XS.xs_resume_domain.restype = ctypes.c_bool


def params(domid):
    out = {}
    v = ctypes.c_uint64()
    for name, idx in PARAMS.items():
        rc = XC.xc_hvm_param_get(XCH, domid, idx, ctypes.byref(v))
        out[name] = ("0x%x" % v.value) if rc == 0 else "err %d" % ctypes.get_errno()
    return out


# ---- HVM save record: struct hvm_save_descriptor {u16 type, u16 inst, u32 len}
def records(ctx):
    off = 0
    while off + 8 <= len(ctx):
        typ, inst, length = struct.unpack_from("<HHI", ctx, off)
        yield typ, inst, off + 8, length
        if typ == 0:
            return
        off += 8 + length


CPU = 2              # HVM_SAVE_CODE(CPU): struct hvm_hw_cpu
RAX, RIP = 512, 640  # after fpu_regs[512]: rax..r15 (16 regs), then rip


def describe(ctx):
    kinds = {}
    cpus = []
    for typ, inst, data, length in records(ctx):
        kinds[typ] = kinds.get(typ, 0) + 1
        if typ == CPU:
            rax, = struct.unpack_from("<Q", ctx, data + RAX)
            rip, = struct.unpack_from("<Q", ctx, data + RIP)
            cpus.append({"vcpu": inst, "rax": "0x%x" % rax, "rip": "0x%x" % rip})
    return {"size": len(ctx), "record_types": kinds, "cpus": cpus}


def with_rax(ctx, value):
    """The record with vCPU 0's rax (the suspend hypercall's return value;
    only vCPU 0 made it: Linux suspends in stop_machine on CPU 0) set."""
    buf = bytearray(ctx)
    for typ, inst, data, length in records(ctx):
        if typ == CPU and inst == 0:
            struct.pack_into("<Q", buf, data + RAX, value)
    return bytes(buf)


# ---- foreign maps, page by page status (the shim's map is all or nothing)
ffi, lib = libxc.load()


def map_some(fm, domid, pfns, writable):
    """(addr, errs) mapping pfns; errs[i] != 0 where a page did not map."""
    import mmap
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
    arr = ffi.new("xen_pfn_t[]", pfns)
    err = ffi.new("int[]", len(pfns))
    addr = lib.xenforeignmemory_map(fm._h, domid, prot, len(pfns), arr, err)
    if addr == ffi.NULL:
        raise OSError(ffi.errno, "xenforeignmemory_map dom %d" % domid)
    return addr, [err[i] for i in range(len(pfns))]


def capture_ram(fm, domid, npages):
    ram = bytearray(npages * PAGE)
    bad = {}
    zero = 0
    for first in range(0, npages, BATCH):
        pfns = list(range(first, min(first + BATCH, npages)))
        addr, errs = map_some(fm, domid, pfns, False)
        buf = ffi.buffer(ffi.cast("char *", addr), len(pfns) * PAGE)
        for i, e in enumerate(errs):
            if e:
                bad[pfns[i]] = e
                continue
            page = buf[i * PAGE:(i + 1) * PAGE]
            ram[pfns[i] * PAGE:(pfns[i] + 1) * PAGE] = page
            if page.count(0) == PAGE:
                zero += 1
        lib.xenforeignmemory_unmap(fm._h, addr, len(pfns))
    return ram, bad, zero


def fill(fm, domid, ram, npages, skip, nonzero_only=False):
    """Write the master's pages into the clone: every page, or (as the
    backend's _fill does for its own guest) only the non-zero ones."""
    bad = {}
    for first in range(0, npages, BATCH):
        pfns = [p for p in range(first, min(first + BATCH, npages)) if p not in skip
                and not (nonzero_only and ram.count(0, p * PAGE, (p + 1) * PAGE) == PAGE)]
        if not pfns:
            continue
        addr, errs = map_some(fm, domid, pfns, True)
        buf = ffi.buffer(ffi.cast("char *", addr), len(pfns) * PAGE)
        for i, e in enumerate(errs):
            if e:
                bad[pfns[i]] = e
                continue
            p = pfns[i]
            buf[i * PAGE:(i + 1) * PAGE] = ram[p * PAGE:(p + 1) * PAGE]
        lib.xenforeignmemory_unmap(fm._h, addr, len(pfns))
    return bad


def stale_pages(fm, domid, ram, npages):
    """Pages of a fresh clone that are not zero where the master's are:
    what libxl loaded (kernel, initrd, start info) that a fill of only the
    non-zero pages would leave behind."""
    stale = []
    for first in range(0, npages, BATCH):
        pfns = list(range(first, min(first + BATCH, npages)))
        addr, errs = map_some(fm, domid, pfns, False)
        buf = ffi.buffer(ffi.cast("char *", addr), len(pfns) * PAGE)
        for i, p in enumerate(pfns):
            if errs[i] or ram.count(0, p * PAGE, (p + 1) * PAGE) != PAGE:
                continue
            if buf[i * PAGE:(i + 1) * PAGE].count(0) != PAGE:
                stale.append(p)
        lib.xenforeignmemory_unmap(fm._h, addr, len(pfns))
    return stale


def runs(pfns):
    """[first, last] runs of a sorted pfn list, for the report."""
    out = []
    for p in sorted(pfns):
        if out and out[-1][1] == p - 1:
            out[-1][1] = p
        else:
            out.append([p, p])
    return ["0x%x-0x%x" % (a, b) if a != b else "0x%x" % a for a, b in out]


def console(name):
    try:
        with open(CONSOLE % name, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def wait_console(name, needle, timeout, after=0):
    """Seconds until ``needle`` shows in the console past offset ``after``."""
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        if needle in console(name)[after:]:
            return round(time.monotonic() - t, 2)
        time.sleep(0.5)
    return None


def ticks(name, after=0):
    return [l for l in console(name)[after:].splitlines() if "XENCLONE-TICK" in l]


def main():
    xc = libxc.XenCtrl()
    fm = libxc.ForeignMemory()
    d = int(sh("xl", "domid", MASTER))
    info = xc.domain_info(d)
    npages = 128 * 256          # pvh.cfg: memory = 128
    res["master_extra"] = MASTER_EXTRA
    res["master"] = {"domid": d, "tot_pages": info.tot_pages, "max_pages": info.max_pages,
                     "maximum_gpfn": "0x%x" % xc.maximum_gpfn(d), "npages": npages,
                     "params": params(d),
                     "control": sh("xenstore-ls", "/local/domain/%d/control" % d, check=False)}
    log("master", domid=d, tot_pages=info.tot_pages)
    # Wait for the first tick: the init loop runs.
    wait_console(MASTER, "XENCLONE-TICK", 60)

    # 1. cooperative suspend
    t = time.monotonic()
    sh("xenstore-write", "/local/domain/%d/control/shutdown" % d, "suspend")
    acked = reason = None
    while time.monotonic() - t < 90:
        if acked is None and xs_read("/local/domain/%d/control/shutdown" % d) != "suspend":
            acked = round(time.monotonic() - t, 2)
        reason = xc.domain_info(d).shutdown_reason
        if reason is not None:
            break
        time.sleep(0.1)
    res["suspend"] = {"acked_s": acked, "shutdown_reason": reason,
                      "shutdown_s": round(time.monotonic() - t, 2)}
    log("suspend", **res["suspend"])
    if reason != SHUTDOWN_SUSPEND:
        res["error"] = "master did not suspend (reason %r)" % reason
        return 1

    # 2. capture
    t = time.monotonic()
    ctx = xc.hvm_getcontext(d)
    res["master"]["context"] = describe(ctx)
    ram, bad, zero = capture_ram(fm, d, npages)
    info = xc.domain_info(d)
    res["capture"] = {"s": round(time.monotonic() - t, 2), "unmapped": runs(bad),
                      "unmapped_errnos": sorted(set(bad.values())), "zero_pages": zero,
                      "tot_pages_suspended": info.tot_pages,
                      "maximum_gpfn": "0x%x" % xc.maximum_gpfn(d),
                      "params_suspended": params(d)}
    log("capture", s=res["capture"]["s"], unmapped=len(bad), zero=zero)
    clone_ctx = with_rax(ctx, 0)

    # 3. clones
    rc = 0
    res["free_memory_mib"] = [l.split(":")[1].strip() for l in sh("xl", "info").splitlines()
                              if l.startswith("free_memory")]
    for n, variant in enumerate(VARIANTS, 1):
        name = "lx-clone-%d" % n
        c = {"name": name, "clone_id": "clone-%d" % n, "variant": variant}
        res["clones"].append(c)
        try:
            t = time.monotonic()
            sh("xl", "create", "-p", CFG, 'name="%s"' % name, *MASTER_EXTRA,
               *VARIANT_EXTRA[variant])
            c["xl_create_s"] = round(time.monotonic() - t, 2)
            cd = c["domid"] = int(sh("xl", "domid", name))
            c["params_fresh"] = params(cd)
            c["tot_pages_fresh"] = xc.domain_info(cd).tot_pages
            stale = stale_pages(fm, cd, ram, npages)
            c["stale_nonzero_pages"] = len(stale)
            c["stale_runs"] = runs(stale)[:40]
            t = time.monotonic()
            c["fill_unmapped"] = runs(fill(fm, cd, ram, npages, bad,
                                           nonzero_only=variant == "nonzero-only"))
            c["fill_s"] = round(time.monotonic() - t, 2)
            xc.hvm_setcontext(cd, clone_ctx)
            home = "/local/domain/%d/xenclone" % cd
            sh("xenstore-write", home + "/clone-id", c["clone_id"])
            sh("xenstore-chmod", "-r", home, "n0", "r%d" % cd)
            t = time.monotonic()
            xc.unpause(cd)
            c["launch_s"] = round(time.monotonic() - t + c["xl_create_s"] + c["fill_s"], 2)
            c["clone_id_seen_s"] = wait_console(name, "XENCLONE-CLONE-ID " + c["clone_id"], 120)
            if c["clone_id_seen_s"] is not None:
                at = console(name).find("XENCLONE-CLONE-ID")
                c["tick_after_id_s"] = wait_console(name, "XENCLONE-TICK", 40, at)
            i = xc.domain_info(cd)
            c["after"] = {"shutdown_reason": i.shutdown_reason, "paused": i.paused,
                          "cpu_time_ms": i.cpu_time // 10**6, "tot_pages": i.tot_pages}
            c["params_running"] = params(cd)
            c["context_running"] = describe(xc.hvm_getcontext(cd))
            c["ok"] = bool(c["clone_id_seen_s"] is not None and c.get("tick_after_id_s")
                           is not None and i.shutdown_reason is None)
        except Exception as e:      # keep going: the report wants every fact
            c["error"] = repr(e)
            c["ok"] = False
        c["console"] = console(name)[-3000:]
        log("clone", name=name, ok=c["ok"], seen=c.get("clone_id_seen_s"))
        if not c["ok"]:
            rc = 1

    # 4. resume the master (cancelled suspend: the hypercall returns 1)
    m = res["master_resume"] = {}
    try:
        before = len(console(MASTER))
        t = time.monotonic()
        r = XG.xc_domain_resume(XCH, d, 1)
        m["xc_domain_resume_rc"] = r if r == 0 else "%d errno %d" % (r, ctypes.get_errno())
        xsh = XS.xs_open(0)
        m["xs_resume_domain"] = bool(XS.xs_resume_domain(xsh, d))
        m["resume_s"] = round(time.monotonic() - t, 2)
        sh("xenstore-write", "/local/domain/%d/xenclone/clone-id" % d, "master")
        sh("xenstore-chmod", "-r", "/local/domain/%d/xenclone" % d, "n0", "r%d" % d)
        m["clone_id_seen_s"] = wait_console(MASTER, "XENCLONE-CLONE-ID master", 90, before)
        m["tick_after_s"] = wait_console(MASTER, "XENCLONE-TICK", 40, before)
        i = xc.domain_info(d)
        m["shutdown_reason"] = i.shutdown_reason
        m["ok"] = m["clone_id_seen_s"] is not None and i.shutdown_reason is None
    except Exception as e:
        m["error"] = repr(e)
        m["ok"] = False
    log("master resume", ok=m["ok"])
    # A last look: clones still tick after the master resumed.
    time.sleep(12)
    for c in res["clones"]:
        c["ticks_total"] = len(ticks(c["name"]))
    res["master_console"] = console(MASTER)[-3000:]
    return rc


if __name__ == "__main__":
    try:
        code = main()
    except Exception as e:
        res["error"] = repr(e)
        code = 2
    res["total_s"] = round(time.monotonic() - T0, 2)
    print(json.dumps(res, indent=1, sort_keys=True))
    sys.exit(code)
