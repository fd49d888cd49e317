"""The ledger's acceptance scenarios (sharing, limit, page-out, budget) on
the real KVM backend: the same code as ``xenclone selftest``, whose every
memory figure comes from the kernel."""

from twisted.internet import defer
from twisted.trial import unittest

from xenclone.selftests import memory_scenarios

from tests.test_daemon import PrivateDaemon


class MemorySelftests(PrivateDaemon, unittest.TestCase):
    @defer.inlineCallbacks
    def _scenario(self, name):
        checks, figures = yield memory_scenarios.SCENARIOS[name](self.s)
        failed = [k for k, ok in checks.items() if not ok]
        self.assertEqual(failed, [], figures)

    def test_sharing(self):
        return self._scenario("sharing")

    def test_limit(self):
        return self._scenario("limit")

    def test_pageout(self):
        return self._scenario("pageout")

    def test_budget(self):
        return self._scenario("budget")

    def test_load(self):
        return self._scenario("load")
