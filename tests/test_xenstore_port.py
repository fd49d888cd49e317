"""A micro-VM's XenStore channel (the VMM's port relay) against the
embedded server in this process: the socket INTRODUCE opens for a domain
is that domain, with its permissions, and RELEASE closes it."""

import os

from twisted.internet import defer, threads
from twisted.trial import unittest

from tests.guest_channel import GuestXenStore
from xenclone.backends.kvm.xenstore_port import NO_CHANNEL, PORT_XS_DATA, PORT_XS_STATUS
from tests.xenstore_helpers import embedded_xenstore
from xenclone.xenstore.tree import Caller

DOM0 = Caller(0)


class PortTests(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        yield embedded_xenstore(self, domain_dir=True)
        store = self.store
        for domid in (5, 6):
            store.mkdir(DOM0, "/local/domain/%d" % domid)
            store.set_perms(DOM0, "/local/domain/%d" % domid, ["n0", "r%d" % domid])
            store.write(DOM0, "/local/domain/%d/name" % domid, b"dom%d" % domid)   # inherits

    def guest(self, domid):
        g = GuestXenStore(self.domains, domid, timeout=5)
        self.addCleanup(g.close)
        return g

    @defer.inlineCallbacks
    def test_introduce_opens_the_domains_channel_and_release_closes_it(self):
        g = self.guest(5)
        self.assertEqual((yield threads.deferToThread(g.port.io_in, PORT_XS_STATUS)), NO_CHANNEL)
        yield self.client.introduce(5, 0, 0)
        self.assertEqual(os.stat(os.path.join(self.domains, "5")).st_mode & 0o777, 0o600)

        def session():
            return (g.read("name"), g.read("/local/domain/5/name"),
                    g.error(g.read, "/local/domain/6/name"),
                    g.error(g.write, "name", b"renamed"), g.error(g.read, "/tool"))

        self.assertEqual((yield threads.deferToThread(session)),
                         (b"dom5", b"dom5", "EACCES", "EACCES", "EACCES"))
        yield self.client.release(5)
        self.assertFalse(os.path.exists(os.path.join(self.domains, "5")))
        self.assertEqual((yield threads.deferToThread(g.error, g.read, "name")), "ENOTCONN")

    @defer.inlineCallbacks
    def test_no_reply_without_a_request(self):
        yield self.client.introduce(6, 0, 0)
        g = self.guest(6)

        def idle():
            return g.port.io_in(PORT_XS_DATA), g.port.io_in(PORT_XS_STATUS)

        self.assertEqual((yield threads.deferToThread(idle)), (0, 0))
