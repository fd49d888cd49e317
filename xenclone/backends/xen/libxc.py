"""The Xen libraries behind one error boundary: loading ``xenclone._xen``,
``XenError``, and the handles of xenforeignmemory, xengnttab, xengntshr and
xenevtchn (xenctrl and the vm_event ring are ``xenctrl.py``).

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


def why_absent():
    try:
        with open(HYPERVISOR_TYPE) as f:
            under_xen = f.read().strip() == "xen"
    except OSError:
        under_xen = False
    if under_xen:
        return ("running under Xen but no privcmd device: modprobe "
                "xen-privcmd and mount -t xenfs xenfs /proc/xen")
    return "not running under Xen (no %s)" % " or ".join(PRIVCMD_PATHS)


def quiet_logger():
    """The logger every handle is opened with (after ``load``): errors
    reach Python as XenError, so libxc's own reports are kept off stderr."""
    return _logger


def load():
    """Return ``(ffi, lib)`` of ``xenclone._xen`` or raise XenUnavailable."""
    global _ffi, _lib, _logger
    if not host_has_xen():
        raise XenUnavailable(why_absent())
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


def opened(handle, op):
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



class ForeignMemory:
    """A libxenforeignmemory handle: map another domain's frames."""

    def __init__(self):
        load()
        self._h = opened(_lib.xenforeignmemory_open(_logger, 0),
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
        self._h = opened(_lib.xengnttab_open(_logger, 0), "xengnttab_open")

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
        self._h = opened(_lib.xengntshr_open(_logger, 0), "xengntshr_open")

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
        self._h = opened(_lib.xenevtchn_open(_logger, 0), "xenevtchn_open")

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
