"""Masters on Xen: made, taken over from xl, and captured for bless.

A mixin of ``XenBackend`` (``IBackend.create_master``, ``capture``;
``ILinuxBackend.adopt``):

- ``create_master`` of the project's guest: ``xl create -p`` of it as a
  PVH kernel, its data set and params page written through foreign
  mappings (``_write_master``), unpaused until its mailbox says ready
  (``_until_ready``), paused there;
- of a Linux master (``spec.boot``): ``xl create`` of its kernel, running
  until its PV drivers offer suspend;
- ``adopt``: a Linux PVH domain xl made, tracked as a master as it is;
- ``capture`` (bless): a Linux master suspended cooperatively, then
  paused, its vCPUs' HVM context packed with its xl settings.
"""

import os

from twisted.internet import defer, task

from xenclone import workload
from xenclone.backends.xen import clone_devices, linux, xl
from xenclone.backends.xen.batches import _batches
from xenclone.backends.xen.domains import POLL, SHUTDOWN_SUSPEND
from xenclone.backends.xen.errors import xen_errors
from xenclone.backends.xen.image_state import LINUX, pack_state
from xenclone.image import Capture
from xenclone.interfaces import PAGE_SIZE, DomainState
from xenclone.wire import WireError

ARCH = "xen-pvh-x86"
READY_TIMEOUT = 120.0   # xl create to the bless point, under TCG


