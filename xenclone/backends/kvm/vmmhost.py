"""The VMM host: the process that owns the KVM micro-VMs.

KVM VM and vCPU fds work only in the process that created them, so the
micro-VMs live here, apart from the daemon and its pager: a pager or daemon
crash leaves every clone in place, its faults waiting in its userfaultfd.
One Python process hosts many VMs (a thread per vCPU, the GIL released in
KVM_RUN), so a clone costs a VM and a thread, not an interpreter.

The daemon drives it over a Unix socket with ``wire`` frames: master memory
and clone userfaultfds cross as SCM_RIGHTS file descriptors.  The process
and its socket are ``vmmhost_main.py``'s, the vCPU threads
``vcpu_threads.py``'s.
"""

import base64
import os
import sys
import threading

import attr
from twisted.internet import threads
from twisted.logger import Logger

from xenclone import workload
from xenclone.backends.kvm.microvm import MicroVM, NotHeld, VMClosed, entry_pfns
from xenclone.backends.kvm.vcpu_threads import VcpuThreads
from xenclone.backends.kvm.xenstore_port import XenStorePort
from xenclone._linux import lib
from xenclone.domain_record import DomainRecord
from xenclone.interfaces import DomainState
from xenclone.pageout_retry import failure_code
from xenclone.pageout_store import PageOutStore
from xenclone.wire import Reply, WireError, takes_fds

ARCH = "kvm-x86-32"
WP_FLAG = lib.LX_KIND_WP
MAX_PFNS = 4096         # pages per eviction request
MAX_SLOT = 1 << 40      # page-out store slots (4 PiB of pages)
MASTER_TIMEOUT = 30.0
SPARE_VMS = 4           # clones-to-be made ahead, off the reactor, for the image last
                        # launched (before that, the master's size): a launch takes one
                        # (its VM, vCPU, memory slot, vCPU thread, mapped RAM and uffd
                        # are most of a clone's start on kvm-pvm)
SPARE_DELAY = 0.005     # s: the next spare is made once the launch that took one has run
SOURCE_GUEST_KERNEL = os.path.join(os.path.dirname(__file__), "..", "..", "..", "guest", "build",
                                   "guest.bin")
INSTALLED_GUEST_KERNEL = os.path.join(sys.prefix, "share", "xenclone", "guest.bin")


def default_guest_kernel():
    """The guest an install puts in its venv, else the one built in the source tree."""
    if os.path.exists(INSTALLED_GUEST_KERNEL):
        return INSTALLED_GUEST_KERNEL
    return os.path.normpath(SOURCE_GUEST_KERNEL)


@attr.s(eq=False)
class Domain(DomainRecord):
    vm = attr.ib()
    npages = attr.ib()
    inputs = attr.ib(factory=dict)
    mem_fd = attr.ib(default=-1)  # master only: its RAM
    parked = attr.ib(default=False)
    t_first_ns = attr.ib(default=None)
    error = attr.ib(default=None)
    thread = attr.ib(default=None)
    want = attr.ib(default="run")
    cond = attr.ib(factory=threading.Condition)
    waiters = attr.ib(factory=list)   # Deferreds fired when the vCPU parks or ends
    store = attr.ib(default=None)     # its PageOutStore, open to write
    meta = attr.ib(factory=dict)      # the daemon's record of it, given back by list
    xenstore = attr.ib(default=None)  # its XenStorePort, when XenStore is served
    image = attr.ib(default=None)     # a spare's: the image its RAM maps (_image_key)

    def info(self):
        return {"domid": self.domid, "name": self.name, "role": self.role,
                "state": self.state, "npages": self.npages, "result": self.result,
                "t_first_ns": self.t_first_ns, "error": self.error, "meta": self.meta}


def _meta(msg):
    meta = msg.get("meta")
    return meta if isinstance(meta, dict) else {}


def _close_store(dom):
    if dom.store is not None:
        dom.store.close()
        dom.store = None


