"""The Xen backend: PVH domains of real Xen, through ``libxc.py`` and ``xl.py``.

- A master is one of two kinds:
  - ``guest``: ``xl create -p`` of the project's guest as a PVH kernel; its
    params page and data set are written through foreign mappings, then it
    runs to its bless point (its mailbox says ready) and is paused there;
  - ``linux``: a Linux PVH guest (``linux.py``), made by ``xenclone create``
    with a kernel or taken over from xl by ``bless``; ready once its PV
    drivers offer suspend, and suspended cooperatively to be blessed.
- Bless pauses it and reads the HVM context of its vCPUs; the memory
  server copies its RAM, in batches of foreign mappings, into dom0 or into
  the memory-server domain.  The xl settings travel with the image
  (inside the opaque vCPU state).
- An image in the memory-server domain is read through grant maps
  (``grant_cache.py``) for fills and page-ins alike.
- A clone is made one of three ways:
  - **filled before it runs** (any Xen): ``xl create -p`` of the same
    settings under its own name (its own XenStore home and console), and
    every non-zero image page copied in;
  - **lazily** (a Xen built with MEM_PAGING): ``xl create -p`` likewise,
    its paging ring enabled and every page but the params page evicted, in
    one C call; guest faults then go through the pager (``paging.py``);
  - **as a VM fork** (a Xen with MEM_SHARING and xen/patches) of the
    image's image domain, made at bless: nothing is copied, and its
    XenStore home is written by hand (``fork_clones.py``, ``fork.py``,
    ``image_domains.py``).
  Then its mailbox gets its id and input (a Linux clone: its XenStore
  ``xenclone/clone-id``), the master's HVM context is set and it is
  unpaused.  A Linux clone resumes in its own domain: ``xl create -p`` gave
  it store and console pages and event channels at the master's gfns and
  ports, which is all its resume path looks for.

Xen numbers domains itself, so the controller adopts the ids given here.
Hypercalls are quick and run in the reactor; bulk copies (thousands of
foreign-mapped pages) run in the reactor's thread pool.
"""

import errno
import json
import os
import struct
import time

import attr
from twisted.internet import defer, task, threads
from twisted.logger import Logger
from zope.interface import implementer

from xenclone import workload
from xenclone.backends.xen import clone_devices, libxc, linux, xl
from xenclone.backends.xen.clone_devices import DeviceClones
from xenclone.backends.xen.disk_snapshots import DiskSnapshots
from xenclone.backends.xen.evict import Evictor
from xenclone.backends.xen.errors import xen_errors
from xenclone.backends.xen.filled import FilledRegion, FilledSource, ForkRegion
from xenclone.backends.xen.fork_clones import ForkClones
from xenclone.backends.xen.grant_cache import DEFAULT_LIMIT as DEFAULT_GRANT_CACHE, GrantCache
from xenclone.backends.xen.image_domains import ImageDomains
from xenclone.backends.xen.image_state import GUEST, LINUX, pack_state, unpack_state
from xenclone.backends.xen.paging import PagedRegion, PagingSource
from xenclone.image import Capture
from xenclone.interfaces import (PAGE_SIZE, DomainState, IBackend, IBalloonBackend,
                                 IForkBackend, ILinuxBackend, PageState)
from xenclone.pageout_retry import failure_code
from xenclone.runs import runs
from xenclone.wire import WireError
from xenclone.xenstore.connect import xenstore_client

ARCH = "xen-pvh-x86"
BATCH = 1024            # pages per foreign mapping (4 MiB of dom0 address space)
POLL = 0.05             # seconds between looks at the guests' mailboxes
READY_TIMEOUT = 120.0   # xl create to the bless point, under TCG
GUEST_KERNEL = os.path.join(os.path.dirname(__file__), "..", "..", "..", "guest", "build",
                            "guest.elf")
SHUTDOWN_POWEROFF, SHUTDOWN_REBOOT, SHUTDOWN_SUSPEND, SHUTDOWN_CRASH = 0, 1, 2, 3
PAGE_IN_TIMEOUT = 60.0  # a read of evicted pages waits this long for the pager
PAGE_IN_RETRY = 0.02
FILL_MODES = ("auto", "fork", "lazy", "before-run")


def _batches(pfns):
    pfns = list(pfns)
    return [pfns[i:i + BATCH] for i in range(0, len(pfns), BATCH)]


