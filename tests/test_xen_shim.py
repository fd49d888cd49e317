"""The Xen shim: it builds against Debian's libxen-dev, binds what the Xen
backend needs, drives the vm_event ring correctly, and fails cleanly (a
XenError or XenUnavailable, never a traceback) on a host without Xen."""

import errno
import functools
import os
import struct
import subprocess
import sys
import tempfile

from twisted.trial import unittest

from xenclone.backends.xen import libxc, xenctrl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from libxc_shim import xen_build  # noqa: E402

NO_HEADERS = "xenctrl.h not installed (apt-get install libxen-dev)"

BOUND = """
xc_interface_open xc_interface_close xc_get_last_error xc_clear_last_error
xc_strerror xc_version xc_physinfo xc_domain_getinfolist xc_domain_pause
xc_domain_unpause xc_domain_destroy xc_domain_hvm_getcontext
xc_domain_hvm_setcontext xc_domain_maximum_gpfn
xc_domain_populate_physmap_exact xc_domain_decrease_reservation_exact
xc_mem_paging_enable xc_mem_paging_disable xc_mem_paging_nominate
xc_mem_paging_evict xc_mem_paging_prep xc_mem_paging_load xc_vm_event_enable
xenforeignmemory_open xenforeignmemory_close xenforeignmemory_map
xenforeignmemory_unmap
xengnttab_open xengnttab_close xengnttab_map_grant_ref
xengnttab_map_grant_refs xengnttab_unmap
xengntshr_open xengntshr_share_pages xengntshr_unshare xengntshr_close
xenevtchn_open xenevtchn_close xenevtchn_fd xenevtchn_bind_interdomain
xenevtchn_pending xenevtchn_unmask xenevtchn_notify xenevtchn_unbind
xen_shim_logger xen_shim_ring_init xen_shim_ring_take xen_shim_ring_put
xen_shim_paging_response xen_shim_ring_unmap
""".split()

# io/ring.h: the shared ring page starts with req_prod, req_event, rsp_prod,
# rsp_event and 48 bytes of padding, then the entries.
SRING_HEADER = 64


@functools.cache
def build_once():
    """Run the documented build command once per test run (trial has no
    setUpClass); later tests import what it built."""
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "libxc_shim", "xen_build.py")],
        cwd=tempfile.gettempdir(), capture_output=True, text=True)


class BuildTests(unittest.TestCase):
    """The extension, compiled here by the documented build command."""

    def setUp(self):
        if not xen_build.available():
            raise unittest.SkipTest(NO_HEADERS)
        self.build = build_once()

    def lib(self):
        from xenclone import _xen
        return _xen.ffi, _xen.lib

    def test_builds(self):
        self.assertEqual(self.build.returncode, 0, self.build.stderr[-3000:])
        self.assertEqual(xen_build.modules(),
                         ["libxc_shim/xen_build.py:ffibuilder"])

    def test_binds_everything_listed(self):
        ffi, lib = self.lib()
        missing = [name for name in BOUND if not hasattr(lib, name)]
        self.assertEqual(missing, [])

    def test_layouts_come_from_the_headers(self):
        ffi, lib = self.lib()
        self.assertEqual(lib.VM_EVENT_INTERFACE_VERSION, 7)
        self.assertEqual(lib.HVM_PARAM_PAGING_RING_PFN, 27)
        self.assertEqual(ffi.offsetof("vm_event_request_t", "u"), 24)
        self.assertEqual(ffi.sizeof("struct vm_event_paging"), 16)

    def fake_front(self):
        """A ring page we play Xen's (front) side of, and its back ring."""
        libxc.load()
        ffi, lib = self.lib()
        page = ffi.new("char[]", 4096)
        ring = xenctrl.VmEventRing(None, 7, page, 5, None)
        entry = ffi.sizeof("vm_event_request_t")
        return ffi, lib, page, ring, entry

    def push(self, ffi, lib, buf, entry, index, gfn, flags, pflags=0):
        req = ffi.new("vm_event_request_t *")
        req.version = lib.VM_EVENT_INTERFACE_VERSION
        req.reason = lib.VM_EVENT_REASON_MEM_PAGING
        req.vcpu_id = 1
        req.flags = flags
        req.u.mem_paging.gfn = gfn
        req.u.mem_paging.flags = pflags
        off = SRING_HEADER + index * entry
        buf[off:off + entry] = ffi.buffer(req)
        struct.pack_into("<I", buf, 0, index + 1)          # req_prod

    def test_ring_take_and_respond(self):
        self.patch(libxc, "PRIVCMD_PATHS", (__file__,))
        ffi, lib, page, ring, entry = self.fake_front()
        buf = ffi.buffer(page)
        self.assertEqual(ring.take(), [])
        paused = lib.VM_EVENT_FLAG_VCPU_PAUSED
        self.push(ffi, lib, buf, entry, 0, 0x1234, paused | (1 << 1))
        self.push(ffi, lib, buf, entry, 1, 0x99, 0, lib.MEM_PAGING_DROP_PAGE)
        reqs = ring.take()
        self.assertEqual([(r.gfn, r.vcpu_id, r.dropped) for r in reqs],
                         [(0x1234, 1, False), (0x99, 1, True)])
        self.assertEqual(ring.take(), [])
        self.assertEqual(ring.respond(reqs[:1]), 1)
        self.assertEqual(struct.unpack_from("<I", buf, 8)[0], 1)  # rsp_prod
        rsp = ffi.cast("vm_event_response_t *", page + SRING_HEADER)
        # Xen drops responses without the interface version; only
        # VCPU_PAUSED is echoed so the vCPU is unpaused and nothing else.
        self.assertEqual(rsp.version, lib.VM_EVENT_INTERFACE_VERSION)
        self.assertEqual(rsp.reason, lib.VM_EVENT_REASON_MEM_PAGING)
        self.assertEqual(rsp.flags, paused)
        self.assertEqual((rsp.vcpu_id, rsp.u.mem_paging.gfn), (1, 0x1234))

    def test_open_failure_is_a_xen_error(self):
        # Pretend the host has Xen: libxenctrl itself must then fail, and
        # that failure must come out as XenError with its errno.
        if libxc.host_has_xen():
            raise unittest.SkipTest("this host really has Xen")
        self.patch(libxc, "PRIVCMD_PATHS", (__file__,))
        for cls in (xenctrl.XenCtrl, libxc.ForeignMemory, libxc.GntTab,
                    libxc.EvtChn):
            e = self.assertRaises(libxc.XenError, cls)
            self.assertNotEqual(e.errno, 0, cls)


