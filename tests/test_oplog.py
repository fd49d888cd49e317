"""The daemon's log: operations with who, what, domain, result and
duration; log_level filters; no factory noise; helpers to the journal."""

import os
import subprocess

from twisted.application.service import Application
from twisted.internet import defer, task
from twisted.internet.protocol import Factory
from twisted.logger import ILogObserver, Logger
from twisted.scripts.twistd import ServerOptions
from twisted.trial import unittest

from xenclone import helpers
from xenclone.config import load_daemon_config
from xenclone.control.oplog import LoggedHandler, as_caller
from xenclone.daemon_log import level_filtered
from xenclone.wire import WireError


class FakeController:
    def __init__(self, clock):
        self.reactor = clock
        self.pending = defer.Deferred()

    def op_launch(self, msg):
        return self.pending

    def op_destroy(self, msg):
        raise WireError("no-domain", "unknown domain %r" % msg["domain"])

    def op_list(self, msg):
        return {"domains": []}


class OperationLogTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.events = []
        self.controller = FakeController(self.clock)
        self.handler = LoggedHandler(self.controller, lambda: "uid=0 pid=42",
                                     log=Logger(observer=self.events.append))

    def test_operation_logged_when_it_ends_with_its_fields(self):
        d = self.handler.op_launch({"image": "web", "count": 4})
        self.assertEqual(self.events, [])
        self.clock.advance(1.5)
        self.controller.pending.callback({"clones": []})
        self.assertEqual(self.successResultOf(d), {"clones": []})
        [event] = self.events
        self.assertEqual({k: event[k] for k in ("who", "op", "domain", "result", "duration_s")},
                         {"who": "uid=0 pid=42", "op": "launch", "domain": "web", "result": "ok",
                          "duration_s": 1.5})

    def test_refusal_logged_with_its_code(self):
        f = self.failureResultOf(self.handler.op_destroy({"domain": "ghost"}), WireError)
        self.assertEqual(f.value.code, "no-domain")
        [event] = self.events
        self.assertEqual((event["op"], event["domain"], event["result"]),
                         ("destroy", "ghost", "no-domain"))
        self.assertIn("unknown domain", event["error"])

    def test_reads_not_logged(self):
        self.assertEqual(self.handler.op_list({}), {"domains": []})
        self.assertEqual(self.events, [])

    def test_as_caller_names_another_asker(self):
        other = as_caller(self.handler, "xenstore request job1")
        self.assertIs(other.handler, self.controller)
        self.assertEqual(other.who, "xenstore request job1")


class LogLevelTests(unittest.TestCase):
    def test_filter(self):
        seen = []
        log = Logger(observer=level_filtered(seen.append, "warn"))
        log.info("routine")
        log.warn("odd")
        log.error("bad")
        self.assertEqual([e["log_format"] for e in seen], ["odd", "bad"])

    def test_twistd_application_gets_the_filtered_observer(self):
        """As twistd runs the plugin: its --logfile, the config's log_level."""
        tmp = os.path.abspath(self.mktemp())
        os.makedirs(tmp)
        conf = os.path.join(tmp, "xenclone.conf")
        with open(conf, "w") as f:
            f.write('log_level = "warn"\nrun_dir = "%s"\nstate_dir = "%s"\n' % (tmp, tmp))
        logfile = os.path.join(tmp, "daemon.log")
        options = ServerOptions()
        options.parseOptions(["--nodaemon", "--pidfile=", "--logfile", logfile,
                              "xenclone", "--config", conf])
        from xenclone import tap
        service = tap.makeService(options.subOptions)
        application = Application("xenclone")
        service.setServiceParent(application)
        observer = application.getComponent(ILogObserver)
        log = Logger(observer=observer)
        log.info("an info line")
        log.warn("a warning line")
        with open(logfile) as f:
            text = f.read()
        self.assertNotIn("an info line", text)
        self.assertIn("a warning line", text)


class QuietFactoriesTests(unittest.TestCase):
    def test_no_starting_factory_lines(self):
        from xenclone.service import make_service
        self.patch(Factory, "noisy", True)
        make_service(load_daemon_config(None), task.Clock())
        self.assertFalse(Factory.noisy)


class HelperOutputTests(unittest.TestCase):
    """Under systemd (JOURNAL_STREAM) a helper's output is the daemon's:
    the journal; elsewhere a file in run_dir."""

    def spawn(self, environ):
        runs = []
        self.patch(subprocess, "run", lambda argv, **kw: runs.append(kw))
        log_path = os.path.abspath(self.mktemp())
        helper = helpers.HelperProcess(task.Clock(), "memory server", "xenclone.memserver_process",
                                       [], "/nonexistent.sock", log_path, environ=environ)
        helper._spawn()
        return runs[0], log_path, helper

    def test_journal_inherited(self):
        kw, log_path, helper = self.spawn({"JOURNAL_STREAM": "8:12345"})
        self.assertNotIn("stdout", kw)
        self.assertNotIn("stderr", kw)
        self.assertFalse(os.path.exists(log_path))
        self.assertEqual(helper.where_logged(), "the journal")

    def test_file_elsewhere(self):
        kw, log_path, helper = self.spawn({})
        self.assertEqual(kw["stdout"].name, log_path)
        self.assertIs(kw["stderr"], kw["stdout"])
        self.assertEqual(helper.where_logged(), log_path)
