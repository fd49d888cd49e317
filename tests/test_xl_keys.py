"""Master configs with xl.cfg(5) keys: accepted as xl would, applied where
they shape the image, named in one warning where they do not."""

import os
import sys
import types

from twisted.internet import defer, reactor, task, utils
from twisted.logger import Logger
from twisted.trial import unittest

from tests.fake_daemon import FakeDaemon, listen
from tests.fakes import FakeBackend
from xenclone import config, xl_keys
from xenclone.config import ConfigError
from xenclone.control.controller import Controller
from xenclone.wire import WireError

LOG = Logger(observer=lambda event: None)
XL_CONFIG = """\
name = "lx"
type = "pvh"
memory = 256
maxmem = 512
vcpus = 2
maxvcpus = 4
cpus = "0-1"
kernel = "/srv/lx/vmlinuz"
root = "/dev/xvda1 ro"
extra = "console=hvc0"
on_poweroff = "destroy"
on_crash = "restart"
uuid = "12345678-1234-1234-1234-1234567890ab"
"""


class ParseTests(unittest.TestCase):
    def test_xl_keys_accepted_with_their_values(self):
        cfg = config.loads_domain_config(XL_CONFIG, "lx.cfg")
        self.assertEqual((cfg["maxmem"], cfg["on_crash"], cfg["cpus"], cfg["memory"]),
                         (512, "restart", "0-1", 256))

    def test_what_xl_refuses_is_an_error_on_its_line(self):
        for text, msg in [
                ("on_crash = 'reboot'", "on_crash: expected one of destroy, restart"),
                ("maxmem = 64", "maxmem: 64 is less than memory (128)"),
                ("maxvcpus = 'x'", "maxvcpus: expected a number"),
                ("uuid = 'nope'", "uuid: not a uuid"),
                ("builder = 'hvm'", "PV and HVM guests are not supported"),
                ("cmdline = 3", "cmdline: expected a string"),
                ("vfb = ['vnc=1']", "vfb: only vif and disk devices are handled"),
                ("on_crahs = 'destroy'", "unknown key 'on_crahs': neither xenclone's nor "
                                          "xl.cfg(5)'s (did you mean 'on_crash'?)")]:
            e = self.assertRaises(ConfigError, config.loads_domain_config,
                                  "name = 'm'\n" + text + "\n", "m.cfg")
            self.assertTrue(str(e).startswith("m.cfg:2: "), str(e))
            self.assertIn(msg, str(e))

    def test_builder_beside_type_is_only_without_effect(self):
        cfg = config.loads_domain_config("name='m'\ntype='pvh'\nbuilder='generic'\n", "m.cfg")
        self.assertEqual(xl_keys.for_master(cfg, "m", LOG)[1],
                         "no effect on clones: builder (type decides)")

    def test_empty_device_lists_pass(self):
        config.loads_domain_config("name='m'\nvfb=[]\npci=[]\n", "m.cfg")


class ForMasterTests(unittest.TestCase):
    def test_command_line_built_as_xl_builds_it(self):
        cfg, _ = xl_keys.for_master(config.loads_domain_config(XL_CONFIG, "lx.cfg"), "lx", LOG)
        self.assertEqual(cfg["extra"], "root=/dev/xvda1 ro console=hvc0")
        self.assertFalse(set(cfg) & xl_keys.XL)

    def test_cmdline_wins_and_says_so(self):
        cfg, warning = xl_keys.for_master({"name": "m", "cmdline": "quiet", "root": "/dev/a",
                                           "extra": "x"}, "m", LOG)
        self.assertEqual(cfg["extra"], "quiet")
        self.assertEqual(warning, "no effect on clones: extra, root (cmdline replaces it, "
                                  "as in xl)")

    def test_one_warning_names_every_key_without_effect(self):
        cfg = config.loads_domain_config(XL_CONFIG, "lx.cfg")
        _, warning = xl_keys.for_master(cfg, "lx", LOG)
        self.assertEqual(warning, "no effect on clones: cpus (not applied by xenclone); "
                         "maxmem, maxvcpus (a clone has exactly its image's memory and "
                         "vCPUs); on_crash, on_poweroff (xenclone keeps a domain that ends, "
                         "to read its pages); uuid (each domain gets its own uuid)")

    def test_plain_config_warns_nothing(self):
        self.assertIsNone(xl_keys.for_master(
            config.loads_domain_config("name = 'm'\n", "m.cfg"), "m", LOG)[1])

    def test_daemon_checks_requests_that_bypass_the_file(self):
        self.assertRaises(WireError, xl_keys.for_master,
                          {"name": "m", "memory": 64, "maxmem": 32}, "m", LOG)


class CreateTests(unittest.TestCase):
    """The daemon's create: the warning logged once and in the reply."""

    def setUp(self):
        self.events = []
        self.backend = FakeBackend()
        self.controller = Controller(task.Clock(), self.backend, None, types.SimpleNamespace(),
                                     None)
        self.controller.log = Logger(observer=self.events.append)

    def test_warning_logged_once_and_returned(self):
        cfg = config.loads_domain_config('name = "m"\nmemory = 16\non_crash = "preserve"\n'
                                         'maxmem = 32\n', "m.cfg")
        result = self.successResultOf(self.controller.op_create({"config": cfg}))
        want = ("no effect on clones: maxmem (a clone has exactly its image's memory and "
                "vCPUs); on_crash (xenclone keeps a domain that ends, to read its pages)")
        self.assertEqual((result["name"], result["warning"]), ("m", want))
        [event] = self.events
        self.assertEqual((event["name"], event["warning"], event["log_level"].name),
                         ("m", want, "warn"))

    def test_root_on_the_projects_guest_is_refused_as_extra_is(self):
        cfg = config.loads_domain_config('name = "m"\nmemory = 16\nroot = "/dev/a"\n', "m.cfg")
        e = self.assertRaises(WireError, self.controller.op_create, {"config": cfg})
        self.assertIn("no ramdisk or extra", str(e))

    def test_bad_xl_value_in_a_request_is_bad_config(self):
        e = self.assertRaises(WireError, self.controller.op_create,
                              {"config": {"name": "m", "memory": 16, "on_crash": "boom"}})
        self.assertEqual(e.code, "bad-config")


class _CreatingDaemon(FakeDaemon):
    def op_create(self, msg):
        cfg, warning = xl_keys.for_master(msg["config"], msg["config"]["name"], LOG)
        return {"domid": 1, "name": cfg["name"], "warning": warning}


class CommandTests(unittest.TestCase):
    """``xenclone create`` of an xl config: the result, then one warning."""

    @defer.inlineCallbacks
    def test_warning_after_the_result_on_stderr(self):
        conf = listen(self, reactor, _CreatingDaemon())
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('name = "m"\nmemory = 16\non_reboot = "restart"\n')
        xenclone = os.path.join(os.path.dirname(sys.executable), "xenclone")
        out, err, code = yield utils.getProcessOutputAndValue(
            xenclone, ("-c", conf, "create", path), env=os.environ)
        self.assertEqual((code, out), (0, b"created m (domid 1)\n"), err)
        self.assertEqual(err, b"xenclone: warning: create: no effect on clones: on_reboot "
                              b"(xenclone keeps a domain that ends, to read its pages)\n")
