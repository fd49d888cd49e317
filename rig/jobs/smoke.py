"""dom0 side of the rig's smoke job: drive the PVH domU through the
project's own Xen shim (xenclone.backends.xen.libxc) and print one JSON
object.  Exits non-zero, after printing, if any check failed."""

import hashlib
import json
import os
import struct
import subprocess
import sys

from xenclone.backends.xen import libxc, xenctrl

BANNER = b"Linux version "


def elf_loads(f):
    """(file offset, paddr, filesz) of each PT_LOAD of an ELF64 file."""
    hdr = f.read(64)
    phoff, = struct.unpack_from("<Q", hdr, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", hdr, 0x36)
    f.seek(phoff)
    table = f.read(phentsize * phnum)
    for i in range(phnum):
        p_type, _, off, _, paddr, filesz, _, _ = struct.unpack_from(
            "<IIQQQQQQ", table, i * phentsize)
        if p_type == 1:
            yield off, paddr, filesz


def banner_frame(vmlinux):
    """Where the kernel's version banner lies in guest-physical memory.

    A PVH kernel is loaded at its ELF physical addresses, and for PVH the
    frames dom0 maps are guest frames, so the page of the guest that holds
    the banner must show it at the same offset.  Returns (gfn, offset in
    the page, the banner as the file has it).
    """
    with open(vmlinux, "rb") as f:
        data = f.read()
        f.seek(0)
        loads = list(elf_loads(f))
    at = data.find(BANNER)
    while at >= 0:
        for off, paddr, filesz in loads:
            if off <= at < off + filesz:
                pa = paddr + at - off
                end = data.index(b"\0", at)
                return pa >> 12, pa & 0xFFF, data[at:end]
        at = data.find(BANNER, at + 1)
    raise LookupError("no version banner in " + vmlinux)


def main(name):
    checks = {}
    res = {"checks": checks, "timings_s": {
        k[len("SMOKE_"):].lower(): float(v) for k, v in os.environ.items()
        if k.startswith("SMOKE_") and k.endswith("_S")}}

    res["probe"] = probe = xenctrl.probe(check_paging=True)
    checks["xen_present"] = probe.get("xen") == "present"
    checks["xen_4_17"] = str(probe.get("version", "")).startswith("4.17")
    checks["hap"] = "hap" in probe.get("capabilities", ())

    domid = int(subprocess.check_output(["xl", "domid", name]).strip())
    with xenctrl.XenCtrl() as xc:
        doms = xc.domains()
        res["domains"] = [d._asdict() for d in doms]
        info = xc.domain_info(domid)
        hvm = bool(info.flags & libxc._lib.XEN_DOMINF_hvm_guest)
        # pause, read the HVM context record, unpause: the shim's calls on a
        # live guest, and the record is what a bless will capture.
        xc.pause(domid)
        paused = bool(xc.domain_info(domid).flags & libxc._lib.XEN_DOMINF_paused)
        try:
            ctx = xc.hvm_getcontext(domid)
        finally:
            xc.unpause(domid)
        max_gpfn = xc.maximum_gpfn(domid)
    res["domu"] = {"name": name, "domid": domid, "type": "pvh" if hvm else "pv",
                   "tot_pages": info.tot_pages, "max_pages": info.max_pages,
                   "online_vcpus": info.online_vcpus, "paused_seen": paused,
                   "hvm_context_bytes": len(ctx), "max_gpfn": max_gpfn}
    checks["domu_listed"] = domid in [d.domid for d in doms]
    checks["domu_is_pvh"] = hvm
    checks["pause_unpause"] = paused
    checks["hvm_context"] = len(ctx) > 0

    fm = libxc.ForeignMemory()
    try:
        vmlinux = os.path.join(os.environ["RIG_FILES"], "domu", "vmlinux")
        gfn, off, banner = banner_frame(vmlinux)
        with fm.map(domid, [gfn], writable=False) as m:
            page = bytes(m.buffer)
        seen = page[off:off + len(banner)]
        res["foreign_map"] = {
            "gfn": gfn, "sha256": hashlib.sha256(page).hexdigest(),
            "nonzero_bytes": sum(1 for b in page if b),
            "banner_offset": off, "banner": banner.decode(errors="replace"),
            "banner_seen": seen == banner}
        checks["foreign_map"] = any(page)
        checks["foreign_map_banner"] = seen == banner
        # A frame the guest does not have must fail loudly (err[] checked).
        bad = max_gpfn + 0x100000
        try:
            fm.map(domid, [bad], writable=False).close()
            res["foreign_map_missing"] = {"gfn": bad, "raised": False}
        except libxc.XenError as e:
            res["foreign_map_missing"] = {"gfn": bad, "raised": True,
                                          "errno": e.errno, "error": str(e)}
        checks["foreign_map_missing_raises"] = \
            res["foreign_map_missing"]["raised"]
    finally:
        fm.close()

    res["ok"] = all(checks.values())
    print(json.dumps(res, indent=1, sort_keys=True))
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
