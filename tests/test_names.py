"""Names from outside: every entry point refuses traversal, NUL, overlong
and non-ASCII values, and nothing is written outside its directory.

The entry points: a remote memory server's ``describe`` (mirror), the
working sets' paths, the control socket's and XenStore's ops (one
controller), a restarted daemon's records from the VMM host, images on
disk, the config file, a guest's request, a remote's page runs."""

import base64
import json
import os
import types

from twisted.internet import defer
from twisted.trial import unittest

from tests import memserver_helpers as H
from xenclone.config import ConfigError, loads_daemon_config
from xenclone.control.controller import Controller
from xenclone.control.records import Domain
from xenclone.control.recovery import _take_clone
from xenclone.interfaces import PAGE_SIZE
from xenclone.memserver import page_crcs
from xenclone.memserver.mirror import MirroringMemoryServer
from xenclone.memserver.store import ImageStore
from xenclone.names import BadName, check_generation, check_name, check_token, join
from xenclone.wire import WireError
from xenclone.working_set import WorkingSets
from xenclone.xenstore.guest import parse_guest_request

TRAVERSAL = "../../../../../outside/x"
HOSTILE = [TRAVERSAL, "..", ".hidden", "a/b", "/abs", "a\0b", "img\n", "x" * 65, "x" * 4096,
           "caf\u00e9", "\uff57eb", "\udcff", "", None, 7, ["img"]]


def _tree(top):
    """Every path under ``top``."""
    return sorted(os.path.join(d, n) for d, dirs, files in os.walk(top) for n in dirs + files)


class ValidatorTests(unittest.TestCase):
    def test_every_check_refuses_every_hostile_value(self):
        for check in (check_name, check_generation, check_token, lambda v: join("/base", v)):
            # A path part may be longer than a name (a name and its suffix).
            for value in [v for v in HOSTILE if not (check is not check_name and v == "x" * 65)]:
                e = self.assertRaises(BadName, check, value)
                self.assertEqual(e.code, "bad-name")
                self.assertIsInstance(e, ValueError)
                self.assertLess(len(str(e)), 200)      # an overlong value is not echoed whole

    def test_good_values_pass(self):
        self.assertEqual(check_name("web.1"), "web.1")
        self.assertEqual(check_generation("0123456789ab"), "0123456789ab")
        self.assertEqual(check_token("job-7"), "job-7")
        self.assertEqual(join("/base", "img", "g1.json"), "/base/img/g1.json")


class MirrorEntryTests(unittest.TestCase):
    """A remote server's ``describe`` answer, as the local store records it."""

    def setUp(self):
        self.top = self.mktemp()
        self.store = ImageStore(os.path.join(self.top, "images"))
        self.addCleanup(self.store.close)

    def info(self, **change):
        info = {"image_id": "img", "generation": "0123456789ab", "npages": 4, "arch": "a",
                "nonzero_pages": 1, "created": 0.0, "meta": {}}
        info.update(change)
        return info

    def mirror(self, name="img", zero=b"\1\1\1\0", **change):
        return self.store.mirror(name, self.info(**change), base64.b64encode(b"regs").decode(),
                                 zero, "peer:1", bytes(16))

    def test_hostile_names_and_generations_are_refused_and_write_nothing(self):
        before = _tree(self.top)
        for value in HOSTILE:
            for field in ("generation", "image_id", "arch"):
                e = self.assertRaises(WireError, self.mirror, **{field: value})
                self.assertEqual(e.code, "bad-name", (field, value))
            self.assertEqual(self.assertRaises(WireError, self.mirror, name=value).code,
                             "bad-name")
        self.assertEqual(_tree(self.top), before)

    def test_a_zero_map_of_other_bytes_is_refused(self):
        e = self.assertRaises(WireError, self.mirror, zero=b"\1\2\1\0")
        self.assertEqual(e.code, "bad-request")
        self.assertEqual(self.mirror()["generation"], "0123456789ab")

    def test_an_image_on_disk_that_names_another_is_not_loaded(self):
        self.mirror()
        path = os.path.join(self.store.dir, "img", "meta.json")
        with open(path) as f:
            good = json.load(f)
        for field, value in (("image_id", TRAVERSAL), ("generation", TRAVERSAL),
                             ("image_id", "other")):
            with open(path, "w") as f:
                json.dump(dict(good, **{field: value}), f)
            store = ImageStore(self.store.dir)
            self.addCleanup(store.close)
            self.assertEqual([name for name, why in store.load_all()], ["img"])
            self.assertEqual(store.images(), [])


