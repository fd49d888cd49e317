"""The daemon's control API: what ``xenclone <command>`` asks for.

Backend-neutral: it drives an ``IBackend``, an ``IMemoryServer`` and the
``Pager``.  Every op checks its input and fails with a ``WireError`` whose
text is meant for the operator.
"""

import dataclasses
import hashlib
import os
import time

import attr
from twisted.internet import defer, task
from twisted.logger import Logger

from xenclone import memory_check, workload, xl_keys
from xenclone.control.settings_ops import SettingsOps
from xenclone.interfaces import FIRST_HANDLE, PAGE_SIZE, DomainState, IForkBackend, ILinuxBackend
from xenclone.names import BadName, check_name
from xenclone.wire import WireError

MIN_MEMORY_MIB = 4
MAX_MEMORY_MIB = 64 * 1024
MAX_LAUNCH = 256
MAX_IDENTITY_WAIT = 3600     # s: --wait-identity
LIVE = (DomainState.RUNNING, DomainState.PAUSED, DomainState.READY, DomainState.DONE,
        DomainState.WAITING_FOR_MEMSERVER, DomainState.PAUSED_BY_TIMEOUT,
        DomainState.IMAGE_GONE)


@attr.s(frozen=True)
class MasterSpec:
    domid = attr.ib()
    name = attr.ib()
    npages = attr.ib()
    params = attr.ib()                 # the project's guest: its workload (else None)
    meta = attr.ib(factory=dict)       # the daemon's record, kept by the backend
    boot = attr.ib(default=None)       # a Linux master: memory, vcpus, kernel, ramdisk, extra,
                                       # vif, disk (xl strings)


@attr.s(frozen=True)
class CloneSpec:
    domid = attr.ib()
    name = attr.ib()
    clone_id = attr.ib()
    input = attr.ib()
    paused = attr.ib(default=False)
    share = attr.ib(default=True)      # share.onfetch: map image pages shared
    meta = attr.ib(factory=dict)
    fill = attr.ib(default=None)       # lazy | before-run | auto; None: the backend's


@attr.s(eq=False)
class Domain:
    domid = attr.ib()
    name = attr.ib()
    role = attr.ib()
    memory_mib = attr.ib()
    image = attr.ib(default=None)
    clone_id = attr.ib(default=None)
    input = attr.ib(default=None)
    state = attr.ib(default=DomainState.PAUSED)
    result = attr.ib(default=None)
    params = attr.ib(default=None)
    t0_ns = attr.ib(default=None)
    launch_ms = attr.ib(default=None)
    waiters = attr.ib(factory=list)
    fill_mode = attr.ib(default=None)      # a clone's, from its region

    def record(self):
        """What the backend keeps for a daemon that restarts."""
        return {"memory_mib": self.memory_mib, "image": self.image, "clone_id": self.clone_id,
                "input": self.input, "params": self.params}

    def summary(self):
        return {"domid": self.domid, "name": self.name, "role": self.role,
                "image": self.image, "state": self.state, "memory_mib": self.memory_mib}


def _image_arg(msg):
    """The request's image name: a clone's image is never None (a master's
    is), a list is not even a dict key, and a name may reach a path."""
    try:
        return check_name(msg.get("image"), "image name")
    except BadName as e:
        raise WireError("bad-argument", e.message)


def _int(msg, key, lo, hi, default=None):
    value = msg.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise WireError("bad-argument", "%s must be an integer from %d to %d" % (key, lo, hi))
    return value


def _unknown_identity(f):
    """A clone the backend no longer has: its handshake cannot be read."""
    f.trap(WireError)
    return {"identity": "unknown (%s)" % f.value}


AUDIT_SETTLE_ROUNDS = 20      # 50 ms apart

# States in which a domain is still on its way (``wait`` waits on them).
_RUNS = (DomainState.RUNNING, DomainState.WAITING_FOR_MEMSERVER)
# The daemon's state -> the backend's word for it, which does not override it.
_REFINES = {DomainState.WAITING_FOR_MEMSERVER: DomainState.RUNNING,
            DomainState.PAUSED_BY_TIMEOUT: DomainState.PAUSED,
            DomainState.IMAGE_GONE: DomainState.PAUSED}


