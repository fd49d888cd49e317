"""Linux PVH masters: guests with Xen's PV drivers, quiesced the way ``xl save`` does.

- Ready: the guest's XenStore home says ``control/feature-suspend = 1``
  (its xenbus driver is up and it can be asked to suspend).
- Suspend (libxl_dom_suspend.c for a PVH guest): write ``suspend`` to
  ``control/shutdown``; the guest acks by clearing it and calls
  SCHEDOP_shutdown(SHUTDOWN_suspend), which Xen reports as shutdown reason
  2.  libxl's limits: 60 s for the ack and 60 s more for the suspend; a
  request never acked is cancelled in a transaction (a last-minute ack
  wins) so the guest does not suspend later, unseen.
- Resume (a master let run on): ``xc_domain_resume(fast)`` (the suspend
  hypercall returns "cancelled": same domain, same devices) and XenStore
  RESUME (xenstored clears its shutdown mark).
- A clone's id: ``/local/domain/<clone>/xenclone/clone-id``, dom0's node,
  readable by the clone.
- A domain xenclone did not make is taken over with its xl settings from
  ``xl list -l`` (libxl's saved config): a clone is ``xl create -p`` of the
  same settings.
"""

import functools
import json

from twisted.internet import defer, task

from xenclone import xl_devices as devices
from xenclone.backends.xen import pagewalk
from xenclone.interfaces import PAGE_SIZE
from xenclone.wire import WireError
from xenclone.xenstore.wire import XenStoreError

SHUTDOWN_SUSPEND = 2
READY_TIMEOUT = 300.0       # xl create to feature-suspend: 15-60 s under TCG
SUSPEND_TIMEOUT = 60.0      # libxl's, for the ack and again for the suspend
POLL = 0.1
MAX_MEMORY_MIB = 3072       # RAM must be pfns 0..n-1, below libxl's PVH MMIO hole
# A vCPU's per-CPU unit: Debian's 6.1 kernel has 208 KiB static in 256 KiB
# units ("pcpu-alloc: s212992 ... u262144"); vcpu_info is in the static part.
PERCPU_PAGES = 64
KERNEL_HALF = 0xFFFF800000000000


def home(domid):
    return "/local/domain/%d" % domid


@defer.inlineCallbacks
def read_node(xs, path):
    """The node's value, or None where it does not exist."""
    try:
        value = yield xs.read(path)
    except XenStoreError as e:
        if e.code != "ENOENT":
            raise
        return None
    return value


def _sleep(reactor):
    return task.deferLater(reactor, POLL, lambda: None)


@defer.inlineCallbacks
def wait_ready(reactor, xs, xc, domid, name, timeout=READY_TIMEOUT):
    """Until the guest offers ``control/feature-suspend``."""
    deadline = reactor.seconds() + timeout
    while (yield read_node(xs, home(domid) + "/control/feature-suspend")) != b"1":
        why = xc.domain_info(domid).shutdown_reason
        if why is not None:
            raise WireError("not-ready", "%s shut down (Xen reason %d) before its PV drivers "
                            "came up; see /var/log/xen" % (name, why))
        if reactor.seconds() > deadline:
            raise WireError("not-ready", "%s did not offer control/feature-suspend in %.0f s: "
                            "its kernel needs Xen's PV drivers (xenbus)" % (name, timeout))
        yield _sleep(reactor)


@defer.inlineCallbacks
def _cancel(xs, path):
    """Withdraw a suspend request the guest has not acked; False if it
    acked after all."""
    def withdraw(tx):
        d = read_node(tx, path)

        def check(value):
            if value != b"suspend":
                return False
            return tx.write(path, "").addCallback(lambda _: True)

        return d.addCallback(check)

    return (yield xs.transaction(withdraw))


@defer.inlineCallbacks
def suspend(reactor, xs, xc, domid, name, timeout=SUSPEND_TIMEOUT):
    """Ask the guest to suspend and wait until Xen says it did; returns
    ``{"ack_s", "suspend_s"}`` (seconds from the request)."""
    path = home(domid) + "/control/shutdown"
    t0 = reactor.seconds()
    yield xs.write(path, "suspend")
    acked, deadline = None, t0 + timeout
    while True:
        why = xc.domain_info(domid).shutdown_reason
        now = reactor.seconds()
        if why == SHUTDOWN_SUSPEND:
            return {"ack_s": round((acked or now) - t0, 3), "suspend_s": round(now - t0, 3)}
        if why is not None:
            raise WireError("not-suspended", "%s shut down (Xen reason %d) instead of "
                            "suspending" % (name, why))
        if acked is None:
            if (yield read_node(xs, path)) != b"suspend":
                acked, deadline = now, now + timeout
            elif now > deadline:
                if (yield _cancel(xs, path)):
                    raise WireError("not-suspended", "%s did not acknowledge the suspend "
                                    "request in %.0f s (request withdrawn; it runs on): does "
                                    "its kernel have Xen's PV drivers?" % (name, timeout))
                acked, deadline = now, now + timeout
        elif now > deadline:
            raise WireError("not-suspended", "%s acknowledged the suspend request but did not "
                            "suspend in %.0f s" % (name, timeout))
        yield _sleep(reactor)


@defer.inlineCallbacks
def resume(xs, xc, domid):
    """A suspended master runs on, in the same domain."""
    xc.resume(domid, fast=True)
    yield xs.resume(domid)


