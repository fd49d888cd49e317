"""A fork clone's toolstack side that needs no Xen: its XenStore home,
written over the real wire protocol to the embedded server, and taken away
again.  Forks on real Xen are tests/test_xen_rig.py (the fork job)."""

from twisted.internet import defer
from twisted.trial import unittest

from xenclone.backends.xen import fork
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
