"""Fill mode selection (fill = fork | lazy | before-run | auto): what each
backend offers, and clear refusals before anything is built."""

import types

from twisted.trial import unittest

from xenclone.backends.kvm.backend import KvmBackend
from xenclone.backends.xen.backend import XenBackend
from xenclone.control.controller import Controller
from xenclone.control.records import CloneSpec
from xenclone.wire import WireError


def xen(mem_paging, refused="no MEM_SHARING", image_domains=()):
    """Just what XenBackend._fill_of reads: ``refused`` None is a
    hypervisor that forks, with image domains for ``image_domains``."""
    images = types.SimpleNamespace(available=refused is None, refused=refused,
                                   domid=lambda i: 7 if i in image_domains else None)
    ns = types.SimpleNamespace(mem_paging=mem_paging, images=images,
                               xc=types.SimpleNamespace(version=lambda: "4.17.5"))
    ns.fill_modes = lambda: XenBackend.fill_modes(ns)
    return ns


def fill(backend, asked, image="web"):
    return XenBackend._fill_of(backend, asked, image)


class XenFillTests(unittest.TestCase):
    def test_auto_is_lazy_only_with_mem_paging(self):
        self.assertEqual(fill(xen(True), "auto"), "lazy")
        self.assertEqual(fill(xen(False), "auto"), "before-run")
        self.assertEqual(fill(xen(False), "before-run"), "before-run")
        self.assertEqual(fill(xen(True), "before-run"), "before-run")

    def test_auto_is_fork_for_an_image_with_an_image_domain(self):
        forks = xen(True, refused=None, image_domains=("web",))
        self.assertEqual(fill(forks, "auto"), "fork")
        self.assertEqual(fill(forks, "auto", "old"), "lazy")   # blessed before fork was offered
        self.assertEqual(fill(forks, "fork"), "fork")
        self.assertEqual(fill(forks, "lazy"), "lazy")

    def test_fork_without_sharing_says_why_and_names_the_modes(self):
        e = self.assertRaises(WireError, fill, xen(True), "fork")
        self.assertEqual(e.code, "no-fork")
        self.assertIn("no MEM_SHARING", str(e))
        self.assertIn("lazy, before-run", str(e))
        e = self.assertRaises(WireError, fill, xen(False), "fork")
        self.assertTrue(str(e).endswith("has fill modes before-run"), str(e))

    def test_lazy_without_mem_paging_says_why(self):
        e = self.assertRaises(WireError, fill, xen(False), "lazy")
        self.assertEqual(e.code, "no-lazy-fill")
        self.assertIn("MEM_PAGING", str(e))
        self.assertIn("4.17.5", str(e))

    def test_unknown_fill(self):
        e = self.assertRaises(WireError, fill, xen(True), "eager")
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
