"""The man pages and the bash completion are written from the parser and
the config table: every command and every setting is in them."""

import os
import re
import shutil
import subprocess

from twisted.trial import unittest

from xenclone import completion, config, manpages
from xenclone.cli.parser import build_parser


def render(path):
    """The page as man shows it, plain text (no hyphenation, wide)."""
    env = dict(os.environ, MANWIDTH="200", LC_ALL="C.UTF-8")
    out = subprocess.run(["man", "--nh", "--nj", "-l", path], capture_output=True, env=env,
                         check=True)
    # Bold and underline are overstruck ("b\bb"); roff's warnings would be mistakes.
    return re.sub(".\b", "", out.stdout.decode()), out.stderr.decode()


class ManPageTests(unittest.TestCase):
    def setUp(self):
        if shutil.which("man") is None:
            raise unittest.SkipTest("man is not installed (Debian: man-db, which "
                                    "scripts/install-deps installs)")
        self.dir = self.mktemp()
        self.paths = manpages.write(self.dir)

    def test_every_command_in_xenclone_1(self):
        text, warnings = render(self.paths[0])
        self.assertEqual(warnings, "")
        _, sub = build_parser()
        names = list(sub.choices)
        self.assertIn("shutdown", names)
        for name in names:
            self.assertRegex(text, r"(?m)^   %s$" % name)        # its section
            self.assertIn("xenclone %s " % name, text)          # its usage
        self.assertIn("--to SIZE", text)
        self.assertIn("XENCLONE_CONFIG", text)

    def test_every_setting_in_xenclone_conf_5(self):
        text, warnings = render(self.paths[1])
        self.assertEqual(warnings, "")
        for key in config.DAEMON.keys.values():
            self.assertRegex(text, r"(?m)^       %s = " % key.name)
        self.assertIn('log_level = "info"', text)


class CompletionTests(unittest.TestCase):
    def complete(self, *words):
        """COMPREPLY for the words typed so far (the last one being completed)."""
        script = completion.bash_completion() + (
            'COMP_WORDS=(%s); COMP_CWORD=%d; _xenclone; printf "%%s\\n" "${COMPREPLY[@]}"'
            % (" ".join("'%s'" % w for w in words), len(words) - 1))
        env = dict(os.environ, PATH="/usr/bin:/bin")    # no xenclone: no daemon names
        out = subprocess.run(["bash", "-c", script], capture_output=True, check=True, env=env)
        return out.stdout.decode().split()

    def test_commands(self):
        _, sub = build_parser()
        self.assertEqual(sorted(self.complete("xenclone", "")),
                         sorted(["-h", "--help", "--config", "-c", "--via-xenstore"]
                                + list(sub.choices)))
        self.assertEqual(self.complete("xenclone", "la"), ["launch"])

    def test_options_and_choices(self):
        self.assertEqual(self.complete("xenclone", "evict", "web.1", "--t"), ["--to"])
        self.assertEqual(self.complete("xenclone", "-c", "x.conf", "memserver", "st"),
                         ["status", "start", "stop"])
        self.assertEqual(self.complete("xenclone", "help", "shu"), ["shutdown"])