class Controller(SettingsOps):
    log = Logger()

    def __init__(self, reactor, backend, memserver, pager, host_memory, hoard_rate=5000,
                 share_onfetch=True, memserver_timeout=0, working_sets=None, balloons=None,
                 kept=None):
        self.reactor = reactor
        self.kept = kept                      # OperatorState: settings kept across restarts
        self.working_sets = working_sets      # REAP: record, then prefetch (or None)
        self.memserver_timeout = memserver_timeout    # s; 0: wait for ever
        self._wait_timers = {}        # domid -> pause after the timeout
        pager.on_waiting = self._memserver_waiting
        self.backend = backend
        self.host_memory = host_memory
        self.balloons = balloons              # BalloonService where only guests give frames back
        self.hoard_rate = hoard_rate
        self.share_onfetch = share_onfetch
        self.memserver = memserver
        self.pager = pager
        self.domains = {}
        self._images = {}         # image id -> OpenImage (this host's mapping)
        self._next_domid = FIRST_HANDLE if getattr(backend, "numbers_domains", False) else 1
        self._next_clone_id = {}
        self.on_change = []       # called with no arguments when domains or images change

    def _changed(self):
        for listener in self.on_change:
            listener()

    # -- helpers

    def _domain(self, ref):
        # Not a bool (JSON true is no domid), not a non-ASCII digit ("²").
        if type(ref) is int or (isinstance(ref, str) and ref.isascii() and ref.isdigit()):
            dom = self.domains.get(int(ref))
        else:
            dom = next((d for d in self.domains.values() if d.name == ref), None)
        if dom is None:
            raise WireError("no-domain", "unknown domain %r" % (ref,))
        return dom

    def _allocate(self):
        domid = self._next_domid
        self._next_domid += 1
        return domid

    def reserve_domid(self, domid):
        """A domain taken back after a restart keeps its id."""
        self._next_domid = max(self._next_domid, domid + 1)

    def note_clone_id(self, image_id, clone_id):
        if clone_id is not None:
            self._next_clone_id[image_id] = max(self._next_clone_id.get(image_id, 0), clone_id)

    def _adopt(self, dom, domid):
        """The backend's id for the domain, where it numbers them itself."""
        if domid != dom.domid:
            self.domains.pop(dom.domid, None)
            dom.domid = domid
            self.domains[domid] = dom

    def _set_state(self, dom, state):
        dom.state = state
        self._changed()
        if state not in _RUNS and self.working_sets is not None:
            self.working_sets.finished(dom.domid)
        if state not in _RUNS:
            waiters, dom.waiters = dom.waiters, []
            for d in waiters:
                d.callback(dom)

    def on_backend_event(self, msg):
        """State reports from the backend (vCPU exits, halts, crashes)."""
        dom = self.domains.get(msg.get("domid"))
        if dom is None or msg["event"] != "state":
            return
        if msg.get("result") is not None:
            dom.result = msg["result"]
        if msg.get("t_first_ns") and dom.t0_ns and dom.launch_ms is None:
            dom.launch_ms = (msg["t_first_ns"] - dom.t0_ns) / 1e6
        if msg["state"] == DomainState.DESTROYED:
            self._forget(dom)
        elif _REFINES.get(dom.state) != msg["state"]:
            self._set_state(dom, msg["state"])

    def _memserver_waiting(self, domid, waiting):
        """A clone's fault waits on the memory server (or no longer does).
        After the timeout it is paused, so it does not hang with no trace;
        it runs on by itself once its fault is served."""
        dom = self.domains.get(domid)
        if dom is None:
            return
        timer = self._wait_timers.pop(domid, None)
        if timer is not None and timer.active():
            timer.cancel()
        if waiting and dom.state == DomainState.RUNNING:
            self._set_state(dom, DomainState.WAITING_FOR_MEMSERVER)
            if self.memserver_timeout:
                self._wait_timers[domid] = self.reactor.callLater(
                    self.memserver_timeout, self._pause_waiting, dom)
        elif not waiting and dom.state == DomainState.WAITING_FOR_MEMSERVER:
            self._set_state(dom, DomainState.RUNNING)
        elif not waiting and dom.state == DomainState.PAUSED_BY_TIMEOUT:
            self.log.info("{name}: the memory server answers again; resumed", name=dom.name)
            self.backend.unpause(domid).addCallbacks(
                lambda _: self._set_state(dom, DomainState.RUNNING),
                lambda f: self.log.failure("{name}: could not resume", f, name=dom.name))

    def _pause_waiting(self, dom):
        self._wait_timers.pop(dom.domid, None)
        if dom.state != DomainState.WAITING_FOR_MEMSERVER:
            return
        self.log.warn("{name}: waited {s} s for the memory server; paused", name=dom.name,
                      s=self.memserver_timeout)
        self.backend.pause(dom.domid).addCallbacks(
            lambda _: self._set_state(dom, DomainState.PAUSED_BY_TIMEOUT),
            lambda f: self.log.failure("{name}: could not pause", f, name=dom.name))

    def _forget(self, dom):
        self.domains.pop(dom.domid, None)
        if self.kept is not None:
            self.kept.forget_clone(dom.domid)
        if self.working_sets is not None:
            self.working_sets.gone(dom.domid)
        self.pager.detach(dom.domid)
        self._set_state(dom, DomainState.DESTROYED)

    def open_image(self, image_id):
        if image_id in self._images:
            return defer.succeed(self._images[image_id])
        d = self.memserver.open(image_id)

        def keep(image):
            self._images[image_id] = image
            self.pager.track_image(image)
            return image

        return d.addCallback(keep)

    # -- ops

    def op_pids(self, msg):
        """The processes whose memory the kernel should be asked about."""
        def pids(r):
            found = {"daemon": os.getpid(), "vmmhost": r[0]["pid"], "memserver": r[1]["pid"]}
            return {k: v for k, v in found.items() if v is not None}   # Xen: no VMM host

        d = defer.gatherResults([self.backend.ping(), self.memserver.ping()], consumeErrors=True)
        return d.addCallback(pids)

    def op_destroy_all(self, msg):
        doms = sorted(self.domains.values(), key=lambda d: d.role != "clone")
        d = defer.succeed(None)
        for dom in doms:
            d.addCallback(lambda _, domid=dom.domid: self.op_destroy({"domain": domid}))
        return d.addCallback(lambda _: {"destroyed": [dom.domid for dom in doms]})

    @defer.inlineCallbacks
    def op_image_check(self, msg):
        """Read back, from the memory server, every page the image's clones
        wrote: each must still hold the image's own data."""
        image_id = _image_arg(msg)
        bad = []
        checked = 0
        for dom in list(self.domains.values()):
            if dom.image != image_id or not dom.params:
                continue
            params = workload.Params(**dom.params)
            for pfn in sorted(workload.pages_written(params, dom.clone_id, dom.input)):
                data = yield self.memserver.fetch(image_id, pfn, 1)
                checked += 1
                if data != workload.image_page(params, pfn):
                    bad.append(pfn)
        return {"unchanged": not bad and checked > 0, "checked_pages": checked, "changed_pages": bad}

    @defer.inlineCallbacks
    def op_isolation_check(self, msg):
        """Each clone of the image must still see the image's data in every
        page that another clone wrote (and it did not)."""
        image_id = _image_arg(msg)
        clones = [d for d in self.domains.values() if d.image == image_id and d.params]
        written = {}
        for dom in clones:
            params = workload.Params(**dom.params)
            written[dom.domid] = workload.pages_written(params, dom.clone_id, dom.input)
        leaks, checked = [], 0
        for dom in clones:
            params = workload.Params(**dom.params)
            others = sorted(set().union(*(w for d, w in written.items() if d != dom.domid))
                            - written[dom.domid])
            sums = yield self.backend.page_sums(dom.domid, others)
            for pfn, got in zip(others, sums):
                checked += 1
                if got != workload.page_sum(workload.image_page(params, pfn)):
                    leaks.append([dom.name, pfn])
        return {"isolated": not leaks and checked > 0, "checked_pages": checked, "leaks": leaks}

    @defer.inlineCallbacks
    def op_memory_check(self, msg):
        """Every data page of finished clones (of ``image``, or the one
        ``domain``) against what the workload must have left there."""
        if msg.get("domain") is not None:
            clones = [self._clone(msg)]
        else:
            image_id = _image_arg(msg)
            clones = [d for d in self.domains.values() if d.image == image_id]
        checked, lost, unchecked = 0, [], []
        for dom in sorted(clones, key=lambda d: d.domid):
            if dom.state != DomainState.DONE or not dom.params:
                unchecked.append(dom.name)
                continue
            params = workload.Params(**dom.params)
            expected = memory_check.ExpectedMemory(params, dom.clone_id, dom.input)
            pfns = list(memory_check.data_pfns(params))
            for first in range(0, len(pfns), 4096):
                part = pfns[first:first + 4096]
                got = yield self.backend.page_sums(dom.domid, part)
                want = expected.sums(part)
                lost += [[dom.name, p] for p, g, w in zip(part, got, want) if g != w]
                checked += len(part)
        return {"clones": len(clones) - len(unchecked), "checked_pages": checked,
                "lost_pages": len(lost), "first_lost": lost[:20], "unchecked": unchecked}

    def op_page(self, msg):
        """Digest of image pages, read through the memory server."""
        image_id = _image_arg(msg)
        pfn = _int(msg, "pfn", 0, 2**40)
        count = _int(msg, "count", 1, 256, default=1)

        def digest(data):
            return {"image": image_id, "pfn": pfn, "count": count,
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "zero": not any(data)}

        return self.memserver.fetch(image_id, pfn, count).addCallback(digest)

    @defer.inlineCallbacks
    def kernel_view(self):
        """Clone memory as the kernel counts it: each image cache's resident
        pages (memfd blocks) and each clone's pages by kind (pagemap)."""
        cache = {image_id: os.fstat(image.mem_fd).st_blocks * 512 // PAGE_SIZE
                 for image_id, image in self._images.items()}
        clones = {}
        for dom in list(self.domains.values()):
            if dom.role == "clone" and self.pager.ledger.has_clone(dom.domid):
                try:
                    clones[dom.domid] = yield self.backend.scan(dom.domid)
                except WireError as e:
                    if e.code != "no-domain":     # destroyed while we looked
                        raise
        private = sum(c["private"] for c in clones.values())
        return {"image_cache_pages": cache, "clones": clones,
                "allocated_pages": sum(cache.values()) + private,
                "resident_pages": sum(c["shared"] + c["private"] for c in clones.values()),
                "private_pages": private}

    def op_host(self, msg):
        # kernel=false: the ledger's figures only, cheap enough to poll often (plots).
        d = self.kernel_view() if msg.get("kernel", True) is not False else defer.succeed(None)
        d.addCallback(lambda kernel: {
            "backend": self.backend.name, "capabilities": self.backend.capabilities(),
            "ledger": self.pager.ledger.host_stats(), "kernel": kernel,
            "stalled": self.pager.stalled, "waiting": self.pager.waiting(),
            "pressure": self.host_memory.state(),
            "balloons": self.balloons.last if self.balloons is not None else None,
            "policy": self.pager.ledger.policy.name})
        return d

    def op_create(self, msg):
        cfg = msg.get("config")
        if not isinstance(cfg, dict):
            raise WireError("bad-config", "create needs a parsed domain config")
        try:
            name = check_name(cfg.get("name"), "domain name")
        except ValueError as e:
            raise WireError("bad-config", str(e))
        if any(d.name == name for d in self.domains.values()):
            raise WireError("exists", "a domain named %r exists" % name)
        cfg, warning = xl_keys.for_master(cfg, name, self.log)    # the command prints it too
        return self._create(name, cfg).addCallback(lambda r: dict(r, warning=warning))

    def _create(self, name, cfg):
        memory = _int(cfg, "memory", MIN_MEMORY_MIB, MAX_MEMORY_MIB)
        if cfg.get("kernel"):
            return self._create_linux(name, memory, cfg)
        if cfg.get("vcpus", 1) != 1 or cfg.get("ramdisk") or cfg.get("extra"):
            raise WireError("bad-config", "the project's guest takes 1 vCPU and no ramdisk or "
                            "extra; name a kernel for a Linux master")
        if cfg.get("vif") or cfg.get("disk"):
            raise WireError("bad-config", "the project's guest has no vif or disk: only a "
                            "Linux master (kernel =) has devices")
        try:
            params = workload.Params.for_memory(
                memory, read_percent=cfg.get("read_percent", 10),
                write_pages=cfg.get("write_pages", 8), zero_every=cfg.get("zero_every", 16),
                seed=cfg.get("seed", 1), hostile=_int(cfg, "hostile", 0, 10**9, default=0))
        except (TypeError, ValueError) as e:
            raise WireError("bad-config", "workload: %s" % e)
        dom = Domain(self._allocate(), name, "master", memory, params=dataclasses.asdict(params))
        self.domains[dom.domid] = dom
        spec = MasterSpec(dom.domid, name, memory * 1024 * 1024 // PAGE_SIZE, dom.params,
                          dom.record())
        return self._create_master(dom, spec)

    def _create_linux(self, name, memory, cfg):
        """A Linux PVH master: no workload, it runs once its kernel is up."""
        if not ILinuxBackend.providedBy(self.backend):
            raise WireError("unsupported", "Linux masters need the xen backend, not %s"
                            % self.backend.name)
        boot = {"memory": memory, "vcpus": _int(cfg, "vcpus", 1, 128, default=1)}
        for key in ("kernel", "ramdisk", "extra"):
            value = cfg.get(key) or None
            if value is not None and not isinstance(value, str):
                raise WireError("bad-config", "%s must be a string" % key)
            boot[key] = value
        for key in ("vif", "disk"):
            value = cfg.get(key) or []
            if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise WireError("bad-config", "%s must be a list of strings" % key)
            boot[key] = value
        dom = Domain(self._allocate(), name, "master", memory)
        self.domains[dom.domid] = dom
        spec = MasterSpec(dom.domid, name, memory * 1024 * 1024 // PAGE_SIZE, None,
                          dom.record(), boot)
        return self._create_master(dom, spec)

    def _create_master(self, dom, spec):
        def failed(f):
            self.domains.pop(dom.domid, None)
            return f

        def created(info):
            self._adopt(dom, info["domid"])
            self._set_state(dom, info["state"])
            return dom.summary()

        return self.backend.create_master(spec).addCallbacks(created, failed)

    @defer.inlineCallbacks
    def _take_over(self, ref):
        """A domain the daemon does not know, taken over from the
        hypervisor's toolstack (a Linux PVH domU of xl's) to be blessed."""
        if not isinstance(ref, (str, int)) or isinstance(ref, bool):
            raise WireError("bad-argument", "domain must be a name or an id")
        info = yield self.backend.adopt(ref)
        dom = Domain(info["domid"], info["name"], "master", info["npages"] * PAGE_SIZE // 2**20,
                     state=info["state"])
        self.domains[dom.domid] = dom
        self.reserve_domid(dom.domid)
        self._changed()
        return dom

    def op_bless(self, msg):
        try:
            dom = self._domain(msg.get("domain"))
        except WireError:
            if not ILinuxBackend.providedBy(self.backend):
                raise
            return self._take_over(msg.get("domain")).addCallback(self._bless_taken, msg)
        return self._bless(dom, msg)

    def _bless_taken(self, dom, msg):
        """A domain taken over for this bless goes back as it was if the
        bless fails before it suspended (a bad image name, no ack)."""
        def let_go(f):
            if dom.state != DomainState.PAUSED:
                self.domains.pop(dom.domid, None)
                self._changed()
                return self.backend.release(dom.domid).addCallback(lambda _: f)
            return f

        return defer.maybeDeferred(self._bless, dom, msg).addErrback(let_go)

    def _bless(self, dom, msg):
        # A clone is blessed only where clones fork (a clone of a clone):
        # the backend says which clones it can capture.
        if dom.role != "master" and not IForkBackend.providedBy(self.backend):
            raise WireError("not-master", "%s is a clone: launch more from its image instead" % dom.name)
        if dom.state not in (DomainState.READY, DomainState.RUNNING, DomainState.PAUSED):
            raise WireError("not-running", "%s is %s and cannot be blessed" % (dom.name, dom.state))
        try:
            name = check_name(msg.get("name") or dom.name, "image name")
        except ValueError as e:
            raise WireError("bad-argument", str(e))

        @defer.inlineCallbacks
        def bless():
            capture = yield self.backend.capture(dom.domid)
            meta = dict(capture.meta, master=dom.name, memory_mib=dom.memory_mib,
                        params=dom.params)
            try:
                info = yield self.memserver.put(name, attr.evolve(capture, meta=meta))
            finally:
                capture.close()
            image = yield self.open_image(name)   # its cache counts in the budget from now
            if IForkBackend.providedBy(self.backend):
                yield self.backend.prepare_image(image, self._images.get(dom.image))
            self._set_state(dom, DomainState.PAUSED)
            if msg.get("resume"):
                yield self.backend.unpause(dom.domid)
            return info

        return bless()

    def op_launch(self, msg):
        image_id = _image_arg(msg)
        count = _int(msg, "count", 1, MAX_LAUNCH, default=1)
        paused = bool(msg.get("paused"))
        share = msg.get("share", self.share_onfetch)
        prefetch = msg.get("prefetch", True)
        if not isinstance(share, bool) or not isinstance(prefetch, bool):
            raise WireError("bad-argument", "share and prefetch must be true or false")
        fill = msg.get("fill")
        if fill not in (None, "fork", "lazy", "before-run", "auto"):
            raise WireError("bad-argument", "fill must be fork, lazy, before-run or auto")
        wait = msg.get("wait_identity")
        if wait is not None:
            wait = _int(msg, "wait_identity", 0, MAX_IDENTITY_WAIT)
            if not ILinuxBackend.providedBy(self.backend):
                raise WireError("unsupported", "wait_identity: clones of the %s backend have "
                                "no identity agent" % self.backend.name)

        @defer.inlineCallbacks
        def launch():
            image = yield self.open_image(image_id)
            launched = []
            for _ in range(count):
                launched.append((yield self._launch_one(image, paused, share, prefetch, fill)))
            if wait is not None and image.meta.get("params") is None:   # Linux clones
                # Together: a clone without the agent costs the wait once.
                told = yield defer.gatherResults(
                    [self.backend.identity(c["domid"], wait).addErrback(_unknown_identity)
                     for c in launched])
                for clone, identity in zip(launched, told):
                    clone.update(identity=identity["identity"],
                                 identity_s=identity.get("seconds"))
            return {"clones": launched}

        return launch()

    @defer.inlineCallbacks
    def _launch_one(self, image, paused, share, prefetch=True, fill=None):
        t0 = time.monotonic_ns()
        clone_id = self._next_clone_id.get(image.image_id, 0) + 1
        self._next_clone_id[image.image_id] = clone_id
        domid = self._allocate()
        name = "%s.%d" % (image.image_id, clone_id)
        dom = Domain(domid, name, "clone", image.meta.get("memory_mib"), image=image.image_id,
                     clone_id=clone_id, input=domid, params=image.meta.get("params"),
                     state=DomainState.PAUSED if paused else DomainState.RUNNING, t0_ns=t0)
        self.domains[domid] = dom
        since = self.pager.punch_seq
        try:
            if image.origin is not None and self._before_run(fill):
                yield self.pager.bring_in(image)
            meta = dict(dom.record(), generation=image.generation, share=share)
            region = yield self.backend.launch(
                image, CloneSpec(domid, name, clone_id, domid, paused, share, meta, fill))
        except Exception:
            self.domains.pop(domid, None)
            if self._next_clone_id[image.image_id] == clone_id:    # a refusal uses no id
                self._next_clone_id[image.image_id] = clone_id - 1
            raise
        self._adopt(dom, region.domid)
        dom.fill_mode = region.fill_mode
        self.pager.attach(region, image, since, share)
        if self.working_sets is not None and share:
            self.working_sets.launched(dom.domid, image, region.npages, prefetch)
        self._changed()
        return {"domid": dom.domid, "name": name, "clone_id": clone_id}

    def _before_run(self, fill):
        """Whether a launch asking for ``fill`` is filled before it runs."""
        return fill == "before-run" or (fill in (None, "auto")
                                         and self.backend.fill_mode == "fill-before-run")

    def op_list(self, msg):
        return {"domains": [d.summary() for d in sorted(self.domains.values(), key=lambda d: d.domid)]}

    def _image_domains(self):
        """Each image's image domain (Xen VM fork), with its memory."""
        if not IForkBackend.providedBy(self.backend):
            return {}
        return self.backend.image_domains()

    def op_images(self, msg):
        def annotate(images):
            held = self._image_domains()
            for info in images:
                info["clones"] = sum(1 for d in self.domains.values() if d.image == info["image_id"])
                if info["image_id"] in held:
                    info["image_domain"] = held[info["image_id"]]
                if self.working_sets is not None:
                    info["working_set"] = self.working_sets.info(info["image_id"],
                                                                 info["generation"])
            return {"images": images}

        return self.memserver.images().addCallback(annotate)

    def op_memserver(self, msg):
        """The memory-server domain: status, start, or stop.  Stop is
        refused while clones fault pages in from it, or while it holds
        images, unless ``force``: then those clones are paused
        (``paused-image-gone``) and its images are gone."""
        action = msg.get("action")
        if action not in ("status", "start", "stop"):
            raise WireError("bad-argument", "memserver wants status, start or stop")
        if action != "stop":
            return self.memserver.domain(action).addCallback(
                lambda status: dict(status, image_domains=self._image_domains()))
        force = bool(msg.get("force"))

        @defer.inlineCallbacks
        def stop():
            status = yield self.memserver.domain("status")
            gone = set(status.get("images", ()))
            lazy = [d for d in self.domains.values() if d.image in gone
                    and d.fill_mode == "lazy" and d.state in LIVE]
            if lazy and not force:
                raise WireError("busy", "clones %s fault their pages in from the memory-server "
                                "domain: destroy them, or use --force to pause them"
                                % ", ".join(d.name for d in lazy))
            for image_id in gone & set(self._images):
                self.backend.forget_image(self._images[image_id])     # before the grants end
            result = yield self.memserver.domain("stop", force)
            for dom in lazy:
                yield self.backend.pause(dom.domid)
                self._set_state(dom, DomainState.IMAGE_GONE)
            for image_id in gone:
                image = self._images.pop(image_id, None)
                if image is not None:
                    os.close(image.mem_fd)
                if not any(d.image == image_id for d in self.domains.values()):
                    self.pager.forget_image(image_id)
            self._changed()
            return dict(result, paused=[d.domid for d in lazy])

        return stop()

    def op_info(self, msg):
        dom = self._domain(msg.get("domain"))
        info = dict(dom.summary(), clone_id=dom.clone_id, input=dom.input, result=dom.result,
                    launch_ms=dom.launch_ms, backend=self.backend.name,
                    fill_mode=dom.fill_mode or self.backend.fill_mode)
        stats = self.pager.stats(dom.domid)
        if stats is None:    # a master: its memory is all its own
            stats = {"nominal_pages": (dom.memory_mib or 0) * 256, "faults": 0}
        stats.pop("image", None)
        info.update(stats)
        info["fetched_pages"] = stats["faults"]
        info.update(self._expected(dom))
        linux_clone = (dom.role == "clone" and dom.params is None
                       and ILinuxBackend.providedBy(self.backend))
        if dom.fill_mode != "fork" and not linux_clone:
            return info
        d = defer.succeed(info)
        if dom.fill_mode == "fork":
            # Xen fills a fork itself: its pages as the hypervisor counts them.
            d.addCallback(lambda info: self.backend.scan(dom.domid).addCallback(
                lambda hv: dict(info, hypervisor=hv)))
        if linux_clone:
            # Whether its guest agent renewed its identity, and what it did.
            d.addCallback(lambda info: self.backend.identity(dom.domid).addErrback(
                _unknown_identity).addCallback(
                lambda i: dict(info, identity=i["identity"], identity_detail=i.get("detail"))))
        return d

    @staticmethod
    def _expected(dom):
        if dom.role == "clone" and dom.params:
            return {"expected": workload.expected_result(workload.Params(**dom.params),
                                                         dom.clone_id, dom.input)}
        return {}

    def _clone(self, msg):
        dom = self._domain(msg.get("domain"))
        if dom.role != "clone":
            raise WireError("not-clone", "%s is a master; this applies to clones" % dom.name)
        return dom

    @defer.inlineCallbacks
    def op_audit(self, msg):
        """A clone's pages where the ledger, the fault path and the kernel
        disagree (the first 100 of them).  Records and evictions in flight
        disagree for an instant: a page counts only if it still does after
        they had time to land."""
        dom = self._clone(msg)
        npages = self.pager.ledger.clone(dom.domid).npages
        for settle in range(AUDIT_SETTLE_ROUNDS):
            if settle:
                yield task.deferLater(self.reactor, 0.05, lambda: None)
            kernel = []
            for first in range(0, npages, 4096):
                kernel += yield self.backend.page_kinds(dom.domid,
                                                        range(first, min(npages, first + 4096)))
            bad = self.pager.audit(dom.domid, kernel)
            if not bad:
                break
        return {"domid": dom.domid, "pages": npages, "disagree": len(bad),
                "first": [dict(pfn=p, ledger=lk, state=s, kernel=k) for p, lk, s, k in bad[:100]]}

    def op_page_sums(self, msg):
        """64-bit word sums of a domain's guest pages (integrity checks)."""
        dom = self._domain(msg.get("domain"))
        pfns = msg.get("pfns")
        if not isinstance(pfns, list) or len(pfns) > 2**20:
            raise WireError("bad-argument", "pfns must be a list of page numbers")
        d = defer.gatherResults([self.backend.page_sums(dom.domid, pfns[i:i + 4096])
                                 for i in range(0, len(pfns), 4096)], consumeErrors=True)
        d.addErrback(lambda f: f.value.subFailure if f.check(defer.FirstError) else f)
        return d.addCallback(lambda parts: {"sums": [x for part in parts for x in part]})

    def op_evict(self, msg):
        dom = self._clone(msg)
        pages = _int(msg, "to", 0, 2**40)
        d = self.pager.evict_to(dom.domid, pages)
        d.addCallback(lambda n: (self._changed(), n)[1])
        return d.addCallback(lambda n: defer.maybeDeferred(self.op_info, {"domain": dom.domid})
                             .addCallback(lambda info: dict(info, evicted_now=n)))

    def op_hoard(self, msg):
        dom = self._clone(msg)
        rate = _int(msg, "rate", 1, 10**7, default=self.hoard_rate)
        done = self.pager.hoard(dom.domid, rate)
        self._changed()
        if msg.get("wait"):
            return done.addCallback(lambda _: self.op_info({"domain": dom.domid}))
        return self.op_info({"domain": dom.domid})

    def op_wait(self, msg):
        """Fires when the domain leaves the running state (or timeout)."""
        dom = self._domain(msg.get("domain"))
        timeout = _int(msg, "timeout", 1, 3600, default=60)
        if dom.state not in _RUNS:
            return self.op_info({"domain": dom.domid})
        d = defer.Deferred()
        dom.waiters.append(d)

        def timed_out(f):
            f.trap(defer.TimeoutError)
            if d in dom.waiters:
                dom.waiters.remove(d)
            raise WireError("timeout", "%s is still %s after %d s" % (dom.name, dom.state, timeout))

        d.addTimeout(timeout, self.reactor)
        d.addCallbacks(lambda dom: self.op_info({"domain": dom.domid}), timed_out)
        return d

    def op_pause(self, msg):
        dom = self._domain(msg.get("domain"))
        return self.backend.pause(dom.domid).addCallback(
            lambda info: (self._set_state(dom, DomainState.PAUSED), dom.summary())[1])

    def op_unpause(self, msg):
        dom = self._domain(msg.get("domain"))
        if dom.state not in (DomainState.PAUSED, DomainState.READY, DomainState.PAUSED_BY_TIMEOUT):
            raise WireError("not-paused", "%s is %s" % (dom.name, dom.state))
        return self.backend.unpause(dom.domid).addCallback(
            lambda info: (self._set_state(dom, info["state"]), dom.summary())[1])

    def op_destroy(self, msg):
        dom = self._domain(msg.get("domain"))
        keep = msg.get("keep_disks", False)
        if not isinstance(keep, bool):
            raise WireError("bad-argument", "keep_disks must be true or false")
        if keep and not ILinuxBackend.providedBy(self.backend):
            raise WireError("unsupported", "keep_disks: domains of the %s backend have no "
                            "disks" % self.backend.name)
        self.pager.detach(dom.domid)
        # Only when asked: backends without disks take no such argument.
        d = self.backend.destroy(dom.domid, keep_disks=True) if keep else \
            self.backend.destroy(dom.domid)

        def done(r):
            self._forget(dom)
            kept = r.get("kept_disks") if isinstance(r, dict) else None
            return dict({"domid": dom.domid, "name": dom.name},
                        **({"kept_disks": kept} if kept else {}))

        return d.addCallback(done)

    def op_reset(self, msg):
        """A fork clone back to its image's state (the backend refuses
        masters and clones that are not forks)."""
        dom = self._domain(msg.get("domain"))
        if not IForkBackend.providedBy(self.backend):
            raise WireError("unsupported", "reset needs a backend with VM fork (Xen with "
                            "MEM_SHARING)")
        if dom.role != "clone":
            raise WireError("not-clone", "%s is a master: only clones are reset (to their "
                            "image)" % dom.name)

        def done(info):
            self._set_state(dom, DomainState.RUNNING)
            return {"domid": dom.domid, "name": dom.name, "state": info["state"]}

        return self.backend.reset(dom.domid).addCallback(done)

    def op_discard(self, msg):
        image_id = _image_arg(msg)     # None would be every master's "image"
        derived = sorted(i for i, d in self._image_domains().items()
                         if d.get("parent_image") == image_id)
        if derived:
            raise WireError("busy", "images %s were blessed from clones of %r and share its "
                            "pages: discard them first" % (", ".join(derived), image_id))
        clones = [d for d in self.domains.values() if d.image == image_id]
        if clones and not msg.get("force"):
            raise WireError("busy", "image %r has %d live clones; destroy them or use --force"
                            % (image_id, len(clones)))

        @defer.inlineCallbacks
        def discard():
            for dom in clones:
                yield self.op_destroy({"domain": dom.domid})
            if image_id in self._images:
                # Its grant mappings go before the memory server ends the grants.
                self.backend.forget_image(self._images[image_id])
            if IForkBackend.providedBy(self.backend):
                yield self.backend.drop_image(image_id)
            yield self.memserver.discard(image_id)
            if self.working_sets is not None:
                self.working_sets.forget(image_id)
            image = self._images.pop(image_id, None)
            if image is not None:
                self.pager.forget_image(image_id)
                os.close(image.mem_fd)
            self._changed()
            return {"image": image_id, "destroyed": [d.domid for d in clones]}

        return discard()
