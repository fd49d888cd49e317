"""The xl.cfg-syntax parser and the daemon/domain key tables."""

import io
import os
import re
import tempfile
from contextlib import redirect_stdout

from twisted.trial import unittest

from xenclone import config
from xenclone.config import ConfigError, parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def values(text):
    return {e.key: e.value for e in parse(text, "t.cfg")}


class SyntaxTests(unittest.TestCase):
    def test_value_types(self):
        self.assertEqual(values(
            'a = "double"\n'
            "b='single'\n"
            'c = "q\\"uote \\\\ back \\\' tick\\nline"\n'
            "d = 'it\\'s'\n"
            "e = 1234\n"
            "f = 0x1F\n"
            "g = 0\n"
            'h = [ "x", 2, 0x10 ]\n'
            "i = []\n"
            'j = ""\n'), {
                "a": "double", "b": "single",
                "c": 'q"uote \\ back \' tick\nline', "d": "it's",
                "e": 1234, "f": 31, "g": 0, "h": ["x", 2, 16], "i": [],
                "j": ""})

    def test_multiline_list_comments_and_semicolons(self):
        entries = parse(
            "# leading comment\n"
            "\n"
            "disk = [ 'a',   # first\n"
            "         # a whole comment line inside\n"
            "         'b#not-a-comment',\n"
            "       ]\n"
            "x = 1; y = 2;\n"
            "z = 'last';   # trailing\n", "t.cfg")
        self.assertEqual([(e.key, e.value, e.line) for e in entries], [
            ("disk", ["a", "b#not-a-comment"], 3), ("x", 1, 7), ("y", 2, 7),
            ("z", "last", 8)])

    def test_no_trailing_newline(self):
        self.assertEqual(values("a=1"), {"a": 1})

    def assertError(self, text, line, pattern):
        e = self.assertRaises(ConfigError, parse, text, "bad.cfg")
        self.assertRegex(str(e), r"^bad\.cfg:%d: %s" % (line, pattern))
        self.assertEqual(e.line, line)

    def test_unterminated_string(self):
        self.assertError('a = 1\nb = "open\nc = 2\n', 2, "unterminated string")
        self.assertError("a = 'open", 1, "unterminated string")

    def test_bad_numbers(self):
        self.assertError("a = 12abc\n", 1, "bad number '12abc'")
        self.assertError("\na = 0x\n", 2, "bad number '0x'")
        self.assertError("a = 0xfg\n", 1, "bad number")
        self.assertError("a = -1\n", 1, "bad number '-1'")
        self.assertError("a = 1.5\n", 1, "bad number")

    def test_missing_equals(self):
        self.assertError("a 1\n", 1, "expected '=' after 'a'")
        self.assertError("\n\nname\n", 3, "expected '=' after 'name'")

    def test_duplicate_key(self):
        self.assertError("a = 1\n\na = 2\n", 3,
                         re.escape("duplicate key 'a' (first set on line 1)"))

    def test_no_eval(self):
        self.assertError("a = __import__('os')\n", 1, "expected a value")
        self.assertError("a = 1 + 1\n", 1, "bad number|expected end of line")
        self.assertError("a = (1)\n", 1, "unexpected character")

    def test_other_errors(self):
        self.assertError("a = [1, 2\nb = 3\n", 2, "expected ',' or ']'")
        self.assertError("a = [[1]]\n", 1, "lists cannot be nested")
        self.assertError("a = 'x' 'y'\n", 1, "expected end of line")
        self.assertError("a = \n", 1, "expected a value")
        self.assertError('a = "\\t"\n', 1, "unknown escape")
        self.assertError("= 1\n", 1, "expected a setting name")

    def test_format_round_trip(self):
        for v in ["plain", 'q"\\\n\'', "", 0, 4096, ["a", 1, 'b"']]:
            self.assertEqual(values("k = %s" % config.format_value(v)),
                             {"k": v})


