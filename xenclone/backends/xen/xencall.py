"""Hypercalls libxenctrl does not wrap, made through libxencall.

Only the project's own memop so far: ``XENMEM_sharing_op_fork_pages``
(xen/patches/0003), the GFNs of the pages a fork owns, which are the pages
that page-out can take from it to make room (the rest it shares).  Errors
are ``XenError``, as for every Xen library call.
"""

from xenclone.backends.xen import libxc

BATCH = 4096                    # GFNs a call: bounds Xen's time under its lock
INVALID_GFN = (1 << 64) - 1     # a page with no GFN (never one of the guest's)


class XenCall:
    """A libxencall handle."""

    def __init__(self):
        self._ffi, self._lib = libxc.load()
        self._h = libxc.opened(self._lib.xencall_open(libxc.quiet_logger(), 0), "xencall_open")
        self._buf = self._ffi.new("uint64_t[]", BATCH)

    def close(self):
        if self._h is not None:
            self._lib.xencall_close(self._h)
            self._h = None

    def fork_pages(self, domid):
        """The GFNs of every page the fork ``domid`` owns (a snapshot).
        ENOSYS: not a fork, or a hypervisor without the patch."""
        gfns, start = [], 0
        while True:
            n = self._lib.xen_shim_fork_pages(self._h, domid, start, self._buf, BATCH)
            if n < 0:
                raise libxc.XenError("XENMEM_sharing_op_fork_pages", self._ffi.errno,
                                     "dom %d" % domid)
            gfns.extend(g for g in self._buf[0:n] if g != INVALID_GFN)
            if n < BATCH:
                return gfns
            start += n
