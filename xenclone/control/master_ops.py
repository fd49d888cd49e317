"""The control ops that make masters and images: ``create`` and ``bless``.

A mixin of ``Controller``:

- ``create``: the config checked (``xl_keys``); the project's guest gets
  a workload for its memory, a Linux master (a ``kernel``) its boot
  settings; either is a ``MasterSpec`` the backend makes, under the id the
  backend gives it;
- ``bless``: the backend captures the master (or a fork clone), the memory
  server keeps its RAM as an image, which is opened (its cache counts in
  the budget from then) and, where clones fork, given its image domain.
  A domain the daemon does not know is first taken over from the
  hypervisor's toolstack (``_take_over``), and let go again if the bless
  fails before it suspended.
"""

import dataclasses

import attr
from twisted.internet import defer

from xenclone import workload, xl_keys
from xenclone.control.args import _int
from xenclone.control.records import Domain, MasterSpec
from xenclone.interfaces import PAGE_SIZE, DomainState, IForkBackend, ILinuxBackend
from xenclone.names import check_name
from xenclone.wire import WireError

MIN_MEMORY_MIB = 4
MAX_MEMORY_MIB = 64 * 1024


class MasterOps:
    """``create`` and ``bless``; needs ``Controller``'s ``backend``,
    ``memserver``, ``domains``, ``_images``, ``log`` and its helpers
    (``_domain``, ``_allocate``, ``_adopt``, ``_set_state``, ``_changed``,
    ``reserve_domid``, ``open_image``)."""

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
                self.pager.note_image_domains()
            self._set_state(dom, DomainState.PAUSED)
            if msg.get("resume"):
                yield self.backend.unpause(dom.domid)
            return info

        return bless()
