"""The crash self-tests (``xenclone selftest kill-daemon kill-memserver
cut-memserver page-out-full``), each on real ``twistd -n xenclone``
daemons of its own, with their VMM host and memory server processes.
Every one ends by checking every data page of every clone: 0 lost."""

import os
import shutil
import types

from twisted.internet import defer, reactor
from twisted.trial import unittest

from xenclone.selftests import crash_scenarios

from tests.test_daemon import _need_kvm


class CrashSelftests(unittest.TestCase):
    timeout = 900

    def setUp(self):
        _need_kvm()
        if os.geteuid() != 0:
            raise unittest.SkipTest("kills, namespaces and mounts need root")

    @defer.inlineCallbacks
    def _scenario(self, name):
        checks, figures = yield crash_scenarios.SCENARIOS[name](types.SimpleNamespace(
            reactor=reactor))
        failed = [k for k, ok in checks.items() if not ok]
        self.assertEqual(failed, [], figures)
        self.assertGreater(figures["pages_verified"], 0)

    def test_kill_daemon(self):
        return self._scenario("kill-daemon")

    def test_kill_memserver(self):
        return self._scenario("kill-memserver")

    def test_cut_memserver(self):
        if shutil.which("ip") is None:
            raise unittest.SkipTest("the ip command (Debian package iproute2) is missing")
        return self._scenario("cut-memserver")

    def test_page_out_full(self):
        return self._scenario("page-out-full")


class HostilePeerSelftest(unittest.TestCase):
    """``xenclone selftest hostile-peer``: a lying remote memory server, 64
    strangers, a second daemon on the same state, a restart after set."""

    timeout = 600

    def setUp(self):
        _need_kvm()
        if os.geteuid() != 0:
            raise unittest.SkipTest("the scratch daemon's helpers need root")

    @defer.inlineCallbacks
    def test_hostile_peer(self):
        from xenclone.selftests.hostile_scenario import scenario_hostile_peer
        checks, figures = yield scenario_hostile_peer(types.SimpleNamespace(reactor=reactor))
        self.assertEqual([k for k, ok in checks.items() if not ok], [], figures)
        self.assertEqual((figures["outside_writes"], figures["corrupt_pages_served"],
                          figures["settings_kept"], figures["second_daemon_refused"]),
                         (0, 0, True, True), figures)
        self.assertLess(figures["preauth_rss_growth_mib"], 16)
        self.assertEqual(sorted(figures["refused_at_launch"]), ["traversal", "zero"], figures)
