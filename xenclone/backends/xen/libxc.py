"""The Xen libraries (xenctrl, xenforeignmemory, xengnttab, xenevtchn and the
vm_event ring) behind one error boundary.

Every failure below becomes a ``XenError`` carrying errno and libxc's own
message; batched calls are always checked item by item, because the
libraries report partial failure in ways that are easy to miss (a foreign
map returns an address even when some pages failed).  A host that cannot use
Xen raises ``XenUnavailable`` on first use, never an ImportError traceback:
this module itself imports anywhere.
"""

import errno as _errno
import mmap
import os
from collections import namedtuple

PAGE_SIZE = 4096
# libxencall and libxenforeignmemory open the first of these that exists.
PRIVCMD_PATHS = ("/dev/xen/privcmd", "/proc/xen/privcmd")
HYPERVISOR_TYPE = "/sys/hypervisor/type"
_SHOWN_FAILURES = 8

_ffi = _lib = _logger = None


class XenUnavailable(Exception):
    """This host cannot drive Xen: not dom0 of a Xen host, or not built."""


class XenError(Exception):
    """A Xen library call failed.

    ``failures`` lists ``(item, errno)`` for batched calls where only some
    items (pfns, grant refs) failed.
    """

    def __init__(self, op, errno=0, detail="", failures=(), what="item"):
        self.op = op
        self.errno = abs(errno)
        self.detail = detail
        self.failures = list(failures)
        self.what = what
        super().__init__(op, self.errno, detail, self.failures)

    def __str__(self):
        msg = "%s failed" % self.op
        if self.errno:
            msg += ": [Errno %d] %s" % (self.errno, os.strerror(self.errno))
        if self.detail:
            msg += " (%s)" % self.detail
        if self.failures:
            hexa = self.what.endswith("fn")
            shown = ", ".join(
                "%s %s: %s" % (self.what, hex(k) if hexa else k,
                               _errno.errorcode.get(e, str(e)))
                for k, e in self.failures[:_SHOWN_FAILURES])
            more = len(self.failures) - _SHOWN_FAILURES
            msg += "; %d failed: %s%s" % (
                len(self.failures), shown, ", ..." if more > 0 else "")
        return msg


def check_batch(op, items, errs, what="item", detail=""):
    """Raise XenError naming every item whose status in ``errs`` is nonzero.

    Statuses may be positive errno values or negative ones (as privcmd
    returns them); both mean failure.
    """
    failures = [(item, abs(e)) for item, e in zip(items, errs) if e]
    if failures:
        raise XenError(op, failures[0][1], detail, failures, what)


def host_has_xen():
    """True when this kernel offers the privcmd device (dom0 or a driver
    domain with the Xen modules loaded)."""
    return any(os.path.exists(p) for p in PRIVCMD_PATHS)


def _why_absent():
    try:
        with open(HYPERVISOR_TYPE) as f:
            under_xen = f.read().strip() == "xen"
    except OSError:
        under_xen = False
    if under_xen:
        return ("running under Xen but no privcmd device: modprobe "
                "xen-privcmd and mount -t xenfs xenfs /proc/xen")
    return "not running under Xen (no %s)" % " or ".join(PRIVCMD_PATHS)


def load():
    """Return ``(ffi, lib)`` of ``xenclone._xen`` or raise XenUnavailable."""
    global _ffi, _lib, _logger
    if not host_has_xen():
        raise XenUnavailable(_why_absent())
    if _lib is None:
        try:
            from xenclone import _xen
        except ImportError as e:
            raise XenUnavailable(
                "xenclone._xen is not built (%s): install libxen-dev and run "
                "python libxc_shim/xen_build.py" % e) from None
        # Errors reach Python as XenError; keep libxc off stderr.
        _logger = _xen.lib.xen_shim_logger(_xen.lib.XTL_CRITICAL)
        _ffi, _lib = _xen.ffi, _xen.lib
    return _ffi, _lib


