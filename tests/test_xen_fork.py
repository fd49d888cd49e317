"""A fork clone's toolstack side that needs no Xen: its XenStore home,
written over the real wire protocol to the embedded server, and taken away
again.  Forks on real Xen are tests/test_xen_rig.py (the fork job)."""

import contextlib
import os
import types

from twisted.internet import defer
from twisted.trial import unittest

from xenclone.backends.xen import clone_identity, fork
from xenclone.backends.xen.filled import ForkRegion
from xenclone.backends.xen.fork_clones import ForkClones
from xenclone.interfaces import PAGE_SIZE, PageState
from xenclone.xenstore.tree import Caller

from tests.xenstore_helpers import embedded_xenstore

DOMID, NAME, KIB = 12, "web.3", 131072
STORE, CONSOLE = (0xFEFFC, 1), (0xFEFFF, 2)


class ForkHomeTests(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        yield embedded_xenstore(self)
        self.guest = Caller(DOMID)

    def write(self, vcpus=2):
        return fork.write_home(self.client, DOMID, NAME, KIB, vcpus, STORE, CONSOLE,
                               fork.clone_id_nodes(DOMID, 3))

    def read(self, caller, leaf):
        return self.store.read(caller, "/local/domain/%d/%s" % (DOMID, leaf))

    @defer.inlineCallbacks
    def test_home_as_libxl_writes_it_then_introduced(self):
        yield self.write()
        dom0 = Caller(0)
        for leaf, value in (("name", NAME), ("domid", str(DOMID)),
                            ("memory/target", str(KIB)), ("store/port", "1"),
                            ("store/ring-ref", str(0xFEFFC)), ("console/port", "2"),
                            ("console/ring-ref", str(0xFEFFF)),
                            ("console/type", "xenconsoled"),
                            ("cpu/1/availability", "online"), ("xenclone/clone-id", "3")):
            self.assertEqual(self.read(dom0, leaf), value.encode(), leaf)
        self.assertTrue((yield self.client.is_domain_introduced(DOMID)))

    @defer.inlineCallbacks
    def test_the_guest_reads_its_home_and_writes_only_its_own_nodes(self):
        yield self.write()
        self.assertEqual(self.read(self.guest, "xenclone/clone-id"), b"3")
        self.assertEqual(self.read(self.guest, "console/port"), b"2")
        home = "/local/domain/%d" % DOMID
        self.store.write(self.guest, home + "/control/shutdown", b"")
        self.store.write(self.guest, home + "/data/ip", b"10.0.0.3")
        for leaf in ("name", "xenclone/clone-id", "store/port", "memory/target"):
            e = self.assertRaises(Exception, self.store.write, self.guest,
                                  home + "/" + leaf, b"x")
            self.assertEqual(getattr(e, "code", None), "EACCES", leaf)
        other = Caller(DOMID + 1)
        self.assertRaises(Exception, self.store.read, other, home + "/name")

    @defer.inlineCallbacks
    def test_every_node_has_its_permissions_with_few_requests(self):
        """Nodes that share their parent's permissions inherit them, as
        xenstored gives them: only the others cost a request."""
        asked = []
        set_perms = self.client.set_perms
        self.client.set_perms = lambda path, perms: (asked.append(path),
                                                     set_perms(path, perms))[1]
        extra = clone_identity.identity_nodes(DOMID) + fork.clone_id_nodes(DOMID, 3)
        yield fork.write_home(self.client, DOMID, NAME, KIB, 2, STORE, CONSOLE, extra)
        nodes = fork.home_nodes(DOMID, NAME, KIB, 2, STORE, CONSOLE) + extra
        for path, _, perms in nodes:
            self.assertEqual(self.store.get_perms(Caller(0), path), perms, path)
        self.assertLess(len(asked), len(nodes) // 2)

    @defer.inlineCallbacks
    def test_unwire_leaves_nothing_and_tolerates_a_domain_already_gone(self):
        yield self.write(vcpus=1)
        yield fork.unwire(self.client, None, DOMID)
        self.assertFalse((yield self.client.is_domain_introduced(DOMID)))
        self.assertNotIn(str(DOMID).encode(), [
            n.encode() if isinstance(n, str) else n
            for n in (yield self.client.directory("/local/domain"))])
        yield fork.unwire(self.client, None, DOMID)     # again: nothing to do, no error

    def test_names(self):
        self.assertEqual(fork.image_domain_name("web"), "xenclone-image-web")
        self.assertEqual(fork.memory_kib(32768), 131072)


class _Maps:
    """A foreign-memory stand-in that records how pages were mapped."""

    def __init__(self):
        self.calls = []

    def map(self, domid, pfns, writable=True):
        self.calls.append((domid, list(pfns), writable))
        return contextlib.nullcontext()


class ForkRegionTests(unittest.TestCase):
    def test_loads_touch_pages_read_only_so_they_stay_shared(self):
        """A hoard's loads make Xen fill a fork's pages from the image
        domain: mapped read-only, never written (which would unshare)."""
        maps = _Maps()
        region = ForkRegion(DOMID, 8, image=None, fmem=maps)
        self.assertEqual(region.fill_mode, "fork")
        self.assertEqual(region.prefilled, [])
        self.assertTrue(region.load_shared(3))
        region.load_zero(4)
        self.assertEqual(maps.calls, [(DOMID, [3], False), (DOMID, [4], False)])
        self.assertEqual(list(region.states())[3:5], [PageState.SHARED, PageState.ZERO])


class _Mapping:
    def __init__(self, npages):
        self.buffer = bytearray(npages * PAGE_SIZE)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _WritableMaps:
    """Records each writable map and what was written through it."""

    def __init__(self):
        self.written = {}

    def map(self, domid, pfns, writable=True):
        assert writable
        m = _Mapping(len(pfns))
        m.pfns = list(pfns)
        self.written[tuple(pfns)] = m
        return m


def _image(pages):
    fd = os.memfd_create("img")
    os.write(fd, b"".join(pages))
    return types.SimpleNamespace(npages=len(pages), mem_fd=fd, pages=None)


class DerivedImageTests(unittest.TestCase):
    def test_only_the_pages_that_differ_are_mapped_and_written(self):
        """A clone's image forked from its parent's domain: a page mapped
        writable is unshared, so unchanged pages are never mapped."""
        pages = [bytes([i % 251]) * PAGE_SIZE for i in range(3000)]
        new = list(pages)
        for pfn in (5, 6, 7, 1500, 2999):
            new[pfn] = b"w" * PAGE_SIZE
        parent, image = _image(pages), _image(new)
        self.addCleanup(os.close, parent.mem_fd)
        self.addCleanup(os.close, image.mem_fd)
        clones = ForkClones()
        clones.fm = _WritableMaps()
        self.assertEqual(clones._copy_changed(DOMID, image, parent), 5)
        self.assertEqual(sorted(clones.fm.written), [(5, 6, 7), (1500,), (2999,)])
        for pfns, m in clones.fm.written.items():
            self.assertEqual(bytes(m.buffer), b"w" * PAGE_SIZE * len(pfns))
