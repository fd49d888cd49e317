"""The libxenstore client (through the cffi shim) against the embedded
server: libxenstore honours XENSTORED_PATH, so it connects to the server's
socket as it would to xenstored's.  The wire client's tests run here too
(test_xenstore_client's mixins), then what is libxenstore's own: the choice
of client, and a stuck xenstored never holding the reactor."""

import os
import shutil
import tempfile

from twisted.internet import defer, reactor, task
from twisted.internet.protocol import Factory, Protocol
from twisted.trial import unittest

from tests.test_xenstore_client import OperationTests, TransactionTests, WatchTests, until
from xenclone.xenstore import connect
from xenclone.xenstore.client import DEFAULT_SOCKET, Disconnected, XenStoreClient
from xenclone.xenstore.connect import has_libxenstore, xenstore_client
from xenclone.xenstore.libclient import LibXenStoreClient

SKIP = None if has_libxenstore() else "xenclone._xen is not built with libxenstore"


def point_libxenstore_at(case, path):
    """XENSTORED_PATH for the test; libxenstore reads it at each xs_open."""
    old = os.environ.get("XENSTORED_PATH")
    os.environ["XENSTORED_PATH"] = path
    case.addCleanup(lambda: os.environ.update(XENSTORED_PATH=old) if old is not None
                    else os.environ.pop("XENSTORED_PATH", None))


class Lib:
    skip = SKIP

    def client_for(self, path):
        point_libxenstore_at(self, path)
        # A short probe: the tests wait for a dropped connection to be noticed.
        return LibXenStoreClient(reactor, min_delay=0.01, max_delay=0.1, probe_interval=0.05)


class LibOperationTests(Lib, OperationTests, unittest.TestCase):
    pass


class LibTransactionTests(Lib, TransactionTests, unittest.TestCase):
    pass


class LibWatchTests(Lib, WatchTests, unittest.TestCase):
    pass


class ChoiceTests(unittest.TestCase):
    skip = SKIP

    def test_libxenstore_for_the_hosts_xenstored_on_xen(self):
        self.patch(connect, "host_has_xen", lambda: True)
        self.assertIsInstance(xenstore_client(reactor), LibXenStoreClient)
        self.assertIsInstance(xenstore_client(reactor, DEFAULT_SOCKET), LibXenStoreClient)
        other = xenstore_client(reactor, "/run/xenclone/xenstore.sock")
        self.assertIsInstance(other, XenStoreClient)
        self.assertEqual(other.path, "/run/xenclone/xenstore.sock")

    def test_many_writes_go_by_xenstoreds_socket_where_it_has_one(self):
        """libxenstore waits for each answer; the wire client sends all."""
        self.patch(connect, "host_has_xen", lambda: True)
        sock = os.path.join(tempfile.mkdtemp(prefix="xs-"), "socket")
        self.addCleanup(shutil.rmtree, os.path.dirname(sock))
        self.patch(connect, "DEFAULT_SOCKET", sock)
        self.assertIsNone(connect.bulk_client(reactor))            # no socket
        open(sock, "w").close()
        bulk = connect.bulk_client(reactor)
        self.assertIsInstance(bulk, XenStoreClient)
        self.assertEqual(bulk.path, sock)
        self.assertIsNone(connect.bulk_client(reactor, "/run/xenclone/xenstore.sock"))

    def test_wire_client_without_xen(self):
        self.patch(connect, "host_has_xen", lambda: False)
        self.assertIsInstance(xenstore_client(reactor, DEFAULT_SOCKET), XenStoreClient)

    def test_wire_client_without_libxenstore(self):
        self.patch(connect, "host_has_xen", lambda: True)
        self.patch(connect, "has_libxenstore", lambda: False)
        self.assertIsInstance(xenstore_client(reactor), XenStoreClient)


class _Silent(Protocol):
    """A xenstored that takes requests and never answers."""

    def connectionMade(self):
        self.factory.held.append(self.transport)


class StuckTests(unittest.TestCase):
    skip = SKIP

    @defer.inlineCallbacks
    def test_a_stuck_xenstored_never_holds_the_reactor(self):
        tmp = tempfile.mkdtemp(prefix="xss-")   # short: AF_UNIX paths are limited
        self.addCleanup(shutil.rmtree, tmp)
        path = os.path.join(tmp, "socket")
        factory = Factory.forProtocol(_Silent)
        factory.held = []
        port = reactor.listenUNIX(path, factory)
        self.addCleanup(port.stopListening)
        point_libxenstore_at(self, path)
        client = LibXenStoreClient(reactor, probe_interval=60)
        yield client.connect()
        self.addCleanup(client.close)
        pending = client.read("/tool")
        ticks = []
        yield task.deferLater(reactor, 0.2, ticks.append, "reactor ran")
        self.assertEqual((ticks, pending.called), (["reactor ran"], False))
        yield until(lambda: factory.held)
        factory.held[0].loseConnection()        # xenstored goes: the request fails
        try:
            yield pending
        except Disconnected:
            pass
        else:
            self.fail("a request outlived its connection")
        self.assertFalse(client.connected)
