"""Sizes in, sizes out: MiB by default as xl mem-set, K/M/G/T suffixes;
text output for people, pages kept in --json."""

import json
import os
import sys

from twisted.internet import defer, reactor, utils
from twisted.trial import unittest

from tests.fake_daemon import FakeDaemon, listen
from xenclone.cli import commands, text, units
from xenclone.control_client import CliError

XENCLONE = os.path.join(os.path.dirname(sys.executable), "xenclone")


class SizeTests(unittest.TestCase):
    def test_parse(self):
        for given, pages in [("512", 131072), ("512M", 131072), ("512MiB", 131072),
                             ("2G", 524288), ("2g", 524288), ("64K", 16), ("1k", 1),
                             ("1.5G", 393216), ("1T", 2**28), ("0", 0)]:
            self.assertEqual(units.parse_size(given), pages, given)

    def test_refused(self):
        for bad in ("", "x", "-1", "1P", "12 pages", "0x10"):
            self.assertRaises(ValueError, units.parse_size, bad)

    def test_show(self):
        for pages, shown in [(0, "0"), (1, "4K"), (150, "600K"), (256, "1M"),
                             (131072, "512M"), (393216, "1.5G"), (2**28, "1T")]:
            self.assertEqual(units.show_pages(pages), shown)

    def test_set_knobs(self):
        self.assertEqual(commands._knob("limit=2G"), ("limit", 524288))
        self.assertEqual(commands._knob("target=512"), ("target", 131072))
        with self.assertRaises(CliError) as cm:
            commands._knob("limit=lots")
        self.assertEqual(cm.exception.code, 2)
        self.assertIn("'lots' is not a size", str(cm.exception))


class TextTests(unittest.TestCase):
    def test_describe_has_no_reprs_and_aligns(self):
        out = text.describe({"name": "web.1", "result": None, "resident_pages": 4096,
                             "memory_mib": 256, "flags": {"share.onfetch": True},
                             "launch_ms": 1.23456, "evictions": {}})
        for repr_bit in ("None", "{", "}", "True", "'"):
            self.assertNotIn(repr_bit, out)
        self.assertIn("resident_pages  16M", out)
        self.assertIn("memory_mib      256M", out)
        self.assertIn("flags           share.onfetch=yes", out)
        self.assertEqual(len({line.index(line.split()[1]) for line in out.splitlines()}), 1)

    def test_nested_objects_indented(self):
        out = text.describe({"ledger": {"budget_pages": 256, "evictions": {"page-out": 2}}})
        self.assertEqual(out.splitlines(), ["ledger", "  budget_pages  1M",
                                            "  evictions     page-out=2"])

    def test_table_right_aligns_figures(self):
        out = text.table([{"name": "a", "memory_mib": 16}, {"name": "bb", "memory_mib": 2048}],
                         [("Name", "name"), ("Mem", "memory_mib")])
        self.assertEqual(out.splitlines(), ["Name  Mem", "a     16M", "bb     2G"])


class CommandTests(unittest.TestCase):
    """The real command against a daemon of canned answers."""

    def setUp(self):
        self.daemon = FakeDaemon()
        self.conf = listen(self, reactor, self.daemon)

    def run_cli(self, *args):
        return utils.getProcessOutputAndValue(XENCLONE, ("-c", self.conf) + args,
                                              env=os.environ)

    @defer.inlineCallbacks
    def test_sizes_sent_as_pages(self):
        out, err, code = yield self.run_cli("set", "web.1", "limit=2G", "target=512")
        self.assertEqual(code, 0, err)
        out, err, code = yield self.run_cli("evict", "web.1", "--to", "64M")
        self.assertEqual(code, 0, err)
        self.assertEqual(self.daemon.calls, [
            ("set", {"id": 1, "op": "set", "domain": "web.1",
                     "knobs": {"limit": 524288, "target": 131072}}),
            # evict asks for progress (control/progress.py); nothing streams here.
            ("evict", {"id": 1, "op": "evict", "domain": "web.1", "to": 16384,
                       "progress": True})])

    @defer.inlineCallbacks
    def test_bad_size_is_a_usage_error(self):
        out, err, code = yield self.run_cli("evict", "web.1", "--to", "lots")
        self.assertEqual(code, 2)
        self.assertIn(b"'lots' is not a size", err)
        self.assertEqual(self.daemon.calls, [])

    @defer.inlineCallbacks
    def test_text_for_people_json_in_pages(self):
        for args in (("info", "web.1"), ("host",), ("list",)):
            out, err, code = yield self.run_cli(*args)
            self.assertEqual(code, 0, err)
            for repr_bit in (b"None", b"{", b"'"):
                self.assertNotIn(repr_bit, out, args)
        out, err, code = yield self.run_cli("info", "web.1")
        self.assertRegex(out.decode(), r"(?m)^resident_pages +600K$")
        out, err, code = yield self.run_cli("host")
        self.assertRegex(out.decode(), r"(?m)^  budget_pages +3.9M$")
        self.assertRegex(out.decode(), r"(?m)^    2  absent=200K private=80K shared=400K zero=120K$")
        out, err, code = yield self.run_cli("info", "web.1", "--json")
        self.assertEqual(json.loads(out)["resident_pages"], 150)