def _zero_runs(batch, zero):
    """``(index, count, is_zero)`` of the runs of consecutive pfns in
    ``batch`` that are all zero pages of the image, or all not."""
    out = []
    for i, n in runs(batch):
        start = i
        for j in range(i + 1, i + n + 1):
            if j == i + n or bool(zero[batch[j]]) != bool(zero[batch[start]]):
                out.append((start, j - start, bool(zero[batch[start]])))
                start = j
    return out


class Mailbox:
    """The guest's mailbox in its params page, kept mapped."""

    def __init__(self, mapping):
        self._mapping = mapping
        self._buf = mapping.buffer

    def read(self):
        values = workload.MAILBOX.unpack_from(self._buf, workload.MAILBOX_OFFSET)
        return dict(zip(workload.MAILBOX_FIELDS, values))

    def write(self, **fields):
        """Word by word, ``go`` last: the guest never sees go before the rest."""
        for name in sorted(fields, key=lambda k: k == "go"):
            struct.pack_into("<I", self._buf, workload.MAILBOX_OFFSET
                             + 4 * workload.MAILBOX_FIELDS.index(name), fields[name])

    def load(self, page):
        """The whole params page (a lazy clone's, from its image)."""
        self._buf[:] = page

    def close(self):
        self._mapping.close()


@attr.s(eq=False)
class _Domain:
    domid = attr.ib()
    name = attr.ib()
    role = attr.ib()
    npages = attr.ib()
    config = attr.ib()
    mailbox = attr.ib()                 # None for a Linux domain
    kind = attr.ib(default=GUEST)
    suspended = attr.ib(default=False)  # a Linux master, suspended to be blessed
    fill = attr.ib(default="before-run")
    image = attr.ib(default=None)       # a lazy clone's: what a clean page holds
    state = attr.ib(default=DomainState.PAUSED)
    paused = attr.ib(default=True)      # our own pause (xl create -p is one)
    result = attr.ib(default=None)
    error = attr.ib(default=None)
    t_first_ns = attr.ib(default=None)  # monotonic: first unpaused (a clone's launch ends)
    first_told = attr.ib(default=False)  # a Linux domain's t_first_ns reported
    meta = attr.ib(factory=dict)        # the daemon's record of it
    devices = attr.ib(default=None)     # a Linux master's vifs and disks, xl strings

    def info(self):
        return {"domid": self.domid, "name": self.name, "role": self.role,
                "state": self.state, "npages": self.npages, "result": self.result,
                "error": self.error, "t_first_ns": self.t_first_ns, "meta": self.meta,
                "fill": self.fill, "kind": self.kind}

    def record(self):
        """What a restarted daemon needs to take the domain back."""
        return {"domid": self.domid, "name": self.name, "role": self.role,
                "npages": self.npages, "config": self.config, "meta": self.meta,
                "fill": self.fill, "kind": self.kind, "devices": self.devices}


def _spread(times):
    """Median and 90th percentile of fault service times (µs)."""
    times = sorted(times)

    def pct(p):
        return round(times[min(len(times) - 1, int(p * len(times)))], 1) if times else None

    return {"faults_served": len(times), "service_us_median": pct(0.5),
            "service_us_p90": pct(0.9)}


