"""The memory-server domain's bookkeeping (plain Python): which frames hold
which image, frames tied to refs, grant frames from the domain's size; and
the image store over it, with a stand-in for the domain's grant maps.
Real grants on real Xen: rig/jobs/grant.py and memserver.py, in
tests/test_xen_rig.py."""

import os

from twisted.trial import unittest
from zope.interface.verify import verifyObject

from xenclone.backends.xen import server_domain as sd
from xenclone.backends.xen.grant_cache import BATCH, GrantCache
from xenclone.backends.xen.server_domain_store import DomainImageStore
from xenclone.image import Capture, OpenImage
from xenclone.interfaces import PAGE_SIZE, IImageStore
from xenclone.memserver.store import ImageStore
from xenclone.wire import WireError


class SlotsTests(unittest.TestCase):
    def test_first_fit_reuses_freed_runs_and_refuses_what_does_not_fit(self):
        slots = sd.Slots(100)
        a, b, c = slots.take(30), slots.take(30), slots.take(30)
        self.assertEqual([r.first for r in (a, b, c)], [0, 30, 60])
        self.assertIsNone(slots.take(11))
        slots.give_back(b)
        self.assertEqual(slots.take(20), sd.Run(30, 20))
        self.assertEqual(slots.take(10), sd.Run(50, 10))
        self.assertEqual(slots.take(10), sd.Run(90, 10))
        self.assertEqual(slots.free(), 0)

    def test_runs_kept_across_a_restart_are_not_handed_out(self):
        slots = sd.Slots(10)
        slots.keep(sd.Run(2, 5))
        self.assertEqual(slots.take(2), sd.Run(0, 2))
        self.assertEqual(slots.take(3), sd.Run(7, 3))
        self.assertIsNone(slots.take(1))


class GrantLayoutTests(unittest.TestCase):
    def test_frames_and_refs_are_tied(self):
        run = sd.Run(5, 3)
        self.assertEqual(list(run.gfns), [sd.FIRST_GFN + 5 + i for i in range(3)])
        self.assertEqual(list(run.refs), [sd.FIRST_REF + 5 + i for i in range(3)])
        self.assertEqual(run.xenstore(), "%d 3" % (sd.FIRST_REF + 5))

    def test_grant_frames_cover_every_usable_frame(self):
        # 96 MiB: 24576 frames, 23552 usable, refs up to 64 + 23552 -> 47 frames.
        self.assertEqual(sd.usable_pages(96), 23552)
        self.assertEqual(sd.grant_frames(96), 47)
        self.assertGreater(sd.grant_frames(512), sd.DEFAULT_GNTTAB_MAX_FRAMES)
        settings = sd.xl_settings("ms", "/k", 96)
        self.assertEqual((settings["max_grant_frames"], settings["memory"]), (47, 96))


class _Mapped:
    """A fake grant map: a window on the fake domain's frames."""

    def __init__(self, domain, first, count):
        self.domain, self.first, self.pages = domain, first, count
        domain.mapped += count

    @property
    def buffer(self):
        return memoryview(self.domain.frames)[self.first * PAGE_SIZE:
                                              (self.first + self.pages) * PAGE_SIZE]

    def close(self):
        self.domain.mapped -= self.pages

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class FakeServerDomain:
    """ServerDomain's calls over a bytearray; its frames start as junk, as
    a real domain's may."""

    def __init__(self, domid, pages):
        self.domid = domid
        self.slots = sd.Slots(pages)
        self.frames = bytearray(b"\xa5") * (pages * PAGE_SIZE)
        self.granted = set()
        self.mapped = self.maps = 0

    def grant(self, run):
        self.granted.update(run.refs)

    def revoke(self, run):
        self.granted.difference_update(run.refs)
        return self.mapped

    def map(self, run, first=0, count=None, writable=False):
        count = run.count - first if count is None else count
        assert set(range(run.refs.start + first, run.refs.start + first + count)) <= self.granted
        self.maps += 1
        return _Mapped(self, run.first + first, count)

    def close(self):
        pass


def _capture(pages, zero=()):
    """A Capture by domid, read through a reader over ``pages`` of bytes."""
    data = bytearray()
    for p in range(pages):
        data += bytes(PAGE_SIZE) if p in zero else bytes([p % 250 + 1]) * PAGE_SIZE
    return Capture(arch="xen-pvh-x86", vcpu_state=b"ctx", mem_fd=None, npages=pages,
                   domid=7), bytes(data)


