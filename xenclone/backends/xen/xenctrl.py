"""libxenctrl: ``XenCtrl`` (domains, HVM context, memory, VM forks,
mem_paging) and the back end of a domain's vm_event ring; ``probe`` says
what this host offers.  Failures are ``libxc.XenError``s.
"""

import errno as _errno
import mmap
from collections import namedtuple

from xenclone.backends.xen import libxc
from xenclone.backends.xen.libxc import PAGE_SIZE, XenError, XenUnavailable

_ffi = _lib = None


def _load():
    """``libxc.load`` (XenUnavailable on a host without Xen), kept here."""
    global _ffi, _lib
    _ffi, _lib = libxc.load()


class DomainInfo(namedtuple(
        "DomainInfo",
        "domid flags tot_pages max_pages shr_pages paged_pages cpu_time "
        "online_vcpus max_vcpu_id")):
    __slots__ = ()

    @property
    def dying(self):
        return bool(self.flags & _lib.XEN_DOMINF_dying)

    @property
    def paused(self):
        return bool(self.flags & _lib.XEN_DOMINF_paused)

    @property
    def hvm(self):
        """An HVM container (HVM or PVH); False for a PV guest."""
        return bool(self.flags & _lib.XEN_DOMINF_hvm_guest)

    @property
    def shutdown_reason(self):
        """None while the domain runs, else Xen's SHUTDOWN_* code
        (0 poweroff, 1 reboot, 2 suspend, 3 crash, 4 watchdog, 5 soft reset)."""
        if not self.flags & _lib.XEN_DOMINF_shutdown:
            return None
        return ((self.flags >> _lib.XEN_DOMINF_shutdownshift)
                & _lib.XEN_DOMINF_shutdownmask)


class PagingRequest(namedtuple("PagingRequest",
                               "gfn vcpu_id flags reason paging_flags raw")):
    """One request off the paging ring; ``raw`` is an owned copy."""

    __slots__ = ()

    @property
    def dropped(self):
        """The guest gave the page back: nothing to load."""
        return bool(self.paging_flags & _lib.MEM_PAGING_DROP_PAGE)

    @property
    def evict_fails(self):
        """The guest touched a page nominated and not yet evicted: it is
        still in place, and the evict that follows fails."""
        return bool(self.paging_flags & _lib.MEM_PAGING_EVICT_FAIL)


