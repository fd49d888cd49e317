"""The memory server hung while clones fetch from it: faults wait (the
clone shows it), a clone that waits too long is paused, and it finishes
with the right answer once pages flow again.  (Killed: the kill-memserver
self-test, tests/test_crash_selftests.py.)"""

import os
import signal

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from tests.test_daemon import PrivateDaemon


class MemoryServerLossTests(PrivateDaemon, unittest.TestCase):
    settings = {"memserver_request_timeout_s": 1, "memserver_timeout_s": 2}

    @defer.inlineCallbacks
    def _image_mostly_uncached(self):
        yield self.s.call("create", config={"name": "m", "memory": 32, "read_percent": 30})
        yield self.s.call("bless", domain="m", name="img")
        # The host keeps a quarter of the image: most faults fetch.
        yield self.s.call("set_host", budget_pages=2048)
        return (yield self.s.call("pids"))["memserver"]

    @defer.inlineCallbacks
    def _states_until(self, domid, wanted, seconds=30):
        seen = []
        for _ in range(int(seconds / 0.05)):
            state = (yield self.s.call("info", domain=domid))["state"]
            if not seen or seen[-1] != state:
                seen.append(state)
            if state == wanted:
                return seen
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.fail("%d never became %s: %s" % (domid, wanted, seen))

    @defer.inlineCallbacks
    def test_hung_server_pauses_the_clone_which_resumes_when_it_answers(self):
        pid = yield self._image_mostly_uncached()
        os.kill(pid, signal.SIGSTOP)
        self.addCleanup(os.kill, pid, signal.SIGCONT)
        [clone] = (yield self.s.call("launch", image="img"))["clones"]
        seen = yield self._states_until(clone["domid"], "paused-by-timeout")
        self.assertIn("waiting-for-memory-server", seen)
        os.kill(pid, signal.SIGCONT)        # it answers: the clone runs on by itself
        seen = yield self._states_until(clone["domid"], "done", seconds=120)
        self.assertEqual(seen[0], "paused-by-timeout")
        info = yield self.s.call("info", domain=clone["domid"])
        self.assertEqual((info["state"], info["result"]), ("done", info["expected"]))
