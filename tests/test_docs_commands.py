"""Every ``xenclone`` line of README.md and docs/operations.md runs as
written, so the docs cannot drift from the command.

    doc -> the lines of its indented code blocks that start "xenclone "
        -> run in order, as written, against a scratch daemon of their own
           (twistd in a temp dir, found through $XENCLONE_CONFIG), cwd the
           source tree
        -> exit 0; 1 where the line's comment says "refused" (the refusal
           is what the doc shows)

Lines the embedded KVM backend cannot run are skipped, each with its
reason: a comment saying "Xen only", a section titled "(Xen)", or SKIP
below.  A failure names the doc, its line and the command's stderr.
"""

import os
import shlex

from twisted.internet import defer, reactor, utils
from twisted.trial import unittest

from tests.test_daemon import XENCLONE, _need_kvm
from xenclone.selftests.scratch_daemon import ScratchDaemon

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP = {
    "xenclone selftest xenstore": "runs in tests/test_xenstore_requests.py and the rig",
    "xenclone selftest kill-daemon kill-memserver cut-memserver page-out-full":
        "minutes, root and a network namespace: tests/test_crash_selftests.py",
    "xenclone selftest hostile-peer": "a scratch daemon of its own: tests/test_crash_selftests.py",
}


def doc_commands(name):
    """(line number, command, comment, why skipped or None) of a doc."""
    section = ""
    with open(os.path.join(ROOT, name)) as f:
        for number, line in enumerate(f, 1):
            if line.startswith("#"):
                section = line
            if not line.startswith("    xenclone "):
                continue
            command, _, comment = line.strip().partition("#")
            command, comment = command.strip(), comment.strip()
            why = SKIP.get(command)
            if "Xen only" in comment or "(Xen)" in section:
                why = "Xen only (%s)" % (section.strip("# \n") if "(Xen)" in section
                                         else comment)
            yield number, command, comment, why


class DocCommandTests(unittest.TestCase):
    timeout = 600

    @defer.inlineCallbacks
    def setUp(self):
        _need_kvm()
        self.daemon = ScratchDaemon(reactor, {"xenstore": "embedded"},
                                    prefix="xc-docs-")
        yield self.daemon.start()
        self.addCleanup(self.stop)
        self.skipped = []

    def stop(self):
        if self.daemon.process is not None and self.daemon.process.exit.ended.called:
            self.daemon.process = None       # shut down by the doc itself
        return self.daemon.stop()

    @defer.inlineCallbacks
    def run_doc(self, name):
        env = dict(os.environ, XENCLONE_CONFIG=self.daemon.conf)
        ran = 0
        for number, command, comment, why in doc_commands(name):
            if why is not None:
                self.skipped.append("%s:%d: %s: %s" % (name, number, command, why))
                continue
            want = 1 if comment.startswith("refused") else 0
            out, err, code = yield utils.getProcessOutputAndValue(
                XENCLONE, shlex.split(command)[1:], env=env, path=ROOT)
            if code != want or b"Traceback" in err:
                self.fail("%s:%d: %s: exit %d, expected %d\n%s" % (
                    name, number, command, code, want, err.decode(errors="replace")))
            ran += 1
            if command == "xenclone shutdown --force":     # as the doc says: all down
                yield self.daemon.process.exit.ended
        return ran

    @defer.inlineCallbacks
    def test_readme(self):
        ran = yield self.run_doc("README.md")
        self.assertGreaterEqual(ran, 25)
        self.assertEqual([s.split(": ", 1)[1] for s in self.skipped], [
            "xenclone launch web --fill before-run: Xen only (Xen only: fork | lazy | "
            "before-run | auto)",
            "xenclone reset web.1: Xen only (Xen only: a fork clone back to its image)",
            "xenclone memserver status: Xen only (Xen only: the memory-server domain)"])

    @defer.inlineCallbacks
    def test_operations(self):
        # A host in service: a live domain, which `shutdown` refuses to lose.
        yield self.daemon.call("create", config={"name": "in-service", "memory": 16})
        ran = yield self.run_doc("docs/operations.md")
        self.assertEqual(ran, 2)
        self.assertEqual(len(self.skipped), 10, self.skipped)
