"""Fill mode selection (fill = lazy | before-run | auto): what each backend
offers, and clear refusals before anything is built."""

import types

from twisted.trial import unittest

from xenclone.backends.kvm.backend import KvmBackend
from xenclone.backends.xen.backend import XenBackend
from xenclone.control.controller import CloneSpec, Controller
from xenclone.wire import WireError


def xen(mem_paging):
    """Just what XenBackend._fill_of reads."""
    return types.SimpleNamespace(mem_paging=mem_paging,
                                 xc=types.SimpleNamespace(version=lambda: "4.17.5"))


class XenFillTests(unittest.TestCase):
    def test_auto_is_lazy_only_with_mem_paging(self):
        self.assertEqual(XenBackend._fill_of(xen(True), "auto"), "lazy")
        self.assertEqual(XenBackend._fill_of(xen(False), "auto"), "before-run")
        self.assertEqual(XenBackend._fill_of(xen(False), "before-run"), "before-run")
        self.assertEqual(XenBackend._fill_of(xen(True), "before-run"), "before-run")

    def test_lazy_without_mem_paging_says_why(self):
        e = self.assertRaises(WireError, XenBackend._fill_of, xen(False), "lazy")
        self.assertEqual(e.code, "no-lazy-fill")
        self.assertIn("MEM_PAGING", str(e))
        self.assertIn("4.17.5", str(e))

    def test_unknown_fill(self):
        e = self.assertRaises(WireError, XenBackend._fill_of, xen(True), "eager")
        self.assertEqual(e.code, "bad-argument")


class KvmFillTests(unittest.TestCase):
    def test_kvm_refuses_before_run(self):
        spec = CloneSpec(1, "c", 1, 1, fill="before-run")
        d = KvmBackend(link=None).launch(types.SimpleNamespace(), spec)
        e = self.failureResultOf(d, WireError).value
        self.assertEqual(e.code, "unsupported")


class ControllerFillTests(unittest.TestCase):
    def test_launch_checks_fill_before_anything(self):
        controller = Controller(None, None, None, types.SimpleNamespace(), None)
        e = self.assertRaises(WireError, controller.op_launch, {"image": "i", "fill": "eager"})
        self.assertEqual(e.code, "bad-argument")
