"""Which config file the command and the daemon read: -c, then
$XENCLONE_CONFIG, then /etc/xen/xenclone.conf when it exists."""

import os
import sys

from twisted.internet import defer, utils
from twisted.python import usage
from twisted.trial import unittest

from xenclone import config_file, tap

XENCLONE = os.path.join(os.path.dirname(sys.executable), "xenclone")


def _write(path, socket_path):
    with open(path, "w") as f:
        f.write('control_socket = "%s"\n' % socket_path)
    return path


class ConfigPathTests(unittest.TestCase):
    def setUp(self):
        self.tmp = self.mktemp()
        os.makedirs(self.tmp)
        self.etc = os.path.join(self.tmp, "xenclone.conf")

    def test_named_file_wins(self):
        _write(self.etc, "/x")
        self.assertEqual(config_file.config_path("/named.conf", {"XENCLONE_CONFIG": "/env.conf"},
                                                 self.etc), "/named.conf")

    def test_environment_before_etc(self):
        _write(self.etc, "/x")
        self.assertEqual(config_file.config_path(None, {"XENCLONE_CONFIG": "/env.conf"},
                                                 self.etc), "/env.conf")

    def test_etc_file_when_it_exists(self):
        self.assertIsNone(config_file.config_path(None, {}, self.etc))
        _write(self.etc, "/x")
        self.assertEqual(config_file.config_path(None, {}, self.etc), self.etc)

    def test_daemon_reads_the_same_file(self):
        _write(self.etc, "/run/elsewhere/control.sock")
        self.patch(config_file, "DEFAULT_PATH", self.etc)
        self.patch(os, "environ", {k: v for k, v in os.environ.items()
                                   if k != "XENCLONE_CONFIG"})
        options = tap.Options()
        options.parseOptions([])
        self.assertEqual(options["settings"]["control_socket"], "/run/elsewhere/control.sock")
        self.patch(os, "environ", dict(os.environ, XENCLONE_CONFIG=self.etc + ".missing"))
        self.assertRaises(usage.UsageError, tap.Options().parseOptions, [])


class CommandTests(unittest.TestCase):
    """The real command: the socket it fails to reach is the config's."""

    @defer.inlineCallbacks
    def test_environment_config_then_dash_c_overrides(self):
        tmp = os.path.abspath(self.mktemp())
        os.makedirs(tmp)
        env_conf = _write(os.path.join(tmp, "env.conf"), os.path.join(tmp, "from-env.sock"))
        c_conf = _write(os.path.join(tmp, "c.conf"), os.path.join(tmp, "from-c.sock"))
        env = dict(os.environ, XENCLONE_CONFIG=env_conf)
        out, err, code = yield utils.getProcessOutputAndValue(XENCLONE, ("list",), env=env)
        self.assertEqual(code, 3, err)
        self.assertIn(b"from-env.sock", err)
        out, err, code = yield utils.getProcessOutputAndValue(XENCLONE, ("-c", c_conf, "list"),
                                                              env=env)
        self.assertEqual(code, 3, err)
        self.assertIn(b"from-c.sock", err)
        env["XENCLONE_CONFIG"] = os.path.join(tmp, "missing.conf")
        out, err, code = yield utils.getProcessOutputAndValue(XENCLONE, ("list",), env=env)
        self.assertEqual(code, 2, err)
        self.assertIn(b"missing.conf", err)
        self.assertNotIn(b"Traceback", err)