CpuState = namedtuple("CpuState", "vcpu cr3 cr4 efer gs_base shadow_gs")


def hvm_cpus(record):
    """Each vCPU's paging root and GS bases in an HVM save record (the
    layout from Xen's own headers).  Needs the built shim, not a Xen host."""
    try:
        from xenclone import _xen
    except ImportError as e:
        raise XenUnavailable("xenclone._xen is not built (%s)" % e) from None
    ffi, lib = _xen.ffi, _xen.lib
    head, out, at = ffi.sizeof("struct hvm_save_descriptor"), [], 0
    while at + head <= len(record):
        desc = ffi.cast("struct hvm_save_descriptor *", ffi.from_buffer(record[at:at + head]))
        code, instance, length = desc.typecode, desc.instance, desc.length
        body = record[at + head:at + head + length]
        if code == lib.XEN_SHIM_HVM_END:
            break
        if code == lib.XEN_SHIM_HVM_CPU:
            if len(body) < ffi.sizeof("struct hvm_hw_cpu"):
                raise ValueError("HVM CPU record %d is %d bytes" % (instance, len(body)))
            cpu = ffi.cast("struct hvm_hw_cpu *", ffi.from_buffer(body))
            out.append(CpuState(instance, cpu.cr3, cpu.cr4, cpu.msr_efer, cpu.gs_base,
                                cpu.shadow_gs))
        at += head + length
    return out


def _opened(handle, op):
    """Raise XenError if an ``*_open`` returned NULL, else return handle."""
    if handle == _ffi.NULL:
        raise XenError(op, _ffi.errno)
    return handle


class Mapping:
    """Pages of another domain mapped into this process."""

    def __init__(self, addr, pages, unmap):
        self.addr = addr
        self.pages = pages
        self._unmap = unmap

    @property
    def buffer(self):
        """A writable buffer over the mapping (valid until close)."""
        return _ffi.buffer(_ffi.cast("char *", self.addr),
                           self.pages * PAGE_SIZE)

    def page_sums(self):
        """The 64-bit word sum of each mapped page (C, GIL released)."""
        out = _ffi.new("uint64_t[]", self.pages)
        _lib.lx_page_sums(_ffi.cast("void *", self.addr), self.pages, out)
        return list(out)

    def fill_dataset(self, first_pfn, params):
        """Write the test guest's data set (``workload.Params``) into these
        pages, which are guest pages ``first_pfn`` onwards."""
        _lib.lx_fill_dataset_range(
            _ffi.cast("void *", self.addr), first_pfn, self.pages,
            params.data_first_pfn, params.data_npages, params.seed,
            params.zero_every)

    def close(self):
        if self.addr is not None:
            addr, self.addr = self.addr, None
            self._unmap(addr, self.pages)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


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


class XenCtrl:
    """A libxenctrl handle."""

    def __init__(self):
        load()
        self._xch = _opened(_lib.xc_interface_open(_logger, _logger, 0),
                            "xc_interface_open")

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

    def respond(self, requests):
        """Put a paging response for each request (the page is in place)."""
        rsps = _ffi.new("vm_event_response_t[]", len(requests))
        for i, req in enumerate(requests):
            _lib.xen_shim_paging_response(req.raw, _ffi.addressof(rsps, i))
        return _lib.xen_shim_ring_put(self._ring, rsps, len(requests))

    def close(self):
        """Disable the ring in Xen, then unmap it."""
        if self._page is not None:
            page, self._page = self._page, None
            try:
                self._xc._call("vm_event disable", self._disable, self.domid,
                               detail="dom %d" % self.domid)
            finally:
                _lib.xen_shim_ring_unmap(page)