@implementer(IBackend, ILinuxBackend, IBalloonBackend, IForkBackend)
class XenBackend(DeviceClones, ForkClones):
    name = "xen"
    numbers_domains = True      # Xen assigns domids: the controller adopts them
    log = Logger()

    def __init__(self, reactor, work_dir, on_event, guest_kernel=None, fill="auto",
                 grant_cache_pages=DEFAULT_GRANT_CACHE, xenstore_path=None, disk_dir=None):
        self.reactor = reactor
        self._xenstore_path = xenstore_path     # xenstored's socket; None: the default
        self._xs = None
        self.grant_cache_pages = grant_cache_pages
        self.work_dir = work_dir
        self.on_event = on_event
        self.guest_kernel = os.path.abspath(guest_kernel or GUEST_KERNEL)
        self.xc = libxc.XenCtrl()
        self.fm = libxc.ForeignMemory()
        self.mem_paging = self.xc.mem_paging_available()
        self.fill = fill
        self._source = self._evictor = self._grants = None
        self.setup_us_per_page = []     # nominate+evict at launch, per lazy clone
        self._domains = {}
        os.makedirs(work_dir, mode=0o700, exist_ok=True)
        self.images = ImageDomains(reactor, self.xc, work_dir)
        # Disk snapshots are disk-sized: on the host's disk (the daemon's
        # state_dir), not beside the records (under run_dir, often tmpfs).
        self.disks = DiskSnapshots(reactor, disk_dir or os.path.join(work_dir, "disks"))
        self._take_back()
        self._watcher = task.LoopingCall(self._watch)
        self._watcher.clock = reactor
        self._watcher.start(POLL, now=False)

    # -- fill modes

    @property
    def fill_mode(self):
        """What ``fill = auto`` (or the configured fill) gives a clone of
        an image that has an image domain: fork where the hypervisor
        forks, else lazy where it pages, else filled before run (fill =
        lazy on a Xen without MEM_PAGING: launches are refused, saying why)."""
        if self.fill in ("fork", "auto") and self.images.available:
            return "fork"
        return "lazy" if self.mem_paging and self.fill in ("lazy", "auto") else "fill-before-run"

    def fill_modes(self):
        return ((["fork"] if self.images.available else [])
                + (["lazy"] if self.mem_paging else []) + ["before-run"])

    def _fill_of(self, asked, image_id):
        """The fill a launch gets: auto is fork where the image has an
        image domain, else lazy where the hypervisor has MEM_PAGING; a
        mode the hypervisor lacks is refused, naming those it has."""
        if asked not in FILL_MODES:
            raise WireError("bad-argument", "fill must be one of %s, not %r"
                            % (", ".join(FILL_MODES), asked))
        if asked == "auto":
            if self.images.available and self.images.domid(image_id) is not None:
                return "fork"
            return "lazy" if self.mem_paging else "before-run"
        if asked == "fork" and not self.images.available:
            raise WireError("no-fork", "fill=fork needs VM fork: %s; this hypervisor (%s) "
                            "has fill modes %s" % (self.images.refused, self.xc.version(),
                                                   ", ".join(self.fill_modes())))
        if asked == "lazy" and not self.mem_paging:
            raise WireError("no-lazy-fill", "lazy fill needs a Xen built with MEM_PAGING "
                            "(CONFIG_MEM_PAGING=y, see xen/build.sh); this "
                            "hypervisor (%s) has none: use fill=before-run" % self.xc.version())
        return asked

    def fault_source(self):
        """The pager's fault source: the paging rings where lazy fill is
        possible, else one that never faults."""
        if self._source is None:
            if self.mem_paging:
                self._evictor = Evictor()
                self._source = PagingSource(self.reactor, libxc.EvtChn())
            else:
                self._source = FilledSource()
        return self._source

    def free_pages(self):
        """Free memory of the hypervisor (physinfo): the host budget's base."""
        return self.xc.physinfo()["free_pages"]

    # -- helpers

    def _thread(self, fn, *args):
        return xen_errors(threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                                     fn, *args))

    def _get(self, domid):
        dom = self._domains.get(domid)
        if dom is None:
            raise WireError("no-domain", "no domain %r under xenclone on this host" % (domid,))
        return dom

    def _event(self, dom):
        self.on_event(dict(dom.info(), event="state"))

    @defer.inlineCallbacks
    def _xenstore(self):
        """xenstored, where Linux guests' control nodes live (connected on
        first use, reconnected by the client when it drops)."""
        if self._xs is None:
            self._xs = xenstore_client(self.reactor, self._xenstore_path)
        try:
            yield self._xs.connect().addTimeout(10, self.reactor)
        except defer.TimeoutError:
            raise WireError("no-xenstore", "cannot reach xenstored at %s" % self._xs.path)
        return self._xs

    @defer.inlineCallbacks
    def _create(self, config):
        path = os.path.join(self.work_dir, "%s.cfg" % config["name"])
        with open(path, "w") as f:
            f.write(xl.config_text(config))
        domid = yield xl.create_paused(self.reactor, path, config["name"])
        return domid

    @defer.inlineCallbacks
    def _undo(self, domid):
        """A domain half built: gone, whatever else failed."""
        self._drop(domid)
        try:
            yield xl.destroy(self.reactor, domid)
        except WireError as e:
            self.log.error("domain {domid} left behind: {why}", domid=domid, why=e)

    def _track(self, domid, name, role, npages, config, meta, fill="before-run", kind=GUEST,
               devices=None):
        box = Mailbox(self.fm.map(domid, [workload.PARAMS_PFN])) if kind == GUEST else None
        dom = self._domains[domid] = _Domain(domid, name, role, npages, config, box,
                                             kind=kind, fill=fill, meta=meta, devices=devices)
        self._write_record(dom)
        return dom

    def _write_record(self, dom):
        path = self._record_path(dom.domid)
        with open(path + ".tmp", "w") as f:
            json.dump(dom.record(), f)
        os.replace(path + ".tmp", path)

    def _record_path(self, domid):
        return os.path.join(self.work_dir, "domain-%d.json" % domid)

    def _drop(self, domid):
        """Forget a domain: its mapping (which alone would keep a dying
        domain) and its record."""
        dom = self._domains.pop(domid, None)
        if dom is not None and dom.mailbox is not None:
            dom.mailbox.close()
        if os.path.exists(self._record_path(domid)):
            os.unlink(self._record_path(domid))

    def _take_back(self):
        """The domains a previous daemon made that Xen still runs: the
        guest's mailbox and Xen's flags say where each one is."""
        for name in sorted(os.listdir(self.work_dir)):
            if not (name.startswith("domain-") and name.endswith(".json")):
                continue
            with open(os.path.join(self.work_dir, name)) as f:
                rec = json.load(f)
            try:
                info = self.xc.domain_info(rec["domid"])
            except libxc.XenError:
                info = None
            if info is None or info.dying:
                self._drop(rec["domid"])
                self._drop_disks(rec["meta"] if rec["role"] == "clone" else {})
                continue
            dom = self._track(rec["domid"], rec["name"], rec["role"], rec["npages"],
                              rec["config"], rec["meta"], rec.get("fill", "before-run"),
                              rec.get("kind", GUEST), rec.get("devices"))
            dom.paused = info.paused
            if dom.kind == LINUX:
                dom.suspended = info.shutdown_reason == SHUTDOWN_SUSPEND
                dom.state = (DomainState.PAUSED if dom.paused or dom.suspended
                             else DomainState.RUNNING)
                self.log.info("took back {role} {name} (domain {domid}, {state})",
                              role=dom.role, name=dom.name, domid=dom.domid, state=dom.state)
                continue
            box = dom.mailbox.read()
            if box["done"] == workload.DONE_OK:
                dom.state, dom.result = DomainState.DONE, box["result"]
            elif dom.paused:
                dom.state = DomainState.READY if box["ready"] and not box["go"] else DomainState.PAUSED
            else:
                dom.state = DomainState.RUNNING
            self.log.info("took back {role} {name} (domain {domid}, {state})", role=dom.role,
                          name=dom.name, domid=dom.domid, state=dom.state)

    def _pause(self, dom):
        if not dom.paused:
            self.xc.pause(dom.domid)
            dom.paused = True

    def _unpause(self, dom):
        if dom.paused:
            self.xc.unpause(dom.domid)
            dom.paused = False
            if dom.t_first_ns is None:
                dom.t_first_ns = time.monotonic_ns()
        dom.state = DomainState.RUNNING

    # -- masters

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

    # -- bless

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

    # -- clones

    def _fill(self, domid, image):
        """Copy every non-zero image page into the clone and zero the rest:
        what libxl loaded into the fresh domain (kernel, ramdisk, start
        info) is not where the master has it.  Returns the pfns copied."""
        pfns = [p for p in range(image.npages) if not image.zero[p]]
        if image.origin is not None and set(pfns) - set(image.cached_pages()):
            raise WireError("not-here", "mirrored image %s lacks pages on this host (the "
                            "cache let them go before the fill): launch again"
                            % image.image_id)
        for batch in _batches(range(image.npages)):
            with self.fm.map(domid, batch) as m:
                view = memoryview(m.buffer)
                for i, n, zero in _zero_runs(batch, image.zero):
                    pfn, want = batch[i], n * PAGE_SIZE
                    dst = view[i * PAGE_SIZE:i * PAGE_SIZE + want]
                    if zero:
                        dst[:] = bytes(want)
                    elif image.pages is not None:       # granted by the server domain
                        dst[:] = image.pages.read(pfn, n)
                    else:
                        got = os.preadv(image.mem_fd, [dst], pfn * PAGE_SIZE)
                        if got != want:
                            raise WireError("short-image", "image ends at page %d"
                                            % (pfn + got // PAGE_SIZE))
        return pfns

    def _readable(self, image):
        """``image`` as this backend reads it: an image in the server
        domain gets its pages through the grant cache."""
        if image.server_domain is None or image.pages is not None:
            return image
        if self._grants is None:
            self._grants = GrantCache(libxc.GntTab(), self.grant_cache_pages)
        return self._grants.pages(image)

    def launch(self, image, clone):
        return xen_errors(self._launch(image, clone))

    @defer.inlineCallbacks
    def _launch(self, image, clone):
        if image.arch != ARCH:
            raise WireError("wrong-arch", "image is %s, the xen backend launches %s"
                            % (image.arch, ARCH))
        config, kind, record = unpack_state(image.vcpu_state)
        config = dict(config, name=clone.name)
        if kind == LINUX:
            # Kept for a look if it stops: xl would boot a rebooted clone
            # afresh from the kernel, as no clone of the image.
            config.update(on_reboot="preserve", on_crash="preserve")
        fill = self._fill_of(clone.fill or self.fill, image.image_id)   # refused before
        config = yield self._clone_config(image, clone, config, fill)     # anything is built
        if fill == "fork":
            region = yield self._launch_fork(image, clone, config, kind)
            return region
        try:
            region = yield self._launch_domain(image, clone, config, record, kind, fill)
        except Exception:
            self._drop_disks(clone.meta)
            raise
        return region

    @defer.inlineCallbacks
    def _launch_domain(self, image, clone, config, record, kind, fill):
        """A clone libxl makes (``xl create -p``), with its devices: filled
        before it runs, or lazily."""
        xs = (yield self._xenstore()) if kind == LINUX else None
        image = self._readable(image)
        if fill == "lazy":
            region = yield self._launch_lazy(image, clone, config, record, kind, xs)
            return region
        domid = yield self._create(config)
        try:
            filled = yield self._thread(self._fill, domid, image)
            dom = self._track(domid, clone.name, "clone", image.npages, config, clone.meta,
                              kind=kind)
            if kind == LINUX:
                yield self._tell_linux_clone(xs, domid, clone.clone_id)
            else:
                dom.mailbox.write(clone_id=clone.clone_id, input=clone.input, go=1)
            self.xc.hvm_setcontext(domid, record)
            if not clone.paused:
                self._unpause(dom)
        except Exception:
            yield self._undo(domid)
            raise
        return FilledRegion(domid, image.npages, image, self.fm, filled)

    @defer.inlineCallbacks
    def _launch_lazy(self, image, clone, config, record, kind, xs):
        """Paging ring, every page evicted but those the guest needs before
        it can fault (the project's guest's params page, kept mapped for its
        mailbox; a Linux kernel's per-CPU areas), HVM context, unpause: the
        pager fills the rest.  A page Xen itself replaces on a Linux resume
        (the shared info frame's gfn) comes back to the pager as a drop."""
        source = self.fault_source()
        # Refused before anything is built.
        resident = (linux.resume_pages(libxc.hvm_cpus(record), image.read_page, image.npages)
                    if kind == LINUX else [workload.PARAMS_PFN])
        domid = yield self._create(config)
        region = None
        try:
            ring = self.xc.paging_enable(domid)
            try:
                region = PagedRegion(self.xc, source.evtchn, ring, domid, image)
            except Exception:
                ring.close()
                raise
            dom = self._track(domid, clone.name, "clone", image.npages, config, clone.meta,
                              fill="lazy", kind=kind)
            dom.image = image
            if kind == LINUX:
                yield self._tell_linux_clone(xs, domid, clone.clone_id)
            else:
                dom.mailbox.load(image.read_page(workload.PARAMS_PFN))
                dom.mailbox.write(clone_id=clone.clone_id, input=clone.input, go=1)
            stay = set(resident)
            kept, us = yield self._thread(self._evictor.evict_all, domid,
                                          [p for p in range(image.npages) if p not in stay])
            self.setup_us_per_page.append(us)
            if kept:
                # Xen kept these (an extra reference): they get the image's
                # contents now, as a filled clone's would, and never fault.
                self.log.info("clone {name}: {n} pages not evicted (first errno {err})",
                              name=clone.name, n=len(kept), err=next(iter(kept.values())))
            fill = sorted(kept) + (resident if kind == LINUX else [])
            if fill:
                yield self._thread(self._fill_pages, domid, image, fill)
            region.keep(sorted(kept) + resident)
            self.xc.hvm_setcontext(domid, record)
            if not clone.paused:
                self._unpause(dom)
        except Exception:
            if region is not None:
                region.close()
            yield self._undo(domid)
            raise
        return region

    def _fill_pages(self, domid, image, pfns):
        for batch in _batches(pfns):
            with self.fm.map(domid, batch) as m:
                for i, pfn in enumerate(batch):
                    m.buffer[i * PAGE_SIZE:(i + 1) * PAGE_SIZE] = image.read_page(pfn)

    # -- state

    def _info(self, dom):
        """Xen's info of the domain, or None once it is gone or going (xl
        destroy or xl save behind our back: our mapping of its params page
        is all that keeps it, so it is let go at once)."""
        try:
            info = self.xc.domain_info(dom.domid)
        except libxc.XenError:
            info = None
        if info is None or info.dying:
            self._drop(dom.domid)
            return None
        return info

    def _watch(self):
        """Report guests that finished, crashed or vanished, and pause the
        forks of an image domain that is gone (their next touch of an
        unfilled page would find nothing to fill it from)."""
        orphaned = {self.images.domid(i) for i in self.images.gone()}
        for dom in list(self._domains.values()):
            if (dom.fill == "fork" and dom.meta.get("parent") in orphaned
                    and dom.state != DomainState.IMAGE_GONE and self._info(dom) is not None):
                self._pause(dom)
                dom.state = DomainState.IMAGE_GONE
                dom.error = "its image domain %d is gone" % dom.meta["parent"]
                self.log.error("{name} paused: its image domain {parent} is gone",
                               name=dom.name, parent=dom.meta["parent"])
                self._event(dom)
        for dom in list(self._domains.values()):
            info = self._info(dom)
            if info is None:    # xl destroy behind our back: its overlays go too
                self._drop_disks(dom.meta if dom.role == "clone" else {})
                dom.state = DomainState.DESTROYED
                self._event(dom)
                continue
            if dom.state != DomainState.RUNNING:
                continue
            if dom.kind == LINUX:
                # It runs on with no result to report: its first unpause is
                # told at once (the controller's launch_ms).
                first = dom.t_first_ns is not None and not dom.first_told
                if self._linux_stopped(dom, info.shutdown_reason) or first:
                    dom.first_told = True
                    self._event(dom)
                continue
            box = dom.mailbox.read()
            if box["done"] == workload.DONE_OK:
                dom.state, dom.result = DomainState.DONE, box["result"]
            elif box["done"] or info.shutdown_reason is not None:
                dom.state = DomainState.CRASHED
                dom.error = "guest stopped: mailbox done=%#x, Xen shutdown reason %s" % (
                    box["done"], info.shutdown_reason)
            else:
                continue
            self._event(dom)

    def _linux_stopped(self, dom, why):
        """A running Linux guest's state from Xen's shutdown reason: whether
        it changed."""
        if why is None:
            return False
        if why == SHUTDOWN_SUSPEND:     # asked by us (bless) or by another toolstack
            dom.suspended, dom.state = True, DomainState.PAUSED
        elif why == SHUTDOWN_POWEROFF:
            dom.state = DomainState.DONE
        else:       # a reboot too (a triple fault is one): a clone does not boot again
            dom.state = DomainState.CRASHED
            dom.error = "guest stopped: Xen shutdown reason %d" % why
        return True

    def pause(self, domid):
        def pause():
            dom = self._get(domid)
            self._pause(dom)
            if dom.state == DomainState.RUNNING:
                dom.state = DomainState.PAUSED
            return dom.info()

        return xen_errors(defer.maybeDeferred(pause))

    def unpause(self, domid):
        return xen_errors(self._unpause_domain(domid))

    @defer.inlineCallbacks
    def _unpause_domain(self, domid):
        dom = self._get(domid)
        if dom.state in (DomainState.DONE, DomainState.CRASHED):
            raise WireError("not-runnable", "domain %d is %s" % (domid, dom.state))
        if dom.kind == LINUX:
            if dom.suspended:
                # A blessed Linux master runs on: its suspend is cancelled.
                xs = yield self._xenstore()
                yield linux.resume(xs, self.xc, domid)
                dom.suspended = False
        else:
            box = dom.mailbox.read()
            if box["ready"] and not box["go"]:
                # A master at its bless point runs on as clone 0, input 0,
                # as it does on KVM.
                dom.mailbox.write(go=1)
        self._unpause(dom)
        return dom.info()

    # -- domains xenclone did not make

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

    def release(self, domid):
        """Stop managing an adopted domain (a bless of it failed); it runs on."""
        self._drop(domid)
        return defer.succeed(None)

    def destroy(self, domid, keep_disks=False):
        """The domain gone; a clone's disk overlays too, unless kept
        (``kept_disks``: their paths)."""
        def destroy():
            dom = self._get(domid)
            meta = dom.meta if dom.role == "clone" else {}
            done = {"domid": domid}
            if self._info(dom) is None:
                done["gone"] = True
                d = defer.succeed(None)
            elif dom.fill == "fork":
                d = self._destroy_fork(domid)
            else:
                self._drop(domid)
                d = xl.destroy(self.reactor, domid)
            return d.addCallback(lambda _: dict(done, kept_disks=self._drop_disks(meta,
                                                                                  keep_disks)))

        return defer.maybeDeferred(destroy)

    def _sums(self, domid, pfns):
        sums = []
        for batch in _batches(pfns):
            with self._map_paged(domid, batch) as m:
                sums += m.page_sums()
        return sums

    def _map_paged(self, domid, pfns):
        """Map pages of a domain for reading, in a thread: a lazy clone's
        evicted pages fail with ENOENT, and the attempt itself asks the
        pager for them (a paging request), so the map is tried again until
        the reactor has paged them in."""
        deadline = time.monotonic() + PAGE_IN_TIMEOUT
        while True:
            try:
                return self.fm.map(domid, pfns, writable=False)
            except libxc.XenError as e:
                paged = e.failures and all(err == errno.ENOENT for _, err in e.failures)
                if not paged or time.monotonic() > deadline:
                    raise
            time.sleep(PAGE_IN_RETRY)

    def _checked(self, domid, pfns):
        dom = self._get(domid)
        pfns = list(pfns)
        if not all(isinstance(p, int) and 0 <= p < dom.npages for p in pfns):
            raise WireError("out-of-range", "page numbers within 0..%d" % (dom.npages - 1))
        return pfns

    def page_sums(self, domid, pfns):
        d = defer.maybeDeferred(self._checked, domid, pfns)
        return d.addCallback(lambda pfns: self._thread(self._sums, domid, pfns))

    def page_kinds(self, domid, pfns):
        """Every page of a clone that Xen holds is a frame of its own."""
        return defer.maybeDeferred(lambda: [PageState.PRIVATE] * len(self._checked(domid, pfns)))

    def scan(self, domid):
        """The pages Xen counts for the domain: its own frames, and a
        fork's entries shared with its image domain."""
        def scan():
            dom = self._get(domid)
            info = self.xc.domain_info(domid)
            shared = info.shr_pages if dom.fill == "fork" else 0
            return {"shared": shared, "private": info.tot_pages, "zero": 0,
                    "absent": max(0, dom.npages - info.tot_pages - shared)}

        return xen_errors(defer.maybeDeferred(scan))

    def _lazy(self, domid):
        dom = self._get(domid)
        if dom.fill != "lazy":
            raise WireError("unsupported", "domain %s was filled before it ran: no page of "
                            "it can be evicted (only lazy clones page, on a Xen with "
                            "MEM_PAGING)" % dom.name)
        return dom

    def drop_clean(self, domid, pfns):
        """Nominate + evict the pages that still hold the image's contents."""
        def drop():
            dom = self._lazy(domid)
            return self._thread(self._evictor.drop_clean, domid, list(pfns), dom.image)

        return defer.maybeDeferred(drop)

    def page_out(self, domid, pfns, slots, store_path, sync):
        def page_out():
            self._lazy(domid)
            d = self._thread(self._evictor.page_out, domid, list(pfns), list(slots),
                             store_path, sync)

            def failed(f):
                f.trap(OSError)
                raise WireError(failure_code(f.value), "page-out of domain %d to %s failed: %s"
                                % (domid, store_path, f.value))

            return d.addErrback(failed)

        return defer.maybeDeferred(page_out)

    def lazy_stats(self):
        """Lazy fill figures: nominate+evict at launch (µs a page, C) and
        fault service (µs a page, request to answer), over every clone kept
        and by clone."""
        by_clone = self._source.service_times() if isinstance(self._source, PagingSource) else {}
        setup = sorted(self.setup_us_per_page)
        return dict(_spread([t for times in by_clone.values() for t in times]),
                    by_clone={str(d): _spread(times) for d, times in by_clone.items()},
                    setup_us_per_page=round(setup[len(setup) // 2], 2) if setup else None,
                    evict_failed=self._evictor.evict_failed if self._evictor else 0)

    # -- balloon targets: a filled clone's frames are its own, only its
    # guest can give some back

    def balloonable(self):
        return xen_errors(self._balloonable())

    @defer.inlineCallbacks
    def _balloonable(self):
        out = {}
        for dom in list(self._domains.values()):
            if not (dom.kind == LINUX and dom.role == "clone" and dom.fill != "lazy"
                    and dom.state == DomainState.RUNNING):
                continue
            xs = yield self._xenstore()
            target = yield linux.balloon_target(xs, dom.domid)
            if target is not None:
                ceiling = dom.meta.get("balloon_ceiling_pages", dom.npages)
                out[dom.domid] = (dom.npages, ceiling, target)
        return out

    def balloon(self, domid, pages, operator=False):
        """Set the clone's balloon target; the operator's target is also
        the most that memory pressure's end gives back."""
        return xen_errors(self._balloon(domid, pages, operator))

    @defer.inlineCallbacks
    def _balloon(self, domid, pages, operator):
        dom = self._get(domid)
        if dom.role != "clone" or dom.kind != LINUX or dom.fill == "lazy":
            raise WireError("no-balloon", "%s has no balloon driver to give frames back: only "
                            "Linux clones filled before run are ballooned (a lazy clone's "
                            "pages are evicted)" % dom.name)
        if not 1 <= pages <= dom.npages:
            raise WireError("bad-argument", "a target of %s must be 1 to %d pages"
                            % (dom.name, dom.npages))
        xs = yield self._xenstore()
        yield linux.set_balloon_target(xs, domid, pages)
        if operator:
            dom.meta["balloon_ceiling_pages"] = pages
            self._write_record(dom)
        self.log.info("{name}: balloon target {pages} pages", name=dom.name, pages=pages)

    def capabilities(self):
        phys = self.xc.physinfo()
        lazy = self.mem_paging
        forks = self.images.available
        return {"backend": "xen", "version": self.xc.version(), "fill_mode": self.fill_mode,
                "fill_modes": self.fill_modes(),
                "lazy_fill": lazy, "mem_paging": self.mem_paging,
                "fork": forks, "fork_refused": self.images.refused,
                "image_domains": self.image_domains(),
                "sharing": ("fork clones share every page they have not written with their "
                            "image domain" if forks else
                            "none: each clone holds its own copy of every page it has"),
                "eviction": ["drop-clean (nominate+evict)", "page-out"] if lazy else [],
                "lazy": self.lazy_stats() if lazy else None,
                "grant_cache": self._grants.stats() if self._grants else None,
                "free_pages": phys["free_pages"],
                "total_pages": phys["total_pages"], "hap": "hap" in phys["capabilities"]}

    def forget_image(self, image):
        """Clones hold their own copies; only grant maps are kept per image."""
        if self._grants is not None:
            self._grants.forget(image)

    def ping(self):
        return defer.succeed({"pid": None, "domains": len(self._domains)})

    def domains(self):
        """The domains made through this backend, by this daemon or one
        before it (records in work_dir, kept while Xen runs the domain)."""
        return defer.succeed([d.info() for d in self._domains.values()])

    def reattach(self, domid, image):
        """A filled clone has no fault handle to take back: its region,
        with the pages the fill copied, accounted as at launch.  A lazy
        clone gets a paging ring of its own again."""
        def region():
            dom = self._get(domid)
            if dom.fill == "lazy":
                return self._reattach_lazy(dom, self._readable(image))
            if dom.fill == "fork":
                region = ForkRegion(domid, dom.npages, self._readable(image), self.fm)
                return region, [PageState.ABSENT] * dom.npages
            kinds = [PageState.ZERO if image.zero[p] else PageState.SHARED
                     for p in range(image.npages)]
            return FilledRegion(domid, dom.npages, self._readable(image), self.fm, []), kinds

        return defer.maybeDeferred(region)

    def _reattach_lazy(self, dom, image):
        """The dead daemon's paging ring ends and a new one begins, the
        domain paused between them: Xen crashes a guest that touches a
        paged-out page while no ring is there.  Which pages Xen holds is
        not asked (asking pages them in): every page starts absent.  A
        request for one Xen still has is answered as at a nominate race,
        and a page paged out to the store is held by the page-out index."""
        source = self.fault_source()
        running = not dom.paused
        self._pause(dom)
        try:
            self.xc.paging_disable(dom.domid)
            ring = self.xc.paging_enable(dom.domid)
            try:
                region = PagedRegion(self.xc, source.evtchn, ring, dom.domid, image)
            except Exception:
                ring.close()
                raise
        finally:
            if running:
                self._unpause(dom)
        dom.image = image
        self.log.info("lazy clone {name}: paging ring taken back", name=dom.name)
        return region, [PageState.ABSENT] * dom.npages

    def close(self):
        if self._watcher.running:
            self._watcher.stop()
        for dom in self._domains.values():
            if dom.mailbox is not None:
                dom.mailbox.close()
        if self._xs is not None:
            self._xs.close()
        if self._evictor is not None:
            self._evictor.close()
            self._source.evtchn.close()
        if self._grants is not None:
            self._grants.close()
        self.fm.close()
        self.xc.close()
