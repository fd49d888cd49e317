"""Page-out of private clone pages to a store file and back, on real KVM
clones and a real userfaultfd: the data comes back exact, the store's pages
leave the page cache, and a failing store drops nothing."""
import ctypes
import mmap
import os
import shutil
import subprocess
import tempfile
import threading
import zlib

from twisted.internet import reactor
from twisted.trial import unittest

from xenclone.pageout_index import read_index
from xenclone.pageout_store import PageOutStore
from xenclone.wire import Message, WireError
from tests.test_microvm import GUEST_BIN, ImageTestCase, run_clone
from tests.test_uffd_pager import pattern_sum, serve_until, set_state

if os.path.exists("/dev/kvm"):
    from xenclone._linux import ffi, lib
    from xenclone.backends.kvm.microvm import NotHeld
    from xenclone.backends.kvm.vmmhost import Domain, VmmHost

PAGE = 4096
WRITTEN = range(200, 264)     # pages the tests make private, besides the guest's own


def resident(path):
    """How many of the file's pages are in the page cache (mincore)."""
    size = os.path.getsize(path)
    if not size:
        return 0
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ) as mm:
        addr = int(ffi.cast("uintptr_t", ffi.from_buffer(mm)))
        vec = (ctypes.c_ubyte * ((size + PAGE - 1) // PAGE))()
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(size), vec) != 0:
            raise OSError(ctypes.get_errno(), "mincore")
        return sum(b & 1 for b in vec)


class PageOutTests(ImageTestCase):
    def setUp(self):
        super().setUp()
        self.tmp = tempfile.mkdtemp(prefix="xenclone-store-", dir="/var/tmp")   # a disk, not tmpfs
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.vm, self.region = self.clone()
        self.pager.start()
        run_clone(self.vm, 2, 3)
        lib.lx_fill_dataset(ffi.cast("void *", self.vm.addr), self.vm.npages,
                            WRITTEN[0], len(WRITTEN), 1234, 0)
        self.pager.stop()     # from here on the test serves faults itself
        self.private = [i for i in range(self.vm.npages)
                        if self.region.state[i] == lib.LX_PAGE_PRIVATE]
        self.data = self.gather(self.private)

    def gather(self, pfns):
        buf = ffi.new("char[]", len(pfns) * PAGE)
        lib.lx_gather_pages(self.vm.addr, pfns, len(pfns), buf)
        return [ffi.buffer(buf)[i * PAGE:(i + 1) * PAGE] for i in range(len(pfns))]

    def store(self, path=None):
        """(path, PageOutStore, its page fd) of a page-out store."""
        path = path or os.path.join(self.tmp, "clone.pages")
        store = PageOutStore(path)
        self.addCleanup(store.close)
        return path, store, store.open()[0]

    def test_page_out_and_back_exact(self):
        pfns = self.private
        self.assertGreater(len(pfns), len(WRITTEN))
        before = self.vm.scan()
        slots = [1000 + i for i in range(len(pfns))]
        path, store, fd = self.store()
        self.assertEqual(set(set_state(self.region, pfns, lib.LX_PAGE_HOLD)), {lib.LX_PAGE_PRIVATE})
        crcs = self.vm.page_out(pfns, slots, store, False)
        self.assertEqual(crcs, [zlib.crc32(d) for d in self.data])
        # The index says where each page went, for a daemon that restarts.
        self.assertEqual(read_index(path), dict(zip(pfns, zip(slots, crcs))))
        self.assertEqual(set(self.vm.kinds()[p] for p in pfns), {lib.LX_PAGE_ABSENT})
        after = self.vm.scan()
        self.assertEqual((after["private"], after["absent"]),
                         (before["private"] - len(pfns), before["absent"] + len(pfns)))
        self.assertEqual(resident(path), 0)
        with open(path, "rb") as f:
            stored = [os.pread(f.fileno(), PAGE, s * PAGE) for s in slots]
        self.assertEqual(stored, self.data)
        # The clone touches the pages again: each fault comes as HOLD and is
        # answered from the store.
        del self.pager.records[:]
        readers = [self.vm_reader(p) for p in pfns]
        pending = set(pfns)
        while pending:
            serve_until(self.pager, lambda: self.pager.records)
            for _, kind, pfn in self.pager.records:
                self.assertEqual(kind, lib.LX_HOLD)
                if pfn in pending:
                    i = pfns.index(pfn)
                    data = store.read(slots[i], crcs[i])
                    self.assertEqual(lib.lx_copy_page(self.region, pfn, data), 0)
                    pending.discard(pfn)
            del self.pager.records[:]
        for t in readers:
            t.join(5)
        self.assertEqual(self.gather(pfns), self.data)
        self.assertEqual(self.vm.scan(), before)

    def vm_reader(self, pfn):
        t = threading.Thread(target=self.vm.page_sums, args=(pfn, 1), daemon=True)
        t.start()
        return t

    def test_sync_page_out(self):
        pfns = self.private[:16]
        path, store, fd = self.store()
        set_state(self.region, pfns, lib.LX_PAGE_HOLD)
        self.assertEqual(self.vm.page_out(pfns, range(16), store, True),
                         [zlib.crc32(d) for d in self.data[:16]])
        self.assertEqual(os.path.getsize(path), 16 * PAGE)
        self.assertEqual(resident(path), 0)

    def test_unheld_pages_are_refused(self):
        pfns = self.private[:4]
        path, store, fd = self.store()
        with self.assertRaises(NotHeld) as cm:
            self.vm.page_out(pfns, range(4), store, False)     # writable: could change
        self.assertEqual(cm.exception.pfns, pfns)
        absent = [i for i in range(self.vm.npages) if self.region.state[i] == lib.LX_PAGE_ABSENT][:2]
        set_state(self.region, absent, lib.LX_PAGE_HOLD)
        self.assertRaises(NotHeld, self.vm.page_out, absent, range(2), store, False)
        self.assertEqual(os.path.getsize(path), 0)

    def test_page_out_before_the_write_lands(self):
        """C let a write through (the page is private to the pager) but the
        writer has not run again: the page still holds the image's data.
        Held, it is paged out as that, and the write lands after page-in."""
        pfn = next(i for i in range(self.vm.npages) if self.region.state[i] == lib.LX_PAGE_SHARED)
        image = self.gather([pfn])[0]
        self.assertEqual(lib.lx_resolve(self.region, pfn, 1, lib.LX_UNPROTECT), 0)
        self.assertEqual(set_state(self.region, [pfn], lib.LX_PAGE_HOLD), [lib.LX_PAGE_PRIVATE])
        self.assertEqual(self.vm.kinds(pfn, 1)[0], lib.LX_PAGE_SHARED | lib.LX_KIND_WP)
        path, store, fd = self.store()
        self.assertEqual(self.vm.page_out([pfn], [0], store, False), [zlib.crc32(image)])
        writer = threading.Thread(target=lib.lx_fill_dataset, daemon=True, args=(
            ffi.cast("void *", self.vm.addr), self.vm.npages, pfn, 1, 4321, 0))
        writer.start()
        del self.pager.records[:]
        serve_until(self.pager, lambda: self.pager.records)
        self.assertEqual(self.pager.records, [(0, lib.LX_HOLD, pfn)])
        self.assertEqual(lib.lx_copy_page(self.region, pfn, os.pread(fd, PAGE, 0)), 0)
        writer.join(5)
        self.assertFalse(writer.is_alive())
        self.assertEqual(self.vm.page_sums(pfn, 1), [pattern_sum(pfn, 4321)])
        self.assertEqual(self.vm.kinds(pfn, 1)[0], lib.LX_PAGE_PRIVATE)

    def full_store(self):
        """A store on a 64 KiB tmpfs: room for 16 pages."""
        mnt = tempfile.mkdtemp(prefix="xenclone-full-")
        self.addCleanup(os.rmdir, mnt)
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", mnt]).returncode:
            raise unittest.SkipTest("cannot mount a tmpfs here")
        self.addCleanup(subprocess.run, ["umount", "-l", mnt], check=True)
        return os.path.join(mnt, "clone.pages")

    def test_full_store_drops_nothing(self):
        path, store, fd = self.store(self.full_store())
        pfns = self.private[:32]
        set_state(self.region, pfns, lib.LX_PAGE_HOLD)
        with self.assertRaises(OSError) as cm:
            self.vm.page_out(pfns, range(32), store, True)
        self.assertEqual(cm.exception.errno, 28)    # ENOSPC
        held = lib.LX_PAGE_PRIVATE | lib.LX_KIND_WP
        self.assertEqual(set(self.vm.kinds()[p] for p in pfns), {held})
        self.assertEqual(self.gather(pfns), self.data[:32])
        set_state(self.region, pfns, lib.LX_PAGE_PRIVATE)     # the pager gives up: writable again
        self.assertEqual(set(self.vm.kinds()[p] for p in pfns), {lib.LX_PAGE_PRIVATE})

    # -- the VMM host's ops around MicroVM.page_out

    def host(self):
        host = VmmHost(reactor, GUEST_BIN)
        dom = Domain(5, "c", "clone", self.vm, self.vm.npages)
        host.domains[5] = dom
        self.addCleanup(lambda: dom.store and dom.store.close())
        return host

    def test_op_page_out_validates(self):
        host = self.host()
        good = dict(domid=5, pfns=self.private[:2], slots=[0, 1], sync=False,
                    store=os.path.join(self.tmp, "s"))
        for bad in [dict(pfns=[self.vm.npages]), dict(pfns=[1, 1], slots=[0, 1]),
                    dict(pfns=[True], slots=[0]), dict(pfns=list(range(4097)), slots=list(range(4097))),
                    dict(slots=[0]), dict(slots=[0, 0]), dict(slots=[-1, 0]), dict(slots=[0, 1 << 40]),
                    dict(store="relative/path"), dict(store=None), dict(sync=1)]:
            with self.assertRaises(WireError) as cm:
                host.op_page_out(Message(dict(good, **bad)))
            self.assertEqual(cm.exception.code, "bad-request", bad)
        for bad in [dict(pfns="1"), dict(pfns=[-1])]:
            with self.assertRaises(WireError) as cm:
                host.op_drop_clean(Message(dict(domid=5, **bad)))
            self.assertEqual(cm.exception.code, "bad-request", bad)

    def test_op_page_out_full_disk(self):
        host = self.host()
        pfns = self.private[:32]
        set_state(self.region, pfns, lib.LX_PAGE_HOLD)
        d = host.op_page_out(Message(dict(domid=5, pfns=pfns, slots=list(range(32)),
                                          store=self.full_store(), sync=False)))

        def failed(f):
            f.trap(WireError)
            self.assertEqual(f.value.code, "pageout-full")
            self.assertIn("No space left", f.value.message)
            self.assertEqual(self.gather(pfns), self.data[:32])

        return d.addCallbacks(lambda r: self.fail("page-out succeeded: %r" % (r,)), failed)

    def test_op_page_out_scan_and_drop(self):
        host = self.host()
        pfns = self.private[:8]
        set_state(self.region, pfns, lib.LX_PAGE_HOLD)
        path = os.path.join(self.tmp, "s")
        d = host.op_page_out(Message(dict(domid=5, pfns=pfns, slots=list(range(8)),
                                          store=path, sync=False)))

        def paged_out(reply):
            self.assertEqual(reply["crcs"], [zlib.crc32(x) for x in self.data[:8]])
            self.assertEqual(oct(os.stat(path).st_mode & 0o777), "0o600")
            return host.op_scan(Message(dict(domid=5)))

        def scanned(reply):
            self.assertEqual(reply["counts"], self.vm.scan())
            self.assertEqual(sum(reply["counts"].values()), self.vm.npages)
            clean = [i for i in range(self.vm.npages)
                     if self.region.state[i] == lib.LX_PAGE_SHARED][:4]
            dropped = host.op_drop_clean(Message(dict(domid=5, pfns=clean + pfns[:1])))
            self.assertEqual(dropped, {"dropped": clean})

        return d.addCallback(paged_out).addCallback(scanned)


class PageOutStoreFileTests(unittest.TestCase):
    """The store's own format, with no clone: what both backends write and
    the pager and recovery read."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="xenclone-store-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.store = PageOutStore.of_clone(self.tmp, 7)
        self.addCleanup(self.store.close)
        self.pages = [bytes([i]) * PAGE for i in (1, 2, 3)]
        self.crcs = [zlib.crc32(p) for p in self.pages]
        self.store.write([40, 41, 90], [0, 1, 5], b"".join(self.pages), self.crcs, sync=True)

    def test_written_pages_read_back_checked_and_indexed(self):
        self.assertEqual(self.store.path, os.path.join(self.tmp, "clone-7.pages"))
        self.assertEqual([self.store.read(s, c) for s, c in zip([0, 1, 5], self.crcs)], self.pages)
        self.assertEqual(self.store.index(), {40: (0, self.crcs[0]), 41: (1, self.crcs[1]),
                                              90: (5, self.crcs[2])})

    def test_a_corrupt_or_short_record_is_never_handed_out(self):
        with open(self.store.path, "r+b") as f:
            f.seek(PAGE + 9)
            f.write(b"\xff")
        self.assertIsNone(self.store.read(1, self.crcs[1]))
        self.assertIsNone(self.store.read(9, 0))          # past the end
        self.assertEqual(self.store.read(0, self.crcs[0]), self.pages[0])

    def test_writing_no_pages_makes_no_store(self):
        empty = PageOutStore(os.path.join(self.tmp, "empty.pages"))
        empty.write([], [], b"", [], sync=True)
        self.assertFalse(os.path.exists(empty.path))

    def test_a_newer_record_of_a_page_wins_and_remove_leaves_nothing(self):
        self.store.write([40], [2], self.pages[2], self.crcs[2:], sync=False)
        self.assertEqual(self.store.index()[40], (2, self.crcs[2]))
        self.store.remove()
        self.assertEqual(os.listdir(self.tmp), [])
        self.assertEqual(self.store.index(), {})