class ForeignMemory:
    """A libxenforeignmemory handle: map another domain's frames."""

    def __init__(self):
        load()
        self._h = _opened(_lib.xenforeignmemory_open(_logger, 0),
                          "xenforeignmemory_open")

    def close(self):
        if self._h is not None:
            _lib.xenforeignmemory_close(self._h)
            self._h = None

    def map(self, domid, pfns, writable=True):
        """Map ``pfns`` of ``domid`` contiguously; every page or XenError."""
        pfns = list(pfns)
        if not pfns:
            raise ValueError("nothing to map")
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        arr = _ffi.new("xen_pfn_t[]", pfns)
        err = _ffi.new("int[]", len(pfns))
        addr = _lib.xenforeignmemory_map(self._h, domid, prot, len(pfns), arr,
                                         err)
        if addr == _ffi.NULL:
            raise XenError("xenforeignmemory_map", _ffi.errno,
                           "dom %d, %d pages" % (domid, len(pfns)))
        mapping = Mapping(addr, len(pfns), self._unmap)
        try:
            check_batch("xenforeignmemory_map", pfns, err, "pfn",
                        "dom %d" % domid)
        except XenError:
            mapping.close()
            raise
        return mapping

    def _unmap(self, addr, pages):
        if _lib.xenforeignmemory_unmap(self._h, addr, pages) < 0:
            raise XenError("xenforeignmemory_unmap", _ffi.errno)

    def map_grant_table(self, domid, frames):
        """The first ``frames`` frames of ``domid``'s shared grant table
        (v1, 512 entries each); Xen grows the table up to them."""
        addr = _ffi.new("void **")
        res = _lib.xenforeignmemory_map_resource(
            self._h, domid, _lib.XENMEM_resource_grant_table,
            _lib.XENMEM_resource_grant_table_id_shared, 0, frames, addr,
            mmap.PROT_READ | mmap.PROT_WRITE, 0)
        if res == _ffi.NULL:
            raise XenError("xenforeignmemory_map_resource", _ffi.errno,
                           "grant table of dom %d, %d frames" % (domid, frames))
        return GrantTableMapping(self, res, addr[0], frames * GRANTS_PER_FRAME)


GRANTS_PER_FRAME = PAGE_SIZE // 8        # grant_entry_v1_t is 8 bytes


class GrantTableMapping:
    """Another domain's grant table, written by dom0 on its behalf."""

    def __init__(self, fm, res, addr, entries):
        self._fm, self._res, self.addr, self.entries = fm, res, addr, entries

    def _check(self, first_ref, n):
        if first_ref < 0 or n < 0 or first_ref + n > self.entries:
            raise ValueError("refs %d..%d outside the %d mapped entries"
                             % (first_ref, first_ref + n - 1, self.entries))

    def seed(self, first_ref, gfns, grantee, readonly=False):
        """Refs first_ref.. grant ``gfns`` to domain ``grantee``."""
        gfns = list(gfns)
        self._check(first_ref, len(gfns))
        _lib.xen_shim_grant_seed(self.addr, first_ref,
                                 _ffi.new("uint64_t[]", gfns), len(gfns),
                                 grantee, int(readonly))

    def revoke(self, first_ref, n):
        """End the grants; how many were still mapped by the grantee."""
        self._check(first_ref, n)
        return _lib.xen_shim_grant_revoke(self.addr, first_ref, n)

    def close(self):
        if self._res is not None:
            res, self._res = self._res, None
            _lib.xenforeignmemory_unmap_resource(self._fm._h, res)


