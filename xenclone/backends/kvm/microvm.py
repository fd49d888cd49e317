"""A KVM micro-VM over the C shim: one vCPU, guest RAM = one memfd mapping.

A master maps its memfd MAP_SHARED; a clone maps the image memfd MAP_PRIVATE
and registers it with userfaultfd (MISSING|MINOR|WP), so every first touch is
a fault the pager serves, pages are mapped write-protected, and the first
write to each is a fault too: the pager knows every private page (the
kernel's copy on write), and the image never changes.

Rule: no Python thread may read or write uffd-registered guest memory while
holding the GIL (a fault would wait for a pager that needs the GIL). Only
shim calls, which release the GIL, touch clone RAM.

KVM fds work only in the process that created the VM; the uffd may be sent
to another process (socket.send_fds) and served there.
"""
import collections
import errno
import os
import signal
import struct
import threading

from xenclone._linux import ffi, lib
from xenclone import workload

PAGE_SIZE = 4096
CLONE_UFFD_FEATURES = (lib.UFFD_FEATURE_MISSING_SHMEM | lib.UFFD_FEATURE_MINOR_SHMEM
                       | lib.UFFD_FEATURE_WP_HUGETLBFS_SHMEM)
CLONE_UFFD_MODES = (lib.UFFDIO_REGISTER_MODE_MISSING | lib.UFFDIO_REGISTER_MODE_MINOR
                    | lib.UFFDIO_REGISTER_MODE_WP)
_KIND_NAMES = {lib.LX_PAGE_SHARED: "shared", lib.LX_PAGE_PRIVATE: "private",
               lib.LX_PAGE_ZERO: "zero", lib.LX_PAGE_ABSENT: "absent"}
_NO_WP = bytes(k & ~lib.LX_KIND_WP for k in range(256))
_PAGER_KINDS = bytes(
    k & ~lib.LX_KIND_WP if k & lib.LX_KIND_WP or k not in (lib.LX_PAGE_SHARED, lib.LX_PAGE_ZERO)
    else lib.LX_PAGE_PRIVATE for k in range(256))
STATE_SIZE = lib.mvm_state_size()

Exit = collections.namedtuple("Exit", "kind port value t_ns reason suberror")

# struct mvm_state (kvm_vm.c): magic, size, then struct kvm_regs, whose
# 16 general registers (rsp is the 7th) are followed by rip.
_RSP_OFF, _RIP_OFF = 8 + 6 * 8, 8 + 16 * 8


def entry_pfns(blob):
    """The pages a restored vCPU touches first: its code page and its stack
    page (the guest runs flat, without paging, so addresses are physical)."""
    rsp, = struct.unpack_from("<Q", blob, _RSP_OFF)
    rip, = struct.unpack_from("<Q", blob, _RIP_OFF)
    return sorted({rip >> 12, (rsp - 1) >> 12 if rsp else 0})
Exit.__new__.__defaults__ = (0, 0)

_EXIT_KINDS = {
    lib.MVM_EXIT_IO_OUT: "io_out",
    lib.MVM_EXIT_HLT: "hlt",
    lib.MVM_EXIT_KICKED: "kicked",
    lib.MVM_EXIT_ERROR: "error",
}

_kvm_fd = None


def _check(rc, what):
    if rc < 0:
        raise OSError(-rc, "%s: %s" % (what, os.strerror(-rc)))
    return rc


def kvm_fd():
    """The process-wide /dev/kvm fd; also installs the SIGUSR1 kick handler."""
    global _kvm_fd
    if _kvm_fd is None:
        _kvm_fd = _check(lib.mvm_kvm_open(), "open /dev/kvm")
        _check(lib.mvm_install_kick_handler(), "sigaction(SIGUSR1)")
    return _kvm_fd


def host_features():
    """What this host offers: KVM, and userfaultfd with its feature bits."""
    out = {"kvm": False, "uffd": False, "uffd_features": 0,
           "minor_shmem": False, "missing_shmem": False, "wp_shmem": False}
    if os.path.exists("/dev/kvm"):
        try:
            kvm_fd()
            out["kvm"] = True
        except OSError as e:
            out["kvm_error"] = str(e)
    got = ffi.new("uint64_t *")
    fd = lib.lx_uffd_open(0, got)
    if fd < 0:
        out["uffd_error"] = os.strerror(-fd)
    else:
        os.close(fd)
        out["uffd"] = True
        out["uffd_features"] = got[0]
        out["minor_shmem"] = bool(got[0] & lib.UFFD_FEATURE_MINOR_SHMEM)
        out["missing_shmem"] = bool(got[0] & lib.UFFD_FEATURE_MISSING_SHMEM)
        out["wp_shmem"] = bool(got[0] & lib.UFFD_FEATURE_WP_HUGETLBFS_SHMEM)
    return out


