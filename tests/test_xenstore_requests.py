"""XenStore requests against the embedded server in this process: each
runs once however often the watch fires, and answers as the control socket."""

import json

from twisted.internet import defer
from twisted.trial import unittest

from tests.test_xenstore_client import settle, until
from tests.xenstore_helpers import FakeController, embedded_xenstore
from xenclone.wire import WireError
from xenclone.xenstore.requests import (
    CHUNK, REQUESTS, RequestRunner, call, read_chunked, write_chunked)
from xenclone.xenstore.tree import Caller

DOM0 = Caller(0)


class RequestCase(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        yield embedded_xenstore(self)
        self.controller = FakeController()

    @defer.inlineCallbacks
    def runner(self):
        runner = RequestRunner(self.client, self.controller)
        yield runner.start()
        self.addCleanup(runner.stop)
        return runner

    def status(self, rid):
        try:
            return self.store.read(DOM0, "%s/%s/status" % (REQUESTS, rid))
        except Exception:
            return None


class RunnerTests(RequestCase):
    @defer.inlineCallbacks
    def test_runs_once_whatever_the_events(self):
        runner = yield self.runner()
        self.store.write(DOM0, REQUESTS + "/a", b'{"op": "echo", "x": 1}')
        yield until(lambda: self.status("a") == b"ok")
        for _ in range(5):
            runner.scan()                   # spurious events
        runner.forget()                     # and a reconnect
        self.store.write(DOM0, REQUESTS + "/a/status", b"ok")      # our own write fires too
        yield settle()
        self.assertEqual(self.controller.calls, ["echo"])
        result = json.loads(self.store.read(DOM0, REQUESTS + "/a/result"))
        self.assertEqual(result, {"op": "echo", "x": 1, "echoed": True})

    @defer.inlineCallbacks
    def test_waits_for_a_value_and_fails_interrupted_ones(self):
        self.store.mkdir(DOM0, REQUESTS + "/empty")
        self.store.write(DOM0, REQUESTS + "/cut", b'{"op": "echo"}')
        self.store.write(DOM0, REQUESTS + "/cut/status", b"running")    # a daemon died here
        yield self.runner()
        yield until(lambda: self.status("cut") == b"error")
        error = json.loads(self.store.read(DOM0, REQUESTS + "/cut/error"))
        self.assertEqual(error["code"], "interrupted")
        self.assertIsNone(self.status("empty"))
        self.store.write(DOM0, REQUESTS + "/empty", b'{"op": "echo"}')
        yield until(lambda: self.status("empty") == b"ok")
        self.assertEqual(self.controller.calls, ["echo"])

    @defer.inlineCallbacks
    def test_only_dom0_may_ask(self):
        yield self.runner()
        self.assertEqual(self.store.get_perms(DOM0, REQUESTS), ["n0"])


class CallTests(RequestCase):
    @defer.inlineCallbacks
    def test_call_round_trip_and_errors(self):
        yield self.runner()
        self.assertEqual((yield call(self.client, "echo", {"y": [1, 2]}, "c1")),
                         {"op": "echo", "y": [1, 2], "echoed": True})
        with self.assertRaises(WireError) as cm:
            yield call(self.client, "info", {"domain": "ghost"}, "c2")
        self.assertEqual((cm.exception.code, cm.exception.message),
                         ("no-domain", "unknown domain 'ghost'"))
        with self.assertRaises(WireError) as cm:
            yield call(self.client, "nope", {}, "c3")
        self.assertEqual(cm.exception.code, "unknown-op")
        self.assertEqual(self.store.directory(DOM0, REQUESTS), [])

    @defer.inlineCallbacks
    def test_no_daemon_no_wait(self):
        with self.assertRaises(WireError) as cm:
            yield call(self.client, "list", {}, "nobody", claim_timeout=0.2)
        self.assertEqual(cm.exception.code, "no-daemon")
        self.assertEqual(self.store.directory(DOM0, REQUESTS), [])

    @defer.inlineCallbacks
    def test_large_values_are_split(self):
        data = json.dumps(list(range(5000))).encode()
        yield self.client.transaction(lambda tx: write_chunked(tx, "/big", data))
        self.assertEqual(self.store.read(DOM0, "/big"), b"parts:%d" % -(-len(data) // CHUNK))
        self.assertEqual((yield read_chunked(self.client, "/big")), data)