class Masters:
    """Masters' operations; needs ``XenBackend``'s ``reactor``, ``xc``,
    ``fm``, ``guest_kernel``, ``log``, its domain records (``Domains``) and
    its helpers (``_thread``, ``_xenstore``, ``_create``, ``_undo``)."""

    def _master_config(self, spec):
        mib = spec.npages * PAGE_SIZE // 2**20
        return {"name": spec.name, "type": "pvh", "memory": mib, "maxmem": mib, "vcpus": 1,
                "kernel": self.guest_kernel,
                # Kept after the guest ends, so its pages can still be read.
                "on_poweroff": "preserve", "on_crash": "preserve", "on_reboot": "destroy"}

    def _write_master(self, domid, npages, params):
        """The data set and the params page, as the KVM VMM host writes them."""
        first, end = params.data_first_pfn, params.data_first_pfn + params.data_npages
        for batch in _batches(range(first, min(end, npages))):
            with self.fm.map(domid, batch) as m:
                m.buffer[:] = bytes(len(batch) * PAGE_SIZE)  # the loader may have put tables here
                m.fill_dataset(batch[0], params)
        with self.fm.map(domid, [workload.PARAMS_PFN]) as m:
            m.buffer[:] = params.pack().ljust(PAGE_SIZE, b"\0")

    def create_master(self, spec):
        if spec.boot is not None:
            return xen_errors(self._create_linux_master(spec))
        return xen_errors(self._create_master(spec))

    @defer.inlineCallbacks
    def _create_linux_master(self, spec):
        """``xl create`` of a Linux PVH kernel; ready once its PV drivers
        offer suspend.  It runs on until it is blessed."""
        if spec.boot["memory"] > linux.MAX_MEMORY_MIB:
            raise WireError("bad-config", "a Linux master has at most %d MiB (its RAM must lie "
                            "below libxl's MMIO hole)" % linux.MAX_MEMORY_MIB)
        for what in ("kernel", "ramdisk"):
            path = spec.boot.get(what)
            if path and not os.path.isfile(path):
                raise WireError("bad-config", "%s: no file %s" % (what, path))
        config = linux.master_config(spec.boot, spec.name)
        kept = clone_devices.specs(clone_devices.parse(
            {"vif": spec.boot.get("vif") or [], "disk": spec.boot.get("disk") or []}))
        yield self.disks.check(clone_devices.parse(kept).disks)
        xs = yield self._xenstore()
        domid = yield self._create(clone_devices.master_settings(config, kept))
        try:
            dom = self._track(domid, spec.name, "master", spec.npages, config, spec.meta,
                              kind=LINUX, devices=kept)
            self._unpause(dom)
            yield linux.wait_ready(self.reactor, xs, self.xc, domid, spec.name)
        except Exception:
            yield self._undo(domid)
            raise
        return dom.info()

    @defer.inlineCallbacks
    def _create_master(self, spec):
        if not os.path.exists(self.guest_kernel):
            raise WireError("bad-config", "no guest kernel at %s (make -C guest)" % self.guest_kernel)
        params = workload.Params(**spec.params)
        config = self._master_config(spec)
        domid = yield self._create(config)
        try:
            yield self._thread(self._write_master, domid, spec.npages, params)
            dom = self._track(domid, spec.name, "master", spec.npages, config, spec.meta)
            self._unpause(dom)
            yield self._until_ready(dom)
            self._pause(dom)
        except Exception:
            yield self._undo(domid)
            raise
        dom.state = DomainState.READY
        return dom.info()

    @defer.inlineCallbacks
    def _until_ready(self, dom):
        deadline = self.reactor.seconds() + READY_TIMEOUT
        while True:
            box = dom.mailbox.read()
            if box["done"] == workload.DONE_BAD_PARAMS:
                raise WireError("not-ready", "master %s found no params" % dom.name)
            if box["ready"]:
                return
            why = self.xc.domain_info(dom.domid).shutdown_reason
            if why is not None:
                raise WireError("not-ready", "master %s shut down (Xen reason %d) before its "
                                "bless point; see /var/log/xen" % (dom.name, why))
            if self.reactor.seconds() > deadline:
                raise WireError("not-ready", "master %s did not reach its bless point in %.0f s"
                                % (dom.name, READY_TIMEOUT))
            yield task.deferLater(self.reactor, POLL, lambda: None)

    def capture(self, domid):
        """The paused master's vCPU state; the memory server reads its RAM
        through foreign mappings itself (into dom0 or the server domain).
        A Linux master is suspended first (its ack and suspend times go
        into the image's meta)."""
        return xen_errors(self._capture(domid))

    @defer.inlineCallbacks
    def _capture(self, domid):
        dom = self._get(domid)
        meta = {}
        if dom.role != "master":
            if not (dom.fill == "fork" and dom.kind == LINUX):
                raise WireError("not-master", "%s is a clone; only Linux fork clones are "
                                "blessed (a clone of a clone): bless its image's master, or "
                                "launch more of its image" % dom.name)
            meta["parent_image"] = dom.meta.get("image")
        if dom.kind == LINUX and not dom.suspended:
            yield self._check_devices(dom)
            xs = yield self._xenstore()
            times = yield linux.suspend(self.reactor, xs, self.xc, domid, dom.name)
            dom.suspended = True
            meta["suspend"] = times
            self.log.info("{name} suspended: acked in {ack_s} s, suspended in {suspend_s} s",
                          name=dom.name, **times)
        self._pause(dom)
        record = self.xc.hvm_getcontext(domid)
        state = pack_state(dom.config, record, dom.kind, dom.devices)
        return Capture(arch=ARCH, vcpu_state=state,
                       mem_fd=None, npages=dom.npages, domid=domid, meta=meta)

    def adopt(self, ref):
        """Take over a Linux PVH domain that xl made (by name or domid), as
        a master: ``bless`` of a domain the daemon does not know."""
        return xen_errors(self._adopt(ref))

    @defer.inlineCallbacks
    def _adopt(self, ref):
        if str(ref) in ("0", "Domain-0"):
            raise WireError("unsupported", "Domain-0 cannot be blessed")
        try:
            text = yield xl.run(self.reactor, ["list", "-l", str(ref)], timeout=30)
        except WireError as e:
            if e.code != "xl-failed":
                raise
            raise WireError("no-domain", "unknown domain %r (neither xenclone's nor Xen's)"
                            % (ref,))
        domid, config, found = linux.adopted_config(text, ref)
        info = self.xc.domain_info(domid)
        if not info.hvm:
            raise WireError("unsupported", "%s is a PV guest: PV domains are not supported, "
                            "only PVH" % config["name"])
        if domid in self._domains:
            raise WireError("exists", "domain %d is xenclone's already" % domid)
        npages = linux.npages(config)
        # The daemon's record of a master that has no workload: its size.
        dom = self._track(domid, config["name"], "master", npages, config,
                          {"memory_mib": config["memory"]}, kind=LINUX,
                          devices=clone_devices.specs(found) if found else None)
        dom.paused = info.paused
        dom.suspended = info.shutdown_reason == SHUTDOWN_SUSPEND
        dom.state = (DomainState.PAUSED if dom.paused or dom.suspended
                     else DomainState.RUNNING)
        self.log.info("took over {name} (domain {domid}, {mib} MiB) from xl", name=dom.name,
                      domid=domid, mib=config["memory"])
        return dom.info()
