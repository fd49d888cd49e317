"""What a lazy Linux clone needs resident before it runs: x86-64 page
walks over an image's pages (4 KiB, 2 MiB and 1 GiB mappings), the vCPU
state read from a real HVM save record layout, and each vCPU's per-CPU
area found through its GS base (the page Xen takes by gfn on resume)."""

import struct

from twisted.trial import unittest

from libxc_shim import xen_build
from xenclone.backends.xen import libxc, linux, pagewalk
from xenclone.backends.xen.libxc import CpuState
from xenclone.interfaces import PAGE_SIZE
from xenclone.wire import WireError

NPAGES = 4096
PML4, PDPT, TEXT_PDPT, TEXT_PD, TEXT_PT = 1, 2, 3, 4, 5
P = pagewalk.PRESENT | 2            # present, writable
DIRECT = 0xFFFF888000000000         # Linux's direct map (no KASLR on PVH)
TEXT = 0xFFFFFFFF81000000


def index(va, shift):
    return (va >> shift) & 0x1FF


class Tables:
    """An image's page tables, built entry by entry; pages not written read
    as zeros (not present)."""

    def __init__(self):
        self.pages = {}

    def set(self, table, i, value):
        page = self.pages.setdefault(table, bytearray(PAGE_SIZE))
        struct.pack_into("<Q", page, i * 8, value)

    def read_page(self, pfn):
        return bytes(self.pages.get(pfn, bytes(PAGE_SIZE)))


def tables():
    """DIRECT..+1 GiB as one 1 GiB page at pfn 0; TEXT as 2 MiB pages at
    pfn 0x1000 (beyond this small image: the walk still answers); TEXT+4 MiB
    as 4 KiB pages at pfns 0x800.."""
    t = Tables()
    t.set(PML4, index(DIRECT, 39), PDPT << 12 | P)
    t.set(PDPT, index(DIRECT, 30), 0 | P | pagewalk.LARGE)
    t.set(PML4, index(TEXT, 39), TEXT_PDPT << 12 | P)
    t.set(TEXT_PDPT, index(TEXT, 30), TEXT_PD << 12 | P)
    t.set(TEXT_PD, index(TEXT, 21), 0x1000 << 12 | P | pagewalk.LARGE)
    t.set(TEXT_PD, index(TEXT + (2 << 20), 21), 0x1200 << 12 | P | pagewalk.LARGE)
    t.set(TEXT_PD, index(TEXT + (4 << 20), 21), TEXT_PT << 12 | P)
    for i in range(512):
        t.set(TEXT_PT, i, (0x800 + i) << 12 | P | 1 << 63)   # NX: not part of the frame
    return t


class PageWalkTests(unittest.TestCase):
    def setUp(self):
        self.t = tables()

    def walk(self, va):
        return pagewalk.virt_to_pfn(va, PML4 << 12, self.t.read_page, NPAGES)

    def test_one_gib_page(self):
        self.assertEqual(self.walk(DIRECT), 0)
        self.assertEqual(self.walk(DIRECT + 0x1234567), 0x1234)

    def test_two_mib_page(self):
        self.assertEqual(self.walk(TEXT + 0x3000), 0x1003)
        self.assertEqual(self.walk(TEXT + (2 << 20) + 0x5000), 0x1205)

    def test_four_kib_page_ignores_nx(self):
        self.assertEqual(self.walk(TEXT + (4 << 20) + 7 * PAGE_SIZE + 12), 0x807)

    def test_not_present(self):
        self.assertRaises(pagewalk.NotMapped, self.walk, DIRECT + (1 << 30))
        self.assertRaises(pagewalk.NotMapped, self.walk, 0x400000)

    def test_table_outside_the_image(self):
        self.t.set(PML4, index(0xFFFFC90000000000, 39), NPAGES << 12 | P)
        self.assertRaises(pagewalk.NotMapped, self.walk, 0xFFFFC90000000000)


class ResumePagesTests(unittest.TestCase):
    def cpu(self, vcpu, gs, shadow=0, cr4=0x6F0):
        return CpuState(vcpu, PML4 << 12, cr4, 0xD01, gs, shadow)

    def test_each_vcpus_per_cpu_area(self):
        t = tables()
        cpus = [self.cpu(0, DIRECT + 0x7A00000), self.cpu(1, 0x7F0000000000,
                                                         shadow=DIRECT + 0x7A40000)]
        pfns = linux.resume_pages(cpus, t.read_page, NPAGES * 16)
        self.assertEqual(pfns, list(range(0x7A00, 0x7A00 + 2 * linux.PERCPU_PAGES)))

    def test_pages_beyond_the_image_are_left_out(self):
        pfns = linux.resume_pages([self.cpu(0, DIRECT + 0xFE0000)], tables().read_page, 0x1000)
        self.assertEqual(pfns, list(range(0xFE0, 0x1000)))

    def test_unmapped_area_refuses_lazy_fill(self):
        e = self.assertRaises(WireError, linux.resume_pages,
                              [self.cpu(0, DIRECT + (1 << 30))], tables().read_page, NPAGES)
        self.assertEqual(e.code, "no-lazy-fill")
        self.assertIn("fill=before-run", str(e))

    def test_five_level_paging_refuses_lazy_fill(self):
        e = self.assertRaises(WireError, linux.resume_pages,
                              [self.cpu(0, DIRECT, cr4=0x6F0 | pagewalk.CR4_LA57)],
                              tables().read_page, NPAGES)
        self.assertEqual(e.code, "no-lazy-fill")


class HvmRecordTests(unittest.TestCase):
    """A save record laid out by the shim's own structs (Xen's headers)."""

    def setUp(self):
        if not xen_build.available():
            raise unittest.SkipTest("no Xen headers (libxen-dev)")
        try:
            from xenclone import _xen
        except ImportError:
            raise unittest.SkipTest("xenclone._xen not built")
        self.ffi, self.lib = _xen.ffi, _xen.lib

    def descriptor(self, code, instance, body):
        d = self.ffi.new("struct hvm_save_descriptor *")
        d.typecode, d.instance, d.length = code, instance, len(body)
        return bytes(self.ffi.buffer(d)) + body

    def cpu(self, cr3, gs):
        c = self.ffi.new("struct hvm_hw_cpu *")
        c.cr3, c.cr4, c.gs_base, c.shadow_gs, c.msr_efer = cr3, 0x6F0, gs, 0, 0xD01
        return bytes(self.ffi.buffer(c))

    def test_cpus_in_order_other_records_skipped(self):
        header = self.descriptor(1, 0, bytes(24))           # HEADER
        record = (header + self.descriptor(self.lib.XEN_SHIM_HVM_CPU, 0, self.cpu(0x5000, DIRECT))
                  + self.descriptor(3, 0, bytes(40))        # PIC
                  + self.descriptor(self.lib.XEN_SHIM_HVM_CPU, 1, self.cpu(0x5000, DIRECT + 9))
                  + self.descriptor(self.lib.XEN_SHIM_HVM_END, 0, b""))
        cpus = libxc.hvm_cpus(record)
        self.assertEqual([(c.vcpu, c.cr3, c.gs_base) for c in cpus],
                         [(0, 0x5000, DIRECT), (1, 0x5000, DIRECT + 9)])
        self.assertEqual(cpus[0].efer, 0xD01)

    def test_short_cpu_record_is_an_error(self):
        record = self.descriptor(self.lib.XEN_SHIM_HVM_CPU, 0, bytes(100))
        self.assertRaises(ValueError, libxc.hvm_cpus, record)
