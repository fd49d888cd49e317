"""The Twisted XenStore clients against the embedded server.

The tests are mixins over ``client_for(path)``: this module runs them with
the wire-protocol client, test_xenstore_libclient with the libxenstore one,
so the two cannot drift."""

import os
import shutil
import tempfile

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from xenclone.xenstore.client import Disconnected, XenStoreClient
from xenclone.xenstore.server import XenStoreServer
from xenclone.xenstore.tree import Caller
from xenclone.xenstore.wire import XenStoreError

DOM0 = Caller(0)


class Events:
    """A watch callback that can be waited on."""

    def __init__(self):
        self.seen = []
        self._waiters = []

    def __call__(self, path, token):
        self.seen.append((path, token))
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    @defer.inlineCallbacks
    def until(self, count):
        while len(self.seen) < count:
            d = defer.Deferred()
            self._waiters.append(d)
            yield d.addTimeout(5, reactor)
        return self.seen


@defer.inlineCallbacks
def until(condition):
    for _ in range(500):
        if condition():
            return
        yield task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("condition never held")


def settle():
    """Let in-flight messages arrive (used only to show nothing more came)."""
    return task.deferLater(reactor, 0.1, lambda: None)


class ClientCase:
    """A server and ``self.client``, made by ``client_for(path)``."""

    def client_for(self, path):
        raise NotImplementedError

    @defer.inlineCallbacks
    def setUp(self):
        tmp = tempfile.mkdtemp(prefix="xsc-")
        self.addCleanup(shutil.rmtree, tmp)
        self.path = os.path.join(tmp, "socket")
        self.domains = os.path.join(tmp, "domains")
        self.server = self.start_server()
        self.store = self.server.store
        self.client = yield self.connect(self.path)

    @defer.inlineCallbacks
    def connect(self, path):
        client = self.client_for(path)
        yield client.connect()
        self.addCleanup(client.close)
        return client

    def start_server(self, store=None):
        server = XenStoreServer(reactor, self.path, store, domain_dir=self.domains)
        server.listen()
        self.addCleanup(server.stop)
        return server

    @defer.inlineCallbacks
    def fails(self, code, d):
        try:
            yield d
        except XenStoreError as e:
            self.assertEqual(e.code, code)
        else:
            self.fail("expected %s" % code)


class OperationTests(ClientCase):
    @defer.inlineCallbacks
    def test_data_operations(self):
        c = self.client
        yield c.write("/a/b", b"v\0binary")
        yield c.write("/a/s", "text")
        self.assertEqual((yield c.read("/a/b")), b"v\0binary")
        self.assertEqual(self.store.read(DOM0, "/a/s"), b"text")
        yield c.mkdir("/a/d")
        self.assertEqual((yield c.directory("/a")), ["b", "s", "d"])
        yield c.set_perms("/a/d", ["n5", "r6"])
        self.assertEqual((yield c.get_perms("/a/d")), ["n5", "r6"])
        yield c.rm("/a/b")
        yield self.fails("ENOENT", c.read("/a/b"))
        yield self.fails("EINVAL", c.write("/bad path", b""))
        self.assertEqual((yield c.directory("/a")), ["s", "d"])

    @defer.inlineCallbacks
    def test_permissions(self):
        c = self.client
        yield c.write("/p", b"secret")
        yield c.set_perms("/p", ["n0", "r5", "w6", "b7"])
        self.assertEqual((yield c.get_perms("/p")), ["n0", "r5", "w6", "b7"])
        yield c.introduce(5, 0, 0)                  # opens <domains>/5: connections are dom5
        guest = yield self.connect(os.path.join(self.domains, "5"))
        self.assertEqual((yield guest.read("/p")), b"secret")
        yield self.fails("EACCES", guest.write("/p", b"mine"))
        yield c.set_perms("/p", ["n0"])
        yield self.fails("EACCES", guest.read("/p"))
        yield self.fails("ENOENT", c.get_perms("/nowhere"))

    @defer.inlineCallbacks
    def test_write_nodes_in_order_with_their_permissions(self):
        c = self.client
        yield c.write_nodes([("/h", "", ["n0", "r5"]), ("/h/name", "web.3", None),
                             ("/h/data", b"", ["n5"])])
        self.assertEqual((yield c.read("/h/name")), b"web.3")
        self.assertEqual((yield c.get_perms("/h/name")), ["n0", "r5"])    # the parent's
        self.assertEqual((yield c.get_perms("/h/data")), ["n5"])
        yield self.fails("EINVAL", c.write_nodes([("/h/ok", "1", None), ("/bad path", "", None),
                                                  ("/h/after", "2", None)]))
        self.assertEqual((yield c.read("/h/ok")), b"1")

    @defer.inlineCallbacks
    def test_long_directory(self):
        names = ["entry-%05d" % i for i in range(500)]
        for name in names:
            self.store.write(DOM0, "/long/" + name, b"")
        self.assertEqual((yield self.client.directory("/long")), names)

    @defer.inlineCallbacks
    def test_domain_operations(self):
        c = self.client
        self.assertEqual((yield c.get_domain_path(4)), "/local/domain/4")
        self.assertFalse((yield c.is_domain_introduced(4)))
        yield c.introduce(4, 1234, 5)
        self.assertTrue((yield c.is_domain_introduced(4)))
        yield c.set_target(4, 0)
        yield c.resume(4)
        yield c.release(4)
        yield self.fails("ENOENT", c.release(4))
        yield self.fails("ENOENT", c.resume(4))

    @defer.inlineCallbacks
    def test_oversized_request_fails_locally(self):
        yield self.fails("E2BIG", self.client.write("/big", b"x" * 4096))
        self.assertEqual((yield self.client.read("/tool")), b"")