class ErrorTests(unittest.TestCase):
    """Pure Python: the error boundary and the partial-failure checker."""

    def test_format(self):
        e = libxc.XenError("xc_domain_pause", errno.ESRCH, "dom 5; no such")
        self.assertEqual(
            str(e), "xc_domain_pause failed: [Errno 3] No such process "
            "(dom 5; no such)")
        self.assertEqual(e.errno, errno.ESRCH)
        self.assertIsInstance(e, Exception)

    def test_negative_errno_is_normalised(self):
        self.assertEqual(libxc.XenError("op", -errno.ENOENT).errno,
                         errno.ENOENT)

    def test_one_partial_failure_raises(self):
        pfns = [0x10, 0x11, 0x12, 0x13]
        e = self.assertRaises(libxc.XenError, libxc.check_batch,
                              "xenforeignmemory_map", pfns,
                              [0, 0, -errno.ENOENT, 0], "pfn", "dom 3")
        self.assertEqual(e.failures, [(0x12, errno.ENOENT)])
        self.assertEqual(e.errno, errno.ENOENT)
        self.assertIn("1 failed: pfn 0x12: ENOENT", str(e))
        self.assertIn("dom 3", str(e))

    def test_all_good_passes(self):
        self.assertIsNone(libxc.check_batch("op", [1, 2], [0, 0]))

    def test_many_failures_are_summarised(self):
        refs = list(range(20))
        e = self.assertRaises(libxc.XenError, libxc.check_batch, "map",
                              refs, [errno.EINVAL] * 20, "ref")
        self.assertEqual(len(e.failures), 20)
        self.assertIn("20 failed: ref 0: EINVAL", str(e))
        self.assertTrue(str(e).endswith(", ..."))


class ProbeTests(unittest.TestCase):
    def setUp(self):
        if libxc.host_has_xen():
            raise unittest.SkipTest("this host really has Xen")

    def test_probe_reports_absent(self):
        info = xenctrl.probe(check_paging=True)
        self.assertEqual(info["xen"], "absent")
        self.assertIn("privcmd", info["reason"])

    def test_use_raises_unavailable(self):
        self.assertRaises(libxc.XenUnavailable, libxc.load)
        self.assertRaises(libxc.XenUnavailable, xenctrl.XenCtrl)
        self.assertRaises(libxc.XenUnavailable, libxc.EvtChn)