@defer.inlineCallbacks
def write_clone_id(xs, domid, clone_id):
    """The clone's id where it reads it: dom0's node, readable by it."""
    path = home(domid) + "/xenclone"
    perms = ["n0", "r%d" % domid]
    yield xs.write(path + "/clone-id", str(clone_id))
    yield xs.set_perms(path, perms)
    yield xs.set_perms(path + "/clone-id", perms)


@defer.inlineCallbacks
def balloon_target(xs, domid):
    """The domain's balloon target (``memory/target``, KiB) in pages, or
    None if it has none.  Linux's balloon driver (CONFIG_XEN_BALLOON, in
    Debian's kernels) follows it and says nothing back: no feature flag,
    unlike Windows PV drivers' ``control/feature-balloon``."""
    try:
        kib = yield xs.read(home(domid) + "/memory/target")
    except XenStoreError:
        return None
    return int(kib) * 1024 // PAGE_SIZE if kib.strip().isdigit() else None


@defer.inlineCallbacks
def set_balloon_target(xs, domid, pages):
    """Ask the guest's balloon driver to hold ``pages`` (``memory/target``,
    in KiB, as ``xl mem-set`` writes it)."""
    yield xs.write(home(domid) + "/memory/target", str(pages * PAGE_SIZE // 1024))


def master_config(spec_boot, name):
    """xl settings of a Linux master xenclone creates (``xenclone create``
    with a kernel)."""
    config = {"name": name, "type": "pvh", "memory": spec_boot["memory"],
              "maxmem": spec_boot["memory"], "vcpus": spec_boot["vcpus"],
              "kernel": spec_boot["kernel"]}
    if spec_boot.get("ramdisk"):
        config["ramdisk"] = spec_boot["ramdisk"]
    if spec_boot.get("extra"):
        config["extra"] = spec_boot["extra"]
    config.update(on_crash="preserve", on_reboot="preserve")
    return config


def adopted_config(text, ref):
    """xl settings for clones of a domain xl made, from ``xl list -l REF``:
    ``(domid, settings, devices)``.  Only what can be cloned: a direct-boot
    PVH guest whose devices are vifs and file-backed raw or qcow2 disks
    (``devices.Devices``, not in the settings: each clone gets its own)."""
    try:
        entries = json.loads(text)
        entry = entries[0]
        domid, cfg = entry["domid"], entry["config"]
        c_info, b_info = cfg["c_info"], cfg["b_info"]
    except (ValueError, LookupError, TypeError):
        raise WireError("unsupported", "xl has no config of domain %s (xl list -l): only "
                        "domains made by xl can be blessed" % (ref,))
    name = c_info.get("name") or str(ref)
    kind = c_info.get("type")
    if kind == "pv":
        raise WireError("unsupported", "%s is a PV guest: PV domains are not supported, "
                        "only PVH (type = \"pvh\")" % name)
    if kind != "pvh":
        raise WireError("unsupported", "%s is of type %s: only PVH domains (type = \"pvh\") "
                        "can be blessed" % (name, kind))
    found = devices.from_saved(cfg, name)
    if not b_info.get("kernel"):
        raise WireError("unsupported", "%s boots no kernel of its own (direct kernel boot "
                        "only)" % name)
    mib = b_info.get("target_memkb", b_info.get("max_memkb", 0)) // 1024
    if not 1 <= mib <= MAX_MEMORY_MIB:
        raise WireError("unsupported", "%s has %d MiB: Linux masters of 1 to %d MiB"
                        % (name, mib, MAX_MEMORY_MIB))
    boot = {"memory": mib, "vcpus": b_info.get("max_vcpus", 1), "kernel": b_info["kernel"],
            "ramdisk": b_info.get("ramdisk"), "extra": b_info.get("cmdline")}
    return domid, master_config(boot, name), found


def resume_pages(cpus, read_page, npages):
    """Pages a lazy clone must have before its kernel resumes: each vCPU's
    per-CPU area (its GS base).  The resume re-registers the vCPU's
    ``vcpu_info``, which lives there, and Xen refuses a guest frame that
    is paged out (register_vcpu_info fails EINVAL, and Linux panics)
    rather than wait for the pager."""
    pfns = set()
    read_page = functools.lru_cache(maxsize=None)(read_page)   # the same few tables
    for cpu in cpus:
        if cpu.cr4 & pagewalk.CR4_LA57:
            raise WireError("no-lazy-fill", "vCPU %d uses 5-level paging: lazy fill of this "
                            "Linux image is not done; use fill=before-run" % cpu.vcpu)
        # In the kernel (the suspend hypercall) GS is the kernel's; a vCPU
        # caught between swapgs pairs has it in the shadow.
        base = cpu.gs_base if cpu.gs_base >= KERNEL_HALF else cpu.shadow_gs
        try:
            for i in range(PERCPU_PAGES):
                pfns.add(pagewalk.virt_to_pfn(base + i * PAGE_SIZE, cpu.cr3, read_page, npages))
        except pagewalk.NotMapped as e:
            raise WireError("no-lazy-fill", "vCPU %d's per-CPU area is not found in the "
                            "image (%s): use fill=before-run" % (cpu.vcpu, e))
    return sorted(p for p in pfns if p < npages)


def npages(config):
    return config["memory"] * 2**20 // PAGE_SIZE
