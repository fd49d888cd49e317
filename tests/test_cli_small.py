"""The command's small manners: help on an unknown topic, a closed pipe."""

import io
import os
import sys

from twisted.internet import defer, reactor, utils
from twisted.trial import unittest

from tests.fake_daemon import FakeDaemon, listen
from xenclone.cli import main

XENCLONE = os.path.join(os.path.dirname(sys.executable), "xenclone")


class HelpTests(unittest.TestCase):
    def run_main(self, *argv):
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        return main.main(list(argv)), out.getvalue(), err.getvalue()

    def test_unknown_topic_named(self):
        code, out, err = self.run_main("help", "nosuch")
        self.assertEqual(code, 2)
        self.assertEqual(out, "")
        self.assertIn("help: no command 'nosuch'", err)
        self.assertIn("launch", err)

    def test_known_topic(self):
        code, out, err = self.run_main("help", "launch")
        self.assertEqual((code, err), (0, ""))
        self.assertIn("usage: xenclone launch", out)


class ClosedPipeTests(unittest.TestCase):
    """``xenclone list | head -n 1`` and ``top | head``: no message, 141."""

    def pipe_to_head(self, conf, *args):
        cmd = ('"%s" -c "%s" %s 2>"$ERR" | head -n 1 >/dev/null; echo "${PIPESTATUS[0]}"; '
               'cat "$ERR"' % (XENCLONE, conf, " ".join(args)))
        env = dict(os.environ, ERR=os.path.abspath(self.mktemp()))
        return utils.getProcessOutputAndValue("/bin/bash", ("-c", cmd), env=env)

    @defer.inlineCallbacks
    def test_list_into_head(self):
        domains = [{"domid": i, "name": "web.%d" % i, "role": "clone", "image": "web",
                    "state": "running", "memory_mib": 16} for i in range(1, 5000)]
        conf = listen(self, reactor, FakeDaemon(domains))
        out, err, code = yield self.pipe_to_head(conf, "list")
        self.assertEqual(out.decode(), "141\n")

    @defer.inlineCallbacks
    def test_top_into_head(self):
        conf = listen(self, reactor, FakeDaemon())
        out, err, code = yield self.pipe_to_head(conf, "top", "-b", "-d", "0.01")
        self.assertEqual(out.decode(), "141\n")
