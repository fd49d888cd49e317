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

import os

from twisted.internet import defer, task, threads
from twisted.logger import Logger
from zope.interface import implementer

from xenclone.backends.xen import libxc, xenctrl, xl
from xenclone.backends.xen.clone_devices import DeviceClones
from xenclone.backends.xen.disk_snapshots import DiskSnapshots
from xenclone.backends.xen.domains import POLL, Domains
from xenclone.backends.xen.errors import xen_errors
from xenclone.backends.xen.evict import Evictor
from xenclone.backends.xen.filled import FilledSource
from xenclone.backends.xen.fork_clones import ForkClones
from xenclone.backends.xen.grant_cache import DEFAULT_LIMIT as DEFAULT_GRANT_CACHE
from xenclone.backends.xen.image_domains import ImageDomains
from xenclone.backends.xen.launch import Launches
from xenclone.backends.xen.masters import Masters
from xenclone.backends.xen.memory import Memory
from xenclone.backends.xen.paging import PagingSource
from xenclone.interfaces import (IBackend, IBalloonBackend, IDomainNumbering, IForkBackend,
                                 IHypervisorMemory, ILinuxBackend, IUnwatchedWrites)
from xenclone.wire import WireError
from xenclone.xenstore.connect import bulk_client, xenstore_client

GUEST_KERNEL = os.path.join(os.path.dirname(__file__), "..", "..", "..", "guest", "build",
                            "guest.elf")
FILL_MODES = ("auto", "fork", "lazy", "before-run")


@implementer(IBackend, ILinuxBackend, IBalloonBackend, IForkBackend, IHypervisorMemory,
             IDomainNumbering, IUnwatchedWrites)
class XenBackend(Masters, Launches, Domains, Memory, DeviceClones, ForkClones):
    """The backend: its state and the helpers its lifecycles share; each
    lifecycle is a mixin (``masters.py``, ``launch.py``, ``fork_clones.py``,
    ``domains.py``, ``memory.py``)."""

    name = "xen"
    log = Logger()

    def __init__(self, reactor, work_dir, on_event, guest_kernel=None, fill="auto",
                 grant_cache_pages=DEFAULT_GRANT_CACHE, xenstore_path=None, disk_dir=None):
        self.reactor = reactor
        self._xenstore_path = xenstore_path     # xenstored's socket; None: the default
        self._xs = None
        # A second client for many writes at once, where there is a better one.
        self._bulk_xs = bulk_client(reactor, xenstore_path)
        self.grant_cache_pages = grant_cache_pages
        self.work_dir = work_dir
        self.on_event = on_event
        self.guest_kernel = os.path.abspath(guest_kernel or GUEST_KERNEL)
        self.xc = xenctrl.XenCtrl()
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

    def _thread(self, fn, *args):
        return xen_errors(threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                                     fn, *args))

    def _xenstore(self):
        """xenstored, where Linux guests' control nodes live (connected on
        first use, reconnected by the client when it drops)."""
        if self._xs is None:
            self._xs = xenstore_client(self.reactor, self._xenstore_path)
        return self._connected(self._xs)

    def _xenstore_bulk(self):
        """The client for many writes at once (``connect.bulk_client``):
        the usual one where it is as good."""
        if self._bulk_xs is None:
            return self._xenstore()
        return self._connected(self._bulk_xs)

    @defer.inlineCallbacks
    def _connected(self, xs):
        try:
            yield xs.connect().addTimeout(10, self.reactor)
        except defer.TimeoutError:
            raise WireError("no-xenstore", "cannot reach xenstored at %s" % xs.path)
        return xs

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

    def close(self):
        if self._watcher.running:
            self._watcher.stop()
        for dom in self._domains.values():
            if dom.mailbox is not None:
                dom.mailbox.close()
        for xs in (self._xs, self._bulk_xs):
            if xs is not None:
                xs.close()
        if self._evictor is not None:
            self._evictor.close()
            self._source.evtchn.close()
        if self._grants is not None:
            self._grants.close()
        if self._xencall is not None:
            self._xencall.close()
        self.fm.close()
        self.xc.close()
