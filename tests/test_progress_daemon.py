"""Progress over the real control socket: a private daemon on the KVM
backend and the real ``xenclone`` command, its stdout a pipe (plain lines
on stderr, the result alone on stdout; nothing more with --json)."""

import os

from twisted.internet import defer, utils
from twisted.trial import unittest

from tests.test_daemon import XENCLONE, PrivateDaemon


class ProgressLinesTests(PrivateDaemon, unittest.TestCase):
    def cli(self, *args):
        conf = os.path.join(self.tmp, "cli.conf")
        with open(conf, "w") as f:
            f.write('control_socket = "%s"\n' % self.s.settings["control_socket"])
        return utils.getProcessOutputAndValue(XENCLONE, ("-c", conf) + args, env=os.environ)

    @defer.inlineCallbacks
    def test_lines_on_stderr_result_on_stdout(self):
        yield self.s.call("create", config={"name": "pm", "memory": 16})
        out, err, code = yield self.cli("bless", "pm", "--name", "pimg")
        self.assertEqual(code, 0, err)
        self.assertNotIn(b"bless pm:", err)    # without a total, nothing once it is done
        out, err, code = yield self.cli("launch", "pimg", "-n", "3")
        self.assertEqual(code, 0, err)
        self.assertEqual([line.split()[1] for line in out.decode().splitlines()],
                         ["pimg.1", "pimg.2", "pimg.3"])
        self.assertEqual(err.decode().splitlines()[-1], "launch pimg: launching: 3/3 clones")
        out, err, code = yield self.cli("launch", "pimg", "-n", "2", "--json")
        self.assertEqual((code, err), (0, b""))
        out, err, code = yield self.cli("discard", "pimg", "--force")
        self.assertEqual((code, out), (0, b"discarded pimg\n"), err)
        self.assertEqual(err.decode().splitlines()[-1],
                         "discard pimg: discarding the image: 5/5 clones")
