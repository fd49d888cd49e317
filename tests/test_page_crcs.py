"""Every image page carries a CRC32 from its bless: a page that no longer
matches (on disk, or from a remote server) is an error for that image and
never reaches a clone."""

import os

from twisted.internet import defer
from twisted.trial import unittest

from tests import memserver_helpers as H
from xenclone.interfaces import PAGE_SIZE
from xenclone.memserver import page_crcs
from xenclone.memserver.mirror import MirroringMemoryServer
from xenclone.memserver.store import ImageStore
from xenclone.wire import WireError

NPAGES = 64


class StoreCrcTests(unittest.TestCase):
    def setUp(self):
        self.dir = self.mktemp()
        self.store = ImageStore(self.dir)
        self.addCleanup(lambda: self.store.close())
        self.cap, self.zero = H.make_capture(NPAGES)
        self.addCleanup(os.close, self.cap.mem_fd)
        self.store.put("img", self.cap)
        self.memory = os.path.join(self.dir, "img", "memory")

    def corrupt(self, pfn):
        fd = os.open(self.memory, os.O_WRONLY)
        os.pwrite(fd, b"\xee", pfn * PAGE_SIZE + 100)
        os.close(fd)

    def test_bless_writes_a_crc_per_page(self):
        table = page_crcs.from_bytes(self.store.crcs("img", 0, NPAGES), NPAGES)
        for pfn in (0, 1, 17, NPAGES - 1):
            self.assertEqual(page_crcs.first_bad(table, pfn, H.expected_page(pfn, self.zero)),
                             None)
        self.assertEqual(table[0], page_crcs.ZERO_CRC)      # page 0 is a zero page

    def test_a_corrupt_page_on_disk_fails_its_fetch_and_the_load(self):
        self.corrupt(5)
        self.assertEqual(len(self.store.fetch("img", 6, 10)), 10 * PAGE_SIZE)
        e = self.assertRaises(WireError, self.store.fetch, "img", 4, 2)
        self.assertEqual(e.code, "corrupt-image")
        self.assertIn("page 5", str(e))
        self.corrupt(0)         # a zero page that no longer is one
        self.assertEqual(self.assertRaises(WireError, self.store.fetch, "img", 0, 1).code,
                         "corrupt-image")
        self.store.close()
        self.store = ImageStore(self.dir)
        [(name, why)] = self.store.load_all()
        self.assertEqual(name, "img")
        self.assertIn("CRC", why)
        self.assertEqual(self.store.images(), [])

    def test_an_image_from_before_crcs_gets_its_table_at_load(self):
        os.unlink(os.path.join(self.dir, "img", page_crcs.FILE_NAME))
        self.store.close()
        self.store = ImageStore(self.dir)
        self.assertEqual(self.store.load_all(), [])
        self.assertTrue(os.path.exists(os.path.join(self.dir, "img", page_crcs.FILE_NAME)))
        self.corrupt(9)
        self.assertEqual(self.assertRaises(WireError, self.store.fetch, "img", 9, 1).code,
                         "corrupt-image")


class RemoteCrcTests(unittest.TestCase):
    """The daemon's side: a mirror's pages are held to the origin's table."""

    def mirror(self, served):
        table = page_crcs.new_table(4)
        page_crcs.note(table, 0, b"".join(H.page_pattern(p) for p in range(4)))

        class Remote:
            address = "peer:1"

            def fetch(self, image, pfn, count, generation=None):
                return defer.succeed(served(pfn, count))

        mirror = MirroringMemoryServer(None, Remote())
        mirror._origins["m"] = {"server": "peer:1", "image": "img", "generation": "g",
                                "crcs": table}
        return mirror

    def test_a_page_other_than_described_fails_the_fetch(self):
        honest = self.mirror(lambda pfn, n: b"".join(H.page_pattern(p)
                                                     for p in range(pfn, pfn + n)))
        self.assertEqual(len(self.successResultOf(honest.fetch("m", 0, 4))), 4 * PAGE_SIZE)
        liar = self.mirror(lambda pfn, n: b"".join(H.page_pattern(p + (p == 2))
                                                   for p in range(pfn, pfn + n)))
        self.assertEqual(len(self.successResultOf(liar.fetch("m", 0, 2))), 2 * PAGE_SIZE)
        f = self.failureResultOf(liar.fetch("m", 1, 3), WireError)
        self.assertEqual(f.value.code, "corrupt-page")
        self.assertIn("page 2", f.getErrorMessage())