class MicroVM:
    """Guest RAM = memfd ``mem_fd`` (npages pages) at guest physical 0.

    Made in two steps, so that a VM can be made ahead of a launch: the VM,
    its vCPU and its memory slot first (most of the cost), then
    ``map_memory`` backs guest RAM with a memfd."""

    def __init__(self, npages, gated=False):
        """``gated``: the vCPU's first run_until_exit waits, in C, for
        open_gate(); a thread started ahead then runs the guest at once."""
        self.npages = npages
        self.size = npages * PAGE_SIZE
        self.private = None
        self.uffd = None
        self.in_t_ns = {}   # port -> t_ns of its latest IN exit (0x11: "first instruction")
        self.gate_open = not gated
        self._exit = ffi.new("struct mvm_exit *")
        self._pagemap_fd = None
        self._closing = threading.Lock()   # a kick never races the VM's teardown
        self._ram = threading.Lock()       # nor an eviction the unmapping of guest RAM
        vm = ffi.new("struct mvm *")
        _check(lib.mvm_create(kvm_fd(), self.size, int(gated), vm), "create VM")
        self._vm = vm
        self.addr = vm.mem_addr

    @classmethod
    def of(cls, mem_fd, npages, private, gated=False):
        """A VM whose RAM is ``mem_fd`` (MAP_PRIVATE if ``private``)."""
        vm = cls(npages, gated)
        try:
            vm.map_memory(mem_fd, private)
        except BaseException:
            vm.close()
            raise
        return vm

    def map_memory(self, mem_fd, private):
        assert self.private is None
        _check(lib.mvm_map_memfd(self._vm, mem_fd, int(private)), "mmap guest RAM")
        self.private = private

    def open_gate(self):
        self.gate_open = True
        lib.mvm_open_gate(self._vm)

    def register_uffd(self, features=CLONE_UFFD_FEATURES):
        """A uffd over all of guest RAM (MISSING|MINOR|WP); closed by close()."""
        assert self.private and self.uffd is None
        fd = _check(lib.lx_uffd_open(features, ffi.NULL), "userfaultfd")
        try:
            _check(lib.lx_uffd_register(fd, self.addr, self.size, CLONE_UFFD_MODES),
                   "UFFDIO_REGISTER")
        except BaseException:
            os.close(fd)
            raise
        self.uffd = fd
        return fd

    def setup_master(self, params, guest_bin):
        """Write params page, code and data set; point the vCPU at the code."""
        assert not self.private
        if len(guest_bin) > workload.CODE_MAX:
            raise ValueError("guest code is %d bytes > %d" % (len(guest_bin), workload.CODE_MAX))
        if params.memory_pages != self.npages:
            raise ValueError("params are for %d pages, VM has %d" % (params.memory_pages, self.npages))
        ram = ffi.cast("char *", self.addr)
        ffi.memmove(ram + workload.PARAMS_ADDR, params.pack(), workload.PARAMS_STRUCT.size)
        ffi.memmove(ram + workload.CODE_ADDR, guest_bin, len(guest_bin))
        lib.lx_fill_dataset(ram, self.npages, params.data_first_pfn, params.data_npages,
                            params.seed, params.zero_every)
        _check(lib.mvm_set_boot_state(self._vm, workload.CODE_ADDR, workload.STACK_TOP,
                                        0x2BADB002), "set boot state")

    def state(self):
        buf = ffi.new("char[]", STATE_SIZE)
        _check(lib.mvm_get_state(self._vm, buf, STATE_SIZE), "get vCPU state")
        return ffi.buffer(buf)[:]

    def set_state(self, blob):
        _check(lib.mvm_set_state(self._vm, blob, len(blob)), "set vCPU state")

    def run_until_exit(self, in_values):
        """Run until an OUT, HLT, kick or error; IN exits are answered with
        in_values(port) and their times recorded in self.in_t_ns."""
        e = self._exit
        while True:
            kind = _check(lib.mvm_run(self._vm, e), "KVM_RUN")
            if kind != lib.MVM_EXIT_IO_IN:
                return Exit(_EXIT_KINDS[kind], e.port, e.value, e.t_ns, e.reason, e.suberror)
            self.in_t_ns[e.port] = e.t_ns
            lib.mvm_set_in(self._vm, in_values(e.port) & 0xFFFFFFFF)

    def kick(self, thread_id):
        """Make the vCPU thread's run_until_exit return 'kicked' (now, or at
        its next run if it is not inside KVM_RUN, or at once if it waits at
        its gate). A vCPU waiting for a uffd fault sees the kick only once
        the fault is served (kvm-pvm)."""
        with self._closing:
            if self._vm is None:
                return
            lib.mvm_request_exit(self._vm)
            self.open_gate()    # a vCPU waiting at its gate leaves it, kicked
            # Under the lock the vCPU thread has not reached close(), so
            # it is alive and thread_id is still its own.
            signal.pthread_kill(thread_id, signal.SIGUSR1)

    def _pagemap(self):
        if self._vm is None:
            raise VMClosed(errno.EBADF, "the VM is closed")
        if self._pagemap_fd is None:
            self._pagemap_fd = _check(lib.lx_pagemap_open(), "open pagemap")
        return self._pagemap_fd

    def kinds(self, first_pfn=0, npages=None):
        """The kernel's view of guest pages: bytes of LX_PAGE_ABSENT,
        _SHARED, _PRIVATE or _ZERO, each | LX_KIND_WP if write-protected."""
        npages = self.npages - first_pfn if npages is None else npages
        out = ffi.new("uint8_t[]", npages)
        _check(lib.lx_page_kinds(self._pagemap(), self.addr + first_pfn * PAGE_SIZE, npages, out),
               "PAGEMAP_SCAN")
        return ffi.buffer(out)[:]

    def pager_kinds(self):
        """Each page as the pager counts it (a ``PageState`` byte): a
        shared or zero page the clone may write (not write-protected: the
        pager let a write through that has not landed yet) is private."""
        with self._ram:
            return self.kinds().translate(_PAGER_KINDS)

    def scan(self):
        """Counts of guest pages by kind: shared, private, zero, absent."""
        with self._ram:
            kinds = self.kinds().translate(_NO_WP)
        return {name: kinds.count(kind) for kind, name in _KIND_NAMES.items()}

    def drop_clean(self, pfns):
        """MADV_DONTNEED the pages that still map the image page write-
        protected (a write to one faults, and the pager holds it), so
        nothing written is lost. Returns the pfns dropped."""
        pfns = list(pfns)
        if not pfns:
            return []
        arr = ffi.new("uint64_t[]", pfns)
        dropped = ffi.new("uint8_t[]", len(pfns))
        with self._ram:
            _check(lib.lx_drop_clean(self._pagemap(), self.addr, arr, len(pfns), dropped),
                   "drop_clean")
        return [p for p, d in zip(pfns, dropped) if d]

    def page_out(self, pfns, slots, store, sync):
        """Write pages to ``slots`` of the ``PageOutStore`` and their records
        to its index, push them to disk and out of the page cache, then
        drop them from guest RAM. Returns each page's CRC32. The pages must be held: present and write-
        protected (lx_set_state), so they cannot change meanwhile; NotHeld
        otherwise. Nothing is dropped when the store fails (OSError).

        A held page may still be the image's: a write made it private for
        the pager but the writer has not run again yet. Its data is then
        the image's, and the write lands once the page is loaded back."""
        pfns, slots = list(pfns), list(slots)
        if not pfns:
            return []
        arr = ffi.new("uint64_t[]", pfns)
        buf = ffi.new("char[]", len(pfns) * PAGE_SIZE)
        data = ffi.buffer(buf)
        with self._ram:
            kinds = [self.kinds(p, 1)[0] for p in pfns]
            bad = [(p, k) for p, k in zip(pfns, kinds) if not k & lib.LX_KIND_WP]
            if bad:
                raise NotHeld(bad)
            lib.lx_gather_pages(self.addr, arr, len(pfns), buf)
            crcs = [lib.lx_crc32(buf + i * PAGE_SIZE, PAGE_SIZE) for i in range(len(pfns))]

            def flush(fd, offset, length):     # to disk, and out of the page cache
                _check(lib.lx_store_flush(fd, offset, length, int(sync)),
                       "flush the page-out store")

            store.write(pfns, slots, data, crcs, sync, flush)
            _check(lib.lx_drop_pages(self.addr, arr, len(pfns)), "drop paged-out pages")
        return crcs

    def page_sums(self, first_pfn=0, npages=None):
        """64-bit sum per page (C, GIL released: safe on clone RAM)."""
        npages = self.npages - first_pfn if npages is None else npages
        out = ffi.new("uint64_t[]", npages)
        lib.lx_page_sums(ffi.cast("char *", self.addr) + first_pfn * PAGE_SIZE, npages, out)
        return list(out)

    def prefill(self, pfns):
        """Map image pages (write-protected, as the pager does) before the
        vCPU first runs, so its first instructions need no round trip to the
        pager.  Returns the pfns mapped: pages this host's image cache
        lacks are left to the pager, which alone knows which are zero."""
        # A state map as long as the pages asked for, not the image: a
        # launch walks nothing of the image's size.
        npages = min(self.npages, max(pfns, default=-1) + 1)
        state = ffi.new("uint8_t[]", max(1, npages))
        region = ffi.new("struct lx_region *", {"uffd": self.uffd, "base": self.addr,
                                                "npages": npages, "state": state})
        return [pfn for pfn in pfns
                if 0 <= pfn < self.npages and lib.lx_resolve(region, pfn, 1, lib.LX_CONTINUE) == 0]

    def release_uffd(self):
        """Close this process's copy of the uffd: once the pager's copy is
        gone too, faults waiting on it complete as ordinary faults."""
        if self.uffd is not None:
            os.close(self.uffd)
            self.uffd = None

    def close(self):
        with self._closing, self._ram:
            vm, self._vm = self._vm, None
            if vm is not None:
                lib.mvm_destroy(vm)      # and unmaps guest RAM
            for fd in (self.uffd, self._pagemap_fd):
                if fd is not None:
                    os.close(fd)
            self.uffd = self._pagemap_fd = None


class VMClosed(OSError):
    """The VM was destroyed while an operation on it waited."""


class NotHeld(ValueError):
    """page_out of pages that are absent or not write-protected."""

    def __init__(self, bad):
        super().__init__("pages not held (pfn, kind): %s" % bad[:16])
        self.pfns = [p for p, _ in bad]