class DaemonTests(unittest.TestCase):
    def load(self, text):
        return config.loads_daemon_config(text, "d.conf")

    def test_defaults(self):
        s = config.load_daemon_config(None)
        self.assertEqual(s["backend"], "auto")
        self.assertEqual(s["credit_batch"], 256)
        self.assertEqual(s["control_socket"], "/run/xenclone/control.sock")
        self.assertEqual(s["memserver_dir"], "/var/lib/xenclone/images")
        self.assertEqual(s["memserver_token_file"],
                         "/var/lib/xenclone/memserver.token")

    def test_derived_defaults_follow_state_dir(self):
        s = self.load('state_dir = "/srv/xc"\n')
        self.assertEqual(s["memserver_dir"], "/srv/xc/images")
        s = self.load('state_dir = "/srv/xc"\nmemserver_dir = "/m"\n')
        self.assertEqual(s["memserver_dir"], "/m")

    def test_unknown_key_is_an_error(self):
        e = self.assertRaises(ConfigError, self.load,
                              "backend = 'kvm'\ncredit_bacth = 5\n")
        self.assertEqual(str(e), "d.conf:2: unknown key 'credit_bacth' in a "
                         "xenclone daemon configuration (did you mean "
                         "'credit_batch'?)")

    def test_type_and_range_errors(self):
        for text, msg in [
                ("backend = 'kvn'", "backend: expected one of auto, kvm, xen"),
                ("credit_batch = '256'", "credit_batch: expected a number"),
                ("credit_batch = 0", "credit_batch: must be at least 1"),
                ("state_dir = 5", "state_dir: expected a string"),
                ("run_dir = 'relative'", "run_dir: must be an absolute path"),
                ("memserver_tcp = 'host'", "memserver_tcp: expected"),
                ("memserver_tcp = 'h:70000'", "memserver_tcp: expected"),
                ("log_level = ['info']", "log_level: expected a string")]:
            e = self.assertRaises(ConfigError, self.load, "\n" + text)
            self.assertTrue(str(e).startswith("d.conf:2: " + msg), str(e))
        e = self.assertRaises(ConfigError, self.load, "low_watermark_mib = 900")
        self.assertEqual(str(e), "d.conf: low_watermark_mib (900) must not exceed "
                         "high_watermark_mib (512)")
        self.assertEqual(self.load("memserver_tcp = '[::1]:7000'")
                         ["memserver_tcp"], "[::1]:7000")
        e = self.assertRaises(ConfigError, self.load, "memserver_remote = 'a:7443'\n"
                              "memserver_remote_ca = '/etc/a.pem'")
        self.assertEqual(str(e), "d.conf: memserver_remote needs memserver_remote_ca "
                         "and memserver_remote_token_file")

    def test_shipped_file_is_generated_and_all_defaults(self):
        out = io.StringIO()
        with redirect_stdout(out):
            self.assertEqual(config.main(["--print-default"]), 0)
        text = out.getvalue()
        path = os.path.join(ROOT, "config", "xenclone.conf")
        with open(path) as f:
            self.assertEqual(f.read(), text, "regenerate config/xenclone.conf")
        self.assertEqual(config.load_daemon_config(path),
                         config.load_daemon_config(None))
        # Every key is there, documented, and uncommenting it changes nothing.
        documented = re.findall(r"^# (.+)\n#(\w+)=", text, re.M)
        self.assertEqual([(k.doc, k.name) for k in config.DAEMON.keys.values()],
                         documented)
        uncommented = re.sub(r"^#(\w+=)", r"\1", text, flags=re.M)
        self.assertEqual(self.load(uncommented),
                         config.load_daemon_config(None))

    def test_file_errors_name_the_file(self):
        with tempfile.NamedTemporaryFile("w", suffix=".conf") as f:
            f.write("vmm_hosts = 2\nbackend = xen\n")
            f.flush()
            e = self.assertRaises(ConfigError, config.load_daemon_config,
                                  f.name)
        self.assertEqual(str(e), "%s:2: expected a value (string, number or "
                         "list), got 'xen'" % f.name)


class DomainTests(unittest.TestCase):
    def test_example(self):
        cfg = config.load_domain_config(
            os.path.join(ROOT, "config", "master-example.cfg"))
        self.assertEqual(cfg["name"], "master-example")
        self.assertEqual(cfg["seed"], 0x5eed)
        self.assertEqual(set(cfg), set(config.DOMAIN.keys))

    def test_defaults_and_required_name(self):
        cfg = config.loads_domain_config("name = 'm'\n", "m.cfg")
        self.assertEqual(cfg, {"name": "m", "type": "pvh", "memory": 128, "vcpus": 1,
                               "kernel": "", "ramdisk": "", "extra": "", "disk": [],
                               "vif": [], "workload": "scan", "read_percent": 10,
                               "write_pages": 8, "zero_every": 16, "seed": 1, "hostile": 0})
        e = self.assertRaises(ConfigError, config.loads_domain_config,
                              "memory = 64\n", "m.cfg")
        self.assertEqual(str(e), "m.cfg: 'name' is required")

    def test_a_linux_masters_devices_are_read_as_xl_writes_them(self):
        cfg = config.loads_domain_config(
            "name='m'\nkernel='/k'\nvif=['bridge=xenbr0,mac=00:16:3e:00:00:01']\n"
            "disk=['/srv/m.img,raw,xvda,w', 'format=qcow2,vdev=xvdb,target=/srv/b.qcow2']\n")
        self.assertEqual(cfg["vif"], ["bridge=xenbr0,mac=00:16:3e:00:00:01"])
        self.assertEqual(len(cfg["disk"]), 2)

    def test_domain_errors(self):
        for text, msg in [("vcpus = 200", "vcpus: must be at most 128"),
                          ("read_percent = 101", "must be at most 100"),
                          ("workload = 'boot'", "expected one of scan"),
                          ("kernel = 'boot/x'", "kernel: must be an absolute path"),
                          ("type = 'pv'", "PV and HVM guests are not supported"),
                          ("vif = ['bridge=xenbr0,colo_sock=x']", "COLO settings"),
                          ("vif = 'bridge=xenbr0'", "vif: expected a list"),
                          ("disk = ['phy:/dev/vg/a,xvda,w']", "is a block device"),
                          ("disk = ['/a.vhd,vhd,xvda,w']", "vhd cannot be snapshotted"),
                          ("bootloader = 'pygrub'", "bootloader: only direct kernel boot"),
                          ("frob = 1", "unknown key 'frob'")]:
            e = self.assertRaises(ConfigError, config.loads_domain_config,
                                  "name='m'\n" + text, "m.cfg")
            self.assertTrue(str(e).startswith("m.cfg:2: "), str(e))
            self.assertIn(msg, str(e))