class GntTab:
    """A libxengnttab handle: map pages other domains granted us."""

    def __init__(self):
        load()
        self._h = _opened(_lib.xengnttab_open(_logger, 0), "xengnttab_open")

    def close(self):
        if self._h is not None:
            _lib.xengnttab_close(self._h)
            self._h = None

    def map(self, domid, refs, writable=True):
        """Map grant ``refs`` of ``domid`` contiguously; all or XenError."""
        refs = list(refs)
        if not refs:
            raise ValueError("nothing to map")
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        domids = _ffi.new("uint32_t[]", [domid] * len(refs))
        arr = _ffi.new("uint32_t[]", refs)
        addr = _lib.xengnttab_map_grant_refs(self._h, len(refs), domids, arr,
                                             prot)
        if addr == _ffi.NULL:
            err = _ffi.errno
            # The batch call undoes everything and reports one errno; find
            # which refs are bad so the error names them.
            check_batch("xengnttab_map_grant_refs", refs,
                        [self._probe(domid, r, prot) for r in refs], "ref",
                        "dom %d" % domid)
            raise XenError("xengnttab_map_grant_refs", err,
                           "dom %d, %d refs" % (domid, len(refs)))
        return Mapping(addr, len(refs), self._unmap)

    def _probe(self, domid, ref, prot):
        addr = _lib.xengnttab_map_grant_ref(self._h, domid, ref, prot)
        if addr == _ffi.NULL:
            return _ffi.errno or _errno.EINVAL
        _lib.xengnttab_unmap(self._h, addr, 1)
        return 0

    def _unmap(self, addr, pages):
        if _lib.xengnttab_unmap(self._h, addr, pages) < 0:
            raise XenError("xengnttab_unmap", _ffi.errno)


class GntShr:
    """A libxengntshr handle: grant pages of our own to another domain."""

    def __init__(self):
        load()
        self._h = _opened(_lib.xengntshr_open(_logger, 0), "xengntshr_open")

    def close(self):
        if self._h is not None:
            _lib.xengntshr_close(self._h)
            self._h = None

    def share(self, domid, count, writable=False):
        """Allocate ``count`` pages shared with ``domid``: (Mapping, refs)."""
        refs = _ffi.new("uint32_t[]", count)
        addr = _lib.xengntshr_share_pages(self._h, domid, count, refs,
                                          int(writable))
        if addr == _ffi.NULL:
            raise XenError("xengntshr_share_pages", _ffi.errno,
                           "dom %d, %d pages" % (domid, count))
        return Mapping(addr, count, self._unshare), list(refs)

    def _unshare(self, addr, pages):
        if _lib.xengntshr_unshare(self._h, addr, pages) < 0:
            raise XenError("xengntshr_unshare", _ffi.errno)


class EvtChn:
    """A libxenevtchn handle; ``fileno()`` makes it a reactor reader."""

    def __init__(self):
        load()
        self._h = _opened(_lib.xenevtchn_open(_logger, 0), "xenevtchn_open")

    def close(self):
        if self._h is not None:
            _lib.xenevtchn_close(self._h)
            self._h = None

    def fileno(self):
        return _lib.xenevtchn_fd(self._h)

    def _call(self, op, rc):
        if rc < 0:
            raise XenError(op, _ffi.errno)
        return rc

    def bind_interdomain(self, domid, remote_port):
        """Bind to ``remote_port`` of ``domid``; returns the local port."""
        return self._call("xenevtchn_bind_interdomain",
                          _lib.xenevtchn_bind_interdomain(self._h, domid,
                                                          remote_port))

    def pending(self):
        """The next port that fired (it stays masked until unmask)."""
        return self._call("xenevtchn_pending", _lib.xenevtchn_pending(self._h))

    def unmask(self, port):
        self._call("xenevtchn_unmask", _lib.xenevtchn_unmask(self._h, port))

    def notify(self, port):
        self._call("xenevtchn_notify", _lib.xenevtchn_notify(self._h, port))

    def unbind(self, port):
        self._call("xenevtchn_unbind", _lib.xenevtchn_unbind(self._h, port))


def probe(check_paging=False):
    """What this host offers for the Xen backend, as a dict; never raises.

    ``check_paging`` also asks the hypervisor whether it has MEM_PAGING
    (lazy fill of HVM/PVH clones); Debian's stock build has not.
    """
    if not host_has_xen():
        return {"xen": "absent", "reason": _why_absent()}
    try:
        with XenCtrl() as xc:
            info = {"xen": "present", "version": xc.version()}
            info.update(xc.physinfo())
            info["mem_paging"] = (xc.mem_paging_available() if check_paging
                                  else "not checked")
    except (XenUnavailable, XenError) as e:
        return {"xen": "unusable", "reason": str(e)}
    return info