class DomainImageStoreTests(unittest.TestCase):
    def setUp(self):
        self.dir = self.mktemp()
        self.published = []
        self.server = FakeServerDomain(3, 40)
        self.store = self._store(self.server)

    def _store(self, server):
        store = DomainImageStore(self.dir, self._reader, server,
                                 publish=lambda *a: self.published.append(a))
        self.addCleanup(store.close)
        return store

    def _reader(self, domid):
        self.assertEqual(domid, 7)
        return lambda pfn, n: self.ram[pfn * PAGE_SIZE:(pfn + n) * PAGE_SIZE]

    def _bless(self, name, pages, zero=()):
        capture, self.ram = _capture(pages, zero)
        return self.store.put(name, capture), self.ram

    def test_both_stores_are_image_stores(self):
        plain = ImageStore(self.mktemp())
        self.addCleanup(plain.close)
        for store in (plain, self.store):
            self.assertTrue(verifyObject(IImageStore, store))

    def test_an_image_lives_in_the_server_domain_not_in_dom0(self):
        info, ram = self._bless("img", 10, zero={2, 3})
        where = info["server_domain"]
        self.assertEqual((where["domid"], where["first_ref"], where["count"]),
                         (3, sd.FIRST_REF, 10))
        self.assertEqual(self.published, [(3, "img", "%d 10" % sd.FIRST_REF)])
        self.assertEqual(os.fstat(self.store.memfd("img")).st_blocks, 0)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "img", "memory")))
        self.assertEqual(self.server.frames[:PAGE_SIZE], ram[:PAGE_SIZE])
        self.assertEqual(self.store.zero_map("img"), bytes([0, 0, 1, 1] + [0] * 6))
        self.assertEqual((self.server.maps, self.server.mapped), (1, 0))   # one chunk

    def test_fetch_reads_the_server_and_zero_pages_read_as_zero(self):
        _, ram = self._bless("img", 10, zero={2, 3})
        self.assertEqual(self.server.frames[2 * PAGE_SIZE], 0xa5)    # never written
        self.assertEqual(self.store.fetch("img", 1, 4), ram[PAGE_SIZE:5 * PAGE_SIZE])
        with self.assertRaises(WireError) as e:
            self.store.fetch("img", 8, 3)
        self.assertEqual(e.exception.code, "out-of-range")

    def test_discard_ends_the_grants_and_frees_the_frames(self):
        self._bless("img", 30)
        self.store.discard("img")
        self.assertEqual(self.server.granted, set())
        self.assertEqual(self.server.slots.free(), 40)
        self.assertEqual(self.published[-1], (3, "img", None))
        self._bless("img", 30)      # the name and the frames are free again

    def test_a_full_server_domain_says_so_and_keeps_what_it_has(self):
        self._bless("a", 30)
        with self.assertRaises(WireError) as e:
            self._bless("b", 20)
        self.assertEqual(e.exception.code, "server-full")
        self.assertIn("memserver_domain_mib", str(e.exception))
        self.assertEqual(self.store.images()[0]["image_id"], "a")
        self.assertEqual(self.server.slots.free(), 10)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "b")))

    def test_without_a_server_domain_blesses_are_refused(self):
        self.store.server = None
        with self.assertRaises(WireError) as e:
            self._bless("a", 3)
        self.assertEqual(e.exception.code, "no-server-domain")

    def test_a_restart_keeps_images_while_the_domain_lives(self):
        _, ram = self._bless("img", 10)
        again = self._store(self.server)
        self.server.slots = sd.Slots(40)         # a new memory server knows nothing yet
        self.assertEqual(again.load_all(), [])
        self.assertEqual(again.fetch("img", 0, 10), ram)
        self.assertEqual(self.server.slots.take(31), None)      # its run is kept

    def test_images_of_a_gone_domain_are_dropped_with_the_reason(self):
        self._bless("img", 10)
        again = self._store(FakeServerDomain(9, 40))
        [(name, why)] = again.load_all()
        self.assertEqual(name, "img")
        self.assertIn("memory-server domain 3, which is gone", why)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "img")))

    def test_a_plain_store_names_why_it_cannot_load_a_domain_image(self):
        self._bless("img", 10)
        [(_, why)] = ImageStore(self.dir).load_all()
        self.assertIn("memserver_domain_mib", why)

    def test_a_bless_by_domid_needs_xen(self):
        capture, self.ram = _capture(2)
        with self.assertRaises(WireError) as e:
            ImageStore(self.mktemp()).put("x", capture)
        self.assertEqual(e.exception.code, "no-xen")


class FakeGntTab:
    """Grant maps of one domain whose ref r holds bytes([r % 256]) pages."""

    def __init__(self):
        self.live = 0
        self.calls = []

    def map(self, domid, refs, writable=True):
        refs = list(refs)
        self.calls.append((domid, refs[0], len(refs), writable))
        tab = self

        class M:
            pages = len(refs)
            buffer = b"".join(bytes([r % 256]) * PAGE_SIZE for r in refs)

            def close(self):
                tab.live -= 1

        self.live += 1
        return M()


class GrantCacheTests(unittest.TestCase):
    def _image(self, npages, zero=()):
        z = bytearray(npages)
        for p in zero:
            z[p] = 1
        return OpenImage("img", "g1", "xen-pvh-x86", b"", npages, -1, bytes(z),
                         server_domain={"domid": 5, "first_ref": 100, "count": npages})

    def test_reads_cross_batches_and_zero_pages_read_as_zero(self):
        gt = FakeGntTab()
        image = GrantCache(gt).pages(self._image(3 * BATCH, zero={7}))
        data = image.pages.read(BATCH - 1, 2)
        self.assertEqual(data, bytes([(100 + BATCH - 1) % 256]) * PAGE_SIZE
                         + bytes([(100 + BATCH) % 256]) * PAGE_SIZE)
        self.assertEqual(image.read_page(7), bytes(PAGE_SIZE))
        self.assertTrue(image.has_page(7))
        self.assertEqual([c[1:] for c in gt.calls], [(100, BATCH, False),
                                                     (100 + BATCH, BATCH, False)])

    def test_batches_are_kept_up_to_the_limit_oldest_out(self):
        gt = FakeGntTab()
        cache = GrantCache(gt, limit=2 * BATCH)
        image = cache.pages(self._image(4 * BATCH))
        for batch in (0, 1, 0, 2):      # 0 used again: 1 is the oldest
            image.read_page(batch * BATCH)
        self.assertEqual(len(gt.calls), 3)
        self.assertEqual((gt.live, cache.stats()["unmaps"]), (2, 1))
        image.read_page(0)
        self.assertEqual(len(gt.calls), 3)      # still mapped
        cache.forget(image)
        self.assertEqual(gt.live, 0)

    def test_a_short_last_batch_maps_only_the_image(self):
        gt = FakeGntTab()
        GrantCache(gt).pages(self._image(BATCH + 3)).read_page(BATCH + 2)
        self.assertEqual(gt.calls, [(5, 100 + BATCH, 3, False)])