class VmmHost(VcpuThreads):
    """The handler of the VMM host's socket: one op per method."""

    log = Logger()

    def __init__(self, reactor, guest_kernel, xenstore_dir=None):
        self.reactor = reactor
        self.guest_kernel = guest_kernel
        self.xenstore_dir = xenstore_dir
        self.domains = {}
        self.link = None          # the daemon's connection, for events
        self._spares = []         # Domains made ahead (_new_domain) for launches to come
        self._spare_for = None    # (npages, image key or None): what they are made for
        self._spare_fd = None     # that image's memfd, ours, to map their RAM from
        self._making_spare = False

    # -- the vCPU threads' reports (the threads are vcpu_threads.py's)

    def _closed(self, dom):
        if dom.domid is None:      # a spare let go: nobody knew of it
            return
        self.domains.pop(dom.domid, None)
        if dom.xenstore is not None:
            dom.xenstore.close()
        if dom.mem_fd >= 0:
            os.close(dom.mem_fd)
        _close_store(dom)
        waiters, dom.waiters = dom.waiters, []
        for d in waiters:
            d.callback(True)
        self._event("state", domid=dom.domid, state=DomainState.DESTROYED)

    def _set_state(self, dom, state):
        dom.state = state
        self._event("state", **dom.info())

    def _event(self, kind, **fields):
        if self.link is not None and self.link.transport is not None:
            self.link.send_event(kind, **fields)

    # -- domains

    def _xenstore_port(self, domid):
        return XenStorePort(self.xenstore_dir, domid) if self.xenstore_dir else None

    def _in_thread(self, dom, fn):
        """Run a blocking VM operation off the reactor; a VM destroyed
        meanwhile answers as an unknown domain, which it now is."""
        def gone(f):
            f.trap(VMClosed)
            raise WireError("no-domain", "domain %d was destroyed" % dom.domid)

        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                         fn).addErrback(gone)

    def _get(self, msg):
        dom = self.domains.get(msg.get("domid"))
        if dom is None:
            raise WireError("no-domain", "no domain %r on this VMM host" % (msg.get("domid"),))
        return dom

    def _new_domain(self, npages, image_fd=None):
        """A clone-to-be: its VM and its vCPU thread at the gate; given its
        image, its RAM mapped and its uffd registered too."""
        vm = MicroVM(npages, gated=True)
        if image_fd is not None:
            try:
                vm.map_memory(image_fd, private=True)
                vm.register_uffd()
            except Exception:
                vm.close()
                raise
        dom = Domain(None, None, "clone", vm, npages,
                     image=None if image_fd is None else _image_key(image_fd))
        self._spawn(dom)
        return dom

    def _new_spare(self, npages, image_fd):
        """_new_domain in a pool thread, with a copy of the image fd of its own."""
        try:
            return self._new_domain(npages, image_fd)
        finally:
            if image_fd is not None:
                os.close(image_fd)

    def _spare(self, npages, image_fd):
        """A clone-to-be made ahead for this image (or its size), else a new
        one.  The next are made soon, not now: this launch has the CPU first."""
        key = _image_key(image_fd)
        if self._spare_for != (npages, key):
            self.reactor.callLater(SPARE_DELAY, self._aim_spares, npages, os.dup(image_fd))
        else:
            self.reactor.callLater(SPARE_DELAY, self._make_spares)
        for i, dom in enumerate(self._spares):
            if dom.npages == npages and dom.image in (None, key):
                return self._spares.pop(i)
        return self._new_domain(npages)

    def _aim_spares(self, npages, image_fd=None):
        """Make spares for clones of this size and image (``image_fd``,
        ours to keep) from now on; those made for others go."""
        key = None if image_fd is None else _image_key(image_fd)
        if self._spare_for == (npages, key):
            if image_fd is not None:
                os.close(image_fd)
        else:
            for dom in self._spares:
                self._let_go(dom)
            if self._spare_fd is not None:
                os.close(self._spare_fd)
            self._spares, self._spare_for, self._spare_fd = [], (npages, key), image_fd
        self._make_spares()

    def _make_spares(self):
        if self._making_spare or self._spare_for is None or len(self._spares) >= SPARE_VMS:
            return
        self._making_spare = True
        npages = self._spare_for[0]
        image_fd = None if self._spare_fd is None else os.dup(self._spare_fd)

        def made(dom):
            self._making_spare = False
            if (dom.npages, dom.image) == self._spare_for:
                self._spares.append(dom)
            else:
                self._let_go(dom)
            self._make_spares()

        def failed(f):
            self._making_spare = False      # launches make their own VM
            self.log.warn("no spare VM: {why}", why=f.getErrorMessage())

        threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                  self._new_spare, npages, image_fd).addCallbacks(made, failed)

    # -- ops

    def op_ping(self, msg):
        return {"pid": os.getpid(), "domains": len(self.domains)}

    def op_list(self, msg):
        return {"domains": [d.info() for d in self.domains.values()]}

    def op_create_master(self, msg):
        domid, name = msg["domid"], msg["name"]
        if domid in self.domains:
            raise WireError("exists", "domain %d exists" % domid)
        params = workload.Params(**msg["params"])
        npages = msg["npages"]
        with open(self.guest_kernel, "rb") as f:
            kernel = f.read()
        mem_fd = os.memfd_create("xenclone-master-%s" % name, os.MFD_CLOEXEC)
        try:
            os.ftruncate(mem_fd, npages * 4096)
            vm = MicroVM.of(mem_fd, npages, private=False, gated=True)
            try:
                vm.setup_master(params, kernel)
            except Exception:
                vm.close()
                raise
        except Exception:
            os.close(mem_fd)
            raise
        dom = Domain(domid, name, "master", vm, npages, mem_fd=mem_fd, meta=_meta(msg),
                     xenstore=self._xenstore_port(domid))
        self.domains[domid] = dom
        d = self._wait(dom, timeout=MASTER_TIMEOUT)
        self._spawn(dom)
        self._start(dom)
        self._aim_spares(npages)     # its clones will need VMs

        def ready(parked):
            if not parked or dom.state != DomainState.READY:
                raise WireError("not-ready", "master %s did not reach its bless point (%s)"
                                % (name, dom.error or dom.state))
            return dom.info()

        return d.addCallback(ready)

    def op_capture(self, msg):
        dom = self._get(msg)
        if dom.role != "master":
            raise WireError("not-master", "domain %d is a clone; bless its image instead" % dom.domid)
        if dom.state not in (DomainState.READY, DomainState.PAUSED, DomainState.RUNNING):
            raise WireError("not-running", "domain %d is %s and cannot be blessed" % (dom.domid, dom.state))

        def capture(parked):
            if not parked:
                raise WireError("busy", "domain %d does not stop; try again" % dom.domid)
            state = base64.b64encode(dom.vm.state()).decode()
            return Reply({"arch": ARCH, "vcpu_state": state, "npages": dom.npages},
                         fds=[dom.mem_fd])

        return self._park(dom).addCallback(capture)

    @takes_fds
    def op_launch(self, msg):
        domid = msg["domid"]
        if len(msg.fds) != 1:
            for fd in msg.fds:
                os.close(fd)
            raise WireError("malformed", "launch needs the image memory fd")
        image_fd = msg.fds[0]
        try:
            if domid in self.domains:
                raise WireError("exists", "domain %d exists" % domid)
            if msg["arch"] != ARCH:
                raise WireError("wrong-arch", "image is %s, this host runs %s" % (msg["arch"], ARCH))
            dom = self._spare(msg["npages"], image_fd)
            try:
                if dom.image is None:       # not made for this image
                    dom.vm.map_memory(image_fd, private=True)
                    dom.vm.register_uffd()
            except Exception:
                self._let_go(dom)
                raise
        finally:
            os.close(image_fd)   # the private mapping keeps the image alive
        vm, uffd = dom.vm, dom.vm.uffd
        state = base64.b64decode(msg["vcpu_state"])
        try:
            vm.set_state(state)
            # A clone that shares nothing gets no image page mapped for it.
            prefilled = vm.prefill(entry_pfns(state)) if msg.get("prefill", True) else []
        except Exception:
            self._let_go(dom)
            raise
        # vm keeps its own uffd open, so the clone outlives the pager's copy.
        dom.domid, dom.name, dom.meta = domid, msg["name"], _meta(msg)
        dom.inputs = {workload.PORT_CLONE_ID: msg["clone_id"], workload.PORT_INPUT: msg["input"]}
        dom.xenstore = self._xenstore_port(domid)
        self.domains[domid] = dom
        if not msg.get("paused"):
            self._start(dom)
        return Reply({"base": vm.addr, "npages": dom.npages, "prefilled": prefilled},
                     fds=[uffd])

    def op_forget_image(self, msg):
        """The daemon discarded an image: spares made for its clones map it,
        and let it go."""
        if self._spare_for is not None and self._spare_for[1] == (msg.get("dev"), msg.get("ino")):
            self._aim_spares(self._spare_for[0])
        return {}

    def op_reattach(self, msg):
        """A clone's fault handle again, for a daemon that restarted (this
        process kept the uffd; faults raised meanwhile wait in it), and its
        pages as the pager counts them (payload: one byte each)."""
        dom = self._get(msg)
        if dom.role != "clone" or dom.vm.uffd is None:
            raise WireError("not-clone", "domain %d has no fault handle" % dom.domid)
        return self._in_thread(dom, dom.vm.pager_kinds).addCallback(
            lambda kinds: Reply({"base": dom.vm.addr, "npages": dom.npages}, kinds,
                                fds=[dom.vm.uffd]))

    def op_pause(self, msg):
        dom = self._get(msg)

        def paused(parked):
            # Not parked: the vCPU waits in a page fault and will park as
            # soon as the fault is served, before it runs guest code again.
            if not parked and dom.state == DomainState.RUNNING:
                self._set_state(dom, DomainState.PAUSED)
            return dict(dom.info(), blocked_in_fault=not parked)

        return self._park(dom).addCallback(paused)

    def op_unpause(self, msg):
        dom = self._get(msg)
        if dom.state in (DomainState.DONE, DomainState.CRASHED):
            raise WireError("not-runnable", "domain %d is %s" % (dom.domid, dom.state))
        self._resume(dom)
        return dom.info()

    def op_destroy(self, msg):
        dom = self._get(msg)
        if not dom.thread.is_alive():
            dom.vm.close()
            self._closed(dom)
            return {"domid": dom.domid}
        with dom.cond:
            dom.want = "stop"
            dom.cond.notify()
        d = self._wait(dom)
        dom.vm.kick(dom.thread.ident)

        def stopped(ended):
            if ended:
                return {"domid": dom.domid}
            # Blocked in a fault nobody serves: releasing the userfaultfd
            # lets the fault complete, and the thread then sees the kick.
            dom.vm.release_uffd()

            def released(ended):
                if not ended:
                    raise WireError("busy", "domain %d waits in a page fault whose handler "
                                    "still holds its userfaultfd" % dom.domid)
                return {"domid": dom.domid, "forced": True}

            return self._wait(dom).addCallback(released)

        return d.addCallback(stopped)

    def op_page_sums(self, msg):
        """64-bit word sums of guest pages, read in C (the GIL released: a
        clone page not yet filled faults and is served by the pager)."""
        dom = self._get(msg)
        pfns = msg.get("pfns")
        if not isinstance(pfns, list) or len(pfns) > 4096 or not all(
                isinstance(p, int) and 0 <= p < dom.npages for p in pfns):
            raise WireError("out-of-range", "up to 4096 page numbers within 0..%d" % (dom.npages - 1))
        return self._in_thread(dom, lambda: [dom.vm.page_sums(p, 1)[0] for p in pfns]
                               ).addCallback(lambda sums: {"sums": sums})

    def op_drop_clean(self, msg):
        """Unmap clean pages. The pager holds them first, so a write to one
        waits for the pager; no need to stop the vCPU."""
        dom = self._get(msg)
        return {"dropped": dom.vm.drop_clean(_pfns(dom, msg["pfns"]))}

    def op_page_out(self, msg):
        dom = self._get(msg)
        pfns, slots, store, sync = (msg.get(k) for k in ("pfns", "slots", "store", "sync"))
        pfns = _pfns(dom, pfns)
        if not (isinstance(slots, list) and len(slots) == len(pfns)
                and all(_is_int(s, MAX_SLOT) for s in slots) and len(set(slots)) == len(slots)):
            raise WireError("bad-request", "slots: distinct integers in 0..%d, one per page"
                            % (MAX_SLOT - 1))
        if not (isinstance(store, str) and os.path.isabs(store) and "\0" not in store):
            raise WireError("bad-request", "store must be an absolute path")
        if not isinstance(sync, bool):
            raise WireError("bad-request", "sync must be true or false")
        try:
            pages = self._store(dom, store)
        except OSError as e:
            raise WireError("pageout-failed", "cannot open page-out store %s: %s" % (store, e))

        def page_out():
            try:
                return dom.vm.page_out(pfns, slots, pages, sync)
            except NotHeld as e:
                raise WireError("not-held", "domain %d: %s" % (dom.domid, e))
            except VMClosed:
                raise
            except OSError as e:
                # Nothing was dropped: the pages are still the clone's.
                raise WireError(failure_code(e), "page-out of domain %d to %s failed: %s"
                                % (dom.domid, store, e))

        return self._in_thread(dom, page_out).addCallback(lambda crcs: {"crcs": crcs})

    def _store(self, dom, path):
        if dom.store is None or dom.store.path != path:
            store = PageOutStore(path)
            store.open()
            _close_store(dom)
            dom.store = store
        return dom.store

    def op_page_kinds(self, msg):
        """The kernel's kind of each page (absent, shared, private, zero)."""
        dom = self._get(msg)
        pfns = msg.get("pfns")
        if not isinstance(pfns, list) or len(pfns) > 4096 or not all(
                _is_int(p, dom.npages) for p in pfns):
            raise WireError("bad-request", "up to 4096 page numbers within 0..%d" % (dom.npages - 1))
        if not pfns:
            return {"kinds": []}
        lo = min(pfns)
        kinds = dom.vm.kinds(lo, max(pfns) - lo + 1)     # one PAGEMAP_SCAN
        return {"kinds": [kinds[p - lo] & ~WP_FLAG for p in pfns]}

    def op_scan(self, msg):
        dom = self._get(msg)
        return self._in_thread(dom, dom.vm.scan).addCallback(lambda counts: {"counts": counts})


def _image_key(fd):
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _is_int(v, limit):
    return type(v) is int and 0 <= v < limit


def _pfns(dom, pfns):
    if not (isinstance(pfns, list) and len(pfns) <= MAX_PFNS
            and all(_is_int(p, dom.npages) for p in pfns) and len(set(pfns)) == len(pfns)):
        raise WireError("bad-request", "up to %d distinct page numbers within 0..%d"
                        % (MAX_PFNS, dom.npages - 1))
    return pfns