class XenCtrl:
    """A libxenctrl handle."""

    def __init__(self):
        _load()
        logger = libxc.quiet_logger()
        self._xch = libxc.opened(_lib.xc_interface_open(logger, logger, 0), "xc_interface_open")

    def close(self):
        if self._xch is not None:
            _lib.xc_interface_close(self._xch)
            self._xch = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _error(self, op, detail=""):
        """XenError for the call that just failed (read errno first)."""
        err = _ffi.errno
        last = _lib.xc_get_last_error(self._xch)
        if last != _ffi.NULL and last.code != _lib.XC_ERROR_NONE:
            text = _ffi.string(last.message).decode(errors="replace").strip()
            detail = "%s; %s" % (detail, text) if detail else text
        _lib.xc_clear_last_error(self._xch)   # never blame a later call
        return XenError(op, err, detail)

    def _call(self, op, fn, *args, detail=""):
        rc = fn(self._xch, *args)
        if rc < 0:
            raise self._error(op, detail)
        return rc

    # ---- host ----
    def version(self):
        v = self._call("xc_version", _lib.xc_version, _lib.XENVER_version,
                       _ffi.NULL)
        extra = _ffi.new("char[]", _lib.XEN_EXTRAVERSION_LEN)
        self._call("xc_version", _lib.xc_version, _lib.XENVER_extraversion,
                   extra)
        return "%d.%d%s" % (v >> 16, v & 0xFFFF, _ffi.string(extra).decode())

    def physinfo(self):
        info = _ffi.new("xc_physinfo_t *")
        self._call("xc_physinfo", _lib.xc_physinfo, info)
        caps = [name for name in ("hvm", "pv", "hap", "shadow")
                if info.capabilities & getattr(
                    _lib, "XEN_SYSCTL_PHYSCAP_" + name)]
        return {"nr_cpus": info.nr_cpus, "cpu_khz": info.cpu_khz,
                "total_pages": info.total_pages,
                "free_pages": info.free_pages,
                "scrub_pages": info.scrub_pages,
                "outstanding_pages": info.outstanding_pages,
                "capabilities": caps}

    def mem_paging_available(self):
        """Whether the hypervisor was built with MEM_PAGING.

        Nominating a page of dom0 itself changes nothing: a Xen without
        MEM_PAGING answers ENOSYS, one with it refuses dom0 (EPERM) or
        fails later for other reasons.
        """
        try:
            self.paging_nominate(0, 0)
        except XenError as e:
            return e.errno not in (_errno.ENOSYS, _errno.EOPNOTSUPP)
        return True

    # ---- domains ----
    @staticmethod
    def _info(i):
        return DomainInfo(i.domain, i.flags, i.tot_pages, i.max_pages,
                          i.shr_pages, i.paged_pages, i.cpu_time,
                          i.nr_online_vcpus, i.max_vcpu_id)

    def domain_info(self, domid):
        # Xen 4.17 has no xc_domain_getinfo_single: ask for one domain
        # starting at domid and check that it is the one we asked for.
        info = _ffi.new("xc_domaininfo_t *")
        n = self._call("xc_domain_getinfolist", _lib.xc_domain_getinfolist,
                       domid, 1, info, detail="dom %d" % domid)
        if n != 1 or info.domain != domid:
            raise XenError("xc_domain_getinfolist", _errno.ESRCH,
                           "no domain %d" % domid)
        return self._info(info)

    def domains(self, chunk=256):
        found, first = [], 0
        infos = _ffi.new("xc_domaininfo_t[]", chunk)
        while True:
            n = self._call("xc_domain_getinfolist",
                           _lib.xc_domain_getinfolist, first, chunk, infos)
            found.extend(self._info(infos[i]) for i in range(n))
            if n < chunk:
                return found
            first = infos[n - 1].domain + 1

    def pause(self, domid):
        self._call("xc_domain_pause", _lib.xc_domain_pause, domid,
                   detail="dom %d" % domid)

    def unpause(self, domid):
        self._call("xc_domain_unpause", _lib.xc_domain_unpause, domid,
                   detail="dom %d" % domid)

    def destroy(self, domid):
        self._call("xc_domain_destroy", _lib.xc_domain_destroy, domid,
                   detail="dom %d" % domid)

    def hvm_getcontext(self, domid):
        """The HVM save record of a (paused) HVM/PVH domain, as bytes."""
        size = self._call("xc_domain_hvm_getcontext",
                          _lib.xc_domain_hvm_getcontext, domid, _ffi.NULL, 0,
                          detail="dom %d" % domid)
        buf = _ffi.new("uint8_t[]", size)
        size = self._call("xc_domain_hvm_getcontext",
                          _lib.xc_domain_hvm_getcontext, domid, buf, size,
                          detail="dom %d" % domid)
        return bytes(_ffi.buffer(buf, size))

    def hvm_setcontext(self, domid, record):
        buf = _ffi.from_buffer("uint8_t[]", record)
        self._call("xc_domain_hvm_setcontext", _lib.xc_domain_hvm_setcontext,
                   domid, buf, len(record), detail="dom %d" % domid)

    def maximum_gpfn(self, domid):
        out = _ffi.new("xen_pfn_t *")
        self._call("xc_domain_maximum_gpfn", _lib.xc_domain_maximum_gpfn,
                   domid, out, detail="dom %d" % domid)
        return out[0]

    def populate_physmap(self, domid, pfns, order=0, mem_flags=0):
        """Give the domain fresh frames at ``pfns`` (all or none)."""
        arr = _ffi.new("xen_pfn_t[]", list(pfns))
        self._call("xc_domain_populate_physmap_exact",
                   _lib.xc_domain_populate_physmap_exact, domid, len(arr),
                   order, mem_flags, arr,
                   detail="dom %d, %d extents" % (domid, len(arr)))

    def decrease_reservation(self, domid, pfns, order=0):
        """Take the frames at ``pfns`` away from the domain (all or none)."""
        arr = _ffi.new("xen_pfn_t[]", list(pfns))
        self._call("xc_domain_decrease_reservation_exact",
                   _lib.xc_domain_decrease_reservation_exact, domid,
                   len(arr), order, arr,
                   detail="dom %d, %d extents" % (domid, len(arr)))

    def hvm_param(self, domid, name):
        """An HVM param by its short name (``"STORE_PFN"`` for
        ``HVM_PARAM_STORE_PFN``; those the shim binds)."""
        value = _ffi.new("uint64_t *")
        self._call("xc_hvm_param_get", _lib.xc_hvm_param_get, domid,
                   getattr(_lib, "HVM_PARAM_" + name), value,
                   detail="dom %d %s" % (domid, name))
        return value[0]

    def resume(self, domid, fast=True):
        """Resume a suspended guest (libxenguest).  ``fast``: the
        cooperative way, its suspend hypercall returns 1 (cancelled), so
        the guest carries on in the same domain with its devices as they
        were; the slow way makes it reconnect them as after a restore."""
        self._call("xc_domain_resume", _lib.xc_domain_resume, domid,
                   1 if fast else 0, detail="dom %d" % domid)

    # ---- VM fork (needs a Xen built with MEM_SHARING) ----
    def create_pvh(self, max_vcpus, max_evtchn_port=1023, grant_frames=64,
                   maptrack_frames=1024):
        """An empty PVH domain (HAP, a local APIC only), paused, with no
        memory: what ``fork`` needs of a child.  Returns its domid."""
        cfg = _ffi.new("struct xen_domctl_createdomain *")
        cfg.flags = _lib.XEN_DOMCTL_CDF_hvm | _lib.XEN_DOMCTL_CDF_hap
        cfg.max_vcpus = max_vcpus
        cfg.max_evtchn_port = max_evtchn_port
        cfg.max_grant_frames = grant_frames
        cfg.max_maptrack_frames = maptrack_frames
        cfg.grant_opts = 2          # grant table v1 and v2, as libxl allows
        cfg.arch.emulation_flags = _lib.XEN_X86_EMU_LAPIC
        domid = _ffi.new("uint32_t *", 0)   # 0: Xen picks
        self._call("xc_domain_create", _lib.xc_domain_create, domid, cfg)
        return domid[0]

    def memshr_control(self, domid, enable=True):
        self._call("xc_memshr_control", _lib.xc_memshr_control, domid,
                   1 if enable else 0, detail="dom %d" % domid)

    def fork(self, parent, child):
        """Make ``child`` (paused, empty) a fork of ``parent``: it gets the
        parent's vCPU state and HVM params now and its memory on touch."""
        self._call("xc_memshr_fork", _lib.xc_memshr_fork, parent, child,
                   False, False, detail="dom %d -> dom %d" % (parent, child))

    def fork_reset(self, child, state=True, memory=True):
        self._call("xc_memshr_fork_reset", _lib.xc_memshr_fork_reset, child,
                   state, memory, detail="dom %d" % child)

    def fork_probe(self):
        """Whether the hypervisor has VM fork: with MEM_SHARING built in, a
        fork of domains that do not exist fails ESRCH, without it the
        memop is unknown (ENOSYS, EOPNOTSUPP)."""
        try:
            self.fork(0x7FF0, 0x7FF0)       # DOMID_FIRST_RESERVED: no such domain
        except XenError as e:
            return e.errno not in (_errno.ENOSYS, _errno.EOPNOTSUPP)
        return True

    def evtchn_alloc_unbound(self, domid, remote=0):
        """A port of ``domid`` that ``remote`` may bind."""
        return self._call("xc_evtchn_alloc_unbound",
                          _lib.xc_evtchn_alloc_unbound, domid, remote,
                          detail="dom %d" % domid)

    def evtchn_reset(self, domid):
        self._call("xc_evtchn_reset", _lib.xc_evtchn_reset, domid,
                   detail="dom %d" % domid)

    def set_hvm_param(self, domid, name, value):
        self._call("xc_hvm_param_set", _lib.xc_hvm_param_set, domid,
                   getattr(_lib, "HVM_PARAM_" + name), value,
                   detail="dom %d %s" % (domid, name))

    def set_max_pages(self, domid, pages):
        self._call("xc_domain_setmaxmem", _lib.xc_domain_setmaxmem, domid,
                   pages * (PAGE_SIZE // 1024), detail="dom %d" % domid)

    def gnttab_seed(self, domid, console_gfn, store_gfn):
        """Grant refs 0 and 1 (console, XenStore) to dom0, as the domain
        builder leaves them for a guest's first connection."""
        self._call("xc_dom_gnttab_seed", _lib.xc_dom_gnttab_seed, domid, True,
                   console_gfn, store_gfn, 0, 0, detail="dom %d" % domid)

    def copy_affinity(self, source, dest, vcpus):
        """Each vCPU of ``dest`` runs where the same vCPU of ``source`` may
        (xl's cpumask for the domains it makes)."""
        size = self._call("xc_get_cpumap_size", _lib.xc_get_cpumap_size)
        hard, soft = _ffi.new("uint8_t[]", size), _ffi.new("uint8_t[]", size)
        for vcpu in range(vcpus):
            self._call("xc_vcpu_getaffinity", _lib.xc_vcpu_getaffinity,
                       source, vcpu, hard, soft, _lib.XEN_VCPUAFFINITY_HARD,
                       detail="dom %d vcpu %d" % (source, vcpu))
            self._call("xc_vcpu_setaffinity", _lib.xc_vcpu_setaffinity,
                       dest, vcpu, hard, soft, _lib.XEN_VCPUAFFINITY_HARD,
                       detail="dom %d vcpu %d" % (dest, vcpu))

    # ---- mem_paging (needs a Xen built with MEM_PAGING) ----
    def paging_enable(self, domid):
        """Enable paging and map its ring; returns a VmEventRing."""
        return self.vm_event_enable(domid, _lib.HVM_PARAM_PAGING_RING_PFN,
                                    _lib.xc_mem_paging_disable)

    def vm_event_enable(self, domid, param, disable):
        port = _ffi.new("uint32_t *")
        page = _lib.xc_vm_event_enable(self._xch, domid, param, port)
        if page == _ffi.NULL:
            raise self._error("xc_vm_event_enable", "dom %d" % domid)
        return VmEventRing(self, domid, page, port[0], disable)

    def sharing_enable(self, domid):
        """Map the domain's sharing ring: Xen posts a request there when it
        finds no frame for a page the domain unshares or, as a fork, fills
        (xen/patches/0002), with the vCPU paused until the answer.  Returns
        a VmEventRing (its requests' gfn is the page)."""
        return self.vm_event_enable(domid, _lib.HVM_PARAM_SHARING_RING_PFN,
                                    _lib.xc_memshr_ring_disable)

    def sharing_disable(self, domid):
        self._call("xc_memshr_ring_disable", _lib.xc_memshr_ring_disable,
                   domid, detail="dom %d" % domid)

    def paging_disable(self, domid):
        self._call("xc_mem_paging_disable", _lib.xc_mem_paging_disable,
                   domid, detail="dom %d" % domid)

    def paging_nominate(self, domid, gfn):
        self._call("xc_mem_paging_nominate", _lib.xc_mem_paging_nominate,
                   domid, gfn, detail="dom %d gfn %#x" % (domid, gfn))

    def paging_evict(self, domid, gfn):
        self._call("xc_mem_paging_evict", _lib.xc_mem_paging_evict, domid,
                   gfn, detail="dom %d gfn %#x" % (domid, gfn))

    def paging_evict_pages(self, domid, gfns, nominate=True, evict=True):
        """Nominate and/or evict each gfn in one C call (GIL released);
        returns each page's errno, 0 where every step succeeded."""
        gfns = list(gfns)
        arr = _ffi.new("uint64_t[]", gfns)
        err = _ffi.new("int[]", len(gfns))
        steps = ((_lib.XEN_SHIM_NOMINATE if nominate else 0)
                 | (_lib.XEN_SHIM_EVICT if evict else 0))
        _lib.xen_shim_paging_evict_pages(self._xch, domid, arr, len(gfns),
                                         steps, err)
        return list(err)

    def paging_prep(self, domid, gfn):
        self._call("xc_mem_paging_prep", _lib.xc_mem_paging_prep, domid,
                   gfn, detail="dom %d gfn %#x" % (domid, gfn))

    def paging_load(self, domid, gfn, data):
        """Load one page of ``data`` at an evicted gfn."""
        if len(data) != PAGE_SIZE:
            raise ValueError("paging_load needs exactly one page")
        # libxc insists on a page-aligned buffer, which an mmap page is.
        with mmap.mmap(-1, PAGE_SIZE) as page:
            page[:] = data
            with _ffi.from_buffer(page) as buf:
                self._call("xc_mem_paging_load", _lib.xc_mem_paging_load,
                           domid, gfn, buf,
                           detail="dom %d gfn %#x" % (domid, gfn))


class VmEventRing:
    """The back end of a domain's vm_event ring (paging, by default).

    ``port`` is the domain's side of the event channel: bind it with
    ``EvtChn.bind_interdomain(domid, ring.port)`` and notify after
    ``respond``.
    """

    def __init__(self, xc, domid, page, port, disable, batch=64):
        _load()
        self._xc, self.domid, self.port = xc, domid, port
        self._page, self._disable = page, disable
        self._ring = _ffi.new("vm_event_back_ring_t *")
        self._reqs = _ffi.new("vm_event_request_t[]", batch)
        _lib.xen_shim_ring_init(self._ring, page)

    def take(self):
        """Every pending request (up to the batch size), as PagingRequests."""
        n = _lib.xen_shim_ring_take(self._ring, self._reqs, len(self._reqs))
        out = []
        for i in range(n):
            raw = _ffi.new("vm_event_request_t *", self._reqs[i])
            p = raw.u.mem_paging
            out.append(PagingRequest(p.gfn, raw.vcpu_id, raw.flags,
                                     raw.reason, p.flags, raw))
        return out

    def indices(self):
        """Where the ring stands: requests Xen put and we took, responses
        we put and Xen took (a stuck vCPU shows which side lags)."""
        r = self._ring
        return {"req_prod": r.sring.req_prod, "req_cons": r.req_cons,
                "rsp_prod": r.rsp_prod_pvt, "rsp_event": r.sring.rsp_event}

    def respond(self, requests):
        """Put a paging response for each request (the page is in place)."""
        rsps = _ffi.new("vm_event_response_t[]", len(requests))
        for i, req in enumerate(requests):
            _lib.xen_shim_paging_response(req.raw, _ffi.addressof(rsps, i))
        return _lib.xen_shim_ring_put(self._ring, rsps, len(requests))

    def resume_vcpus(self, vcpus, reason):
        """Responses to no request: each vCPU that a dead helper left
        paused for a vm_event ring resumes (Xen ignores one not paused).
        ``reason``: a ``VM_EVENT_REASON_*`` name, e.g. ``"MEM_SHARING"``."""
        rsps = _ffi.new("vm_event_response_t[]", len(vcpus))
        for rsp, vcpu in zip(rsps, vcpus):
            rsp.version = _lib.VM_EVENT_INTERFACE_VERSION
            rsp.vcpu_id = vcpu
            rsp.flags = _lib.VM_EVENT_FLAG_VCPU_PAUSED
            rsp.reason = getattr(_lib, "VM_EVENT_REASON_" + reason)
        return _lib.xen_shim_ring_put(self._ring, rsps, len(vcpus))

    def close(self):
        """Disable the ring in Xen, then unmap it."""
        if self._page is not None:
            page, self._page = self._page, None
            try:
                self._xc._call("vm_event disable", self._disable, self.domid,
                               detail="dom %d" % self.domid)
            finally:
                _lib.xen_shim_ring_unmap(page)


def probe(check_paging=False):
    """What this host offers for the Xen backend, as a dict; never raises.

    ``check_paging`` also asks the hypervisor whether it has MEM_PAGING
    (lazy fill of HVM/PVH clones); Debian's stock build has not.
    """
    if not libxc.host_has_xen():
        return {"xen": "absent", "reason": libxc.why_absent()}
    try:
        with XenCtrl() as xc:
            info = {"xen": "present", "version": xc.version()}
            info.update(xc.physinfo())
            info["mem_paging"] = (xc.mem_paging_available() if check_paging
                                  else "not checked")
    except (XenUnavailable, XenError) as e:
        return {"xen": "unusable", "reason": str(e)}
    return info