class TransactionTests(ClientCase):
    @defer.inlineCallbacks
    def test_retry_on_a_real_conflict(self):
        yield self.client.write("/counter", b"0")
        attempts = []

        @defer.inlineCallbacks
        def increment(tx):
            value = int((yield tx.read("/counter")))
            attempts.append(value)
            if len(attempts) == 1:
                yield self.client.write("/counter", b"10")     # a rival commits first
            yield tx.write("/counter", str(value + 1))
            return value + 1

        result = yield self.client.transaction(increment)
        self.assertEqual((result, attempts), (11, [0, 10]))
        self.assertEqual(self.store.read(DOM0, "/counter"), b"11")

    @defer.inlineCallbacks
    def test_failure_aborts(self):
        def broken(tx):
            return tx.write("/half", b"").addCallback(lambda _: 1 / 0)
        try:
            yield self.client.transaction(broken)
        except ZeroDivisionError:
            pass
        else:
            self.fail("the error did not propagate")
        yield self.fails("ENOENT", self.client.read("/half"))
        self.assertEqual(self.store._txs, {})

    @defer.inlineCallbacks
    def test_watch_fires_on_commit(self):
        events = Events()
        yield self.client.watch("/tx", "t", events)
        yield events.until(1)

        @defer.inlineCallbacks
        def two_writes(tx):
            yield tx.write("/tx/a", b"1")
            yield tx.write("/tx/b", b"2")
            self.assertEqual(events.seen, [("/tx", "t")])
        yield self.client.transaction(two_writes)
        self.assertEqual((yield events.until(3))[1:], [("/tx/a", "t"), ("/tx/b", "t")])


class WatchTests(ClientCase):
    @defer.inlineCallbacks
    def test_watch_and_unwatch(self):
        events = Events()
        yield self.client.watch("/w", "tok", events)
        yield events.until(1)
        self.store.write(DOM0, "/w/x", b"")
        self.store.write(DOM0, "/elsewhere", b"")
        self.assertEqual((yield events.until(2)), [("/w", "tok"), ("/w/x", "tok")])
        yield self.fails("EEXIST", self.client.watch("/w", "tok", events))
        yield self.client.unwatch("/w", "tok")
        self.store.write(DOM0, "/w/y", b"")
        yield settle()
        self.assertEqual(len(events.seen), 2)

    @defer.inlineCallbacks
    def test_special_watch(self):
        events = Events()
        yield self.client.watch("@introduceDomain", "i", events)
        yield self.client.introduce(9, 0, 0)
        self.assertEqual((yield events.until(2)), [("@introduceDomain", "i")] * 2)

    @defer.inlineCallbacks
    def test_reconnect_after_restart(self):
        events = Events()
        yield self.client.watch("/r", "tok", events)
        yield events.until(1)
        yield self.client.write("/r/before", b"1")
        yield events.until(2)

        store = self.server.store
        yield self.server.stop()                      # xenstored goes away
        yield until(lambda: not self.client.connected)
        queued = self.client.read("/r/before")        # waits for the new server
        yield task.deferLater(reactor, 0.2, lambda: None)
        self.server = self.start_server(store)        # and comes back
        self.assertEqual((yield queued), b"1")

        # Re-registered, and so fired exactly once more.
        yield events.until(3)
        yield settle()
        self.assertEqual(events.seen[2:], [("/r", "tok")])
        self.store.write(DOM0, "/r/after", b"")
        self.assertEqual((yield events.until(4))[3], ("/r/after", "tok"))

    @defer.inlineCallbacks
    def test_close_fails_waiting_requests(self):
        yield self.server.stop()
        yield until(lambda: not self.client.connected)
        queued = self.client.read("/tool")
        yield self.client.close()
        try:
            yield queued
        except Disconnected:
            pass
        else:
            self.fail("a queued request outlived close()")


class Wire:
    def client_for(self, path):
        return XenStoreClient(reactor, path, min_delay=0.01, max_delay=0.1)


class WireOperationTests(Wire, OperationTests, unittest.TestCase):
    pass


class WireTransactionTests(Wire, TransactionTests, unittest.TestCase):
    pass


class WireWatchTests(Wire, WatchTests, unittest.TestCase):
    pass