class WorkingSetPathTests(unittest.TestCase):
    def test_the_issue_traversal_builds_no_path(self):
        """A mirror's generation from a remote server became
        <state_dir>/working-sets/<image>/<generation>.json, written as root."""
        top = self.mktemp()
        ws = WorkingSets(types.SimpleNamespace(), os.path.join(top, "working-sets"))
        for value in HOSTILE:
            self.assertRaises(BadName, ws._path, "img", value)
            self.assertRaises(BadName, ws._save, "img", value, [1], 1)
            self.assertRaises(BadName, ws._path, value, "g1")
        self.assertFalse(os.path.exists(top))


class ControllerEntryTests(unittest.TestCase):
    """The control socket's and XenStore requests' ops (one dispatch)."""

    def setUp(self):
        self.controller = Controller(None, None, None, types.SimpleNamespace(), None)

    def test_image_names(self):
        for op in ("launch", "discard", "page", "image_check", "isolation_check"):
            for value in HOSTILE:
                d = defer.maybeDeferred(getattr(self.controller, "op_" + op),
                                        {"image": value, "pfn": 0})
                self.assertEqual(self.failureResultOf(d, WireError).value.code, "bad-argument",
                                 (op, value))

    def test_domain_names_at_create(self):
        for value in HOSTILE:
            e = self.assertRaises(WireError, self.controller.op_create,
                                  {"config": {"name": value, "memory": 16}})
            self.assertEqual(e.code, "bad-config")
        self.assertEqual(self.controller.domains, {})


class RecoveryEntryTests(unittest.TestCase):
    """A restarted daemon's records of clones come back from the VMM host."""

    def test_records_are_checked_before_anything_opens(self):
        opened = []
        controller = types.SimpleNamespace(open_image=lambda i: opened.append(i))
        for image, generation, clone_id in [(v, "g1", 1) for v in HOSTILE] + \
                [("img", v, 1) for v in HOSTILE] + [("img", "g1", v) for v in (-1, "1", 2**40)]:
            dom = Domain(3, "img.1", "clone", 16, image=image, clone_id=clone_id)
            d = _take_clone(controller, dom, {"generation": generation})
            self.failureResultOf(d, BadName)
        self.assertEqual(opened, [])


class ConfigAndGuestEntryTests(unittest.TestCase):
    def test_guest_requests_names_in_the_config(self):
        for value in HOSTILE[:10]:
            text = "guest_requests = [%s]" % json.dumps(value)
            self.assertRaises(ConfigError, loads_daemon_config, text)
        self.assertEqual(loads_daemon_config('guest_requests = ["*", "m1"]')["guest_requests"],
                         ["*", "m1"])

    def test_a_guest_request_id(self):
        for value in HOSTILE[:10]:
            raw = json.dumps({"op": "clone", "id": value}).encode()
            self.assertIn(self.assertRaises(WireError, parse_guest_request, raw).code,
                          ("bad-request", "too-large"))


class RemotePagesTests(unittest.TestCase):
    """A remote server's page run of the wrong size never reaches a clone."""

    def test_wrong_sizes_fail_the_fetch(self):
        class Remote:
            address = "peer:1"

            def fetch(self, image, pfn, count, generation=None):
                return defer.succeed(self.data)

        remote = Remote()
        mirror = MirroringMemoryServer(None, remote)
        crcs = page_crcs.new_table(1)
        page_crcs.note(crcs, 0, H.page_pattern(0))
        mirror._origins["img"] = {"server": "peer:1", "image": "img", "generation": "g1",
                                  "crcs": crcs}
        for size in (0, PAGE_SIZE - 1, 2 * PAGE_SIZE, 64 << 20):
            remote.data = bytes(size)
            f = self.failureResultOf(mirror.fetch("img", 0, 1), WireError)
            self.assertEqual(f.value.code, "bad-reply")
        remote.data = H.page_pattern(0)
        self.assertEqual(self.successResultOf(mirror.fetch("img", 0, 1)), H.page_pattern(0))
