"""``xenclone demo --plot``: the plotting library is checked before the
run, and the plot has enough points to draw a short run, with its title."""

import argparse
import importlib.util
import os

from twisted.internet import defer, task
from twisted.trial import unittest

from tests.test_observe import FakeProto
from xenclone.control_client import CliError
from xenclone.selftests import plot, scenarios


class FakeSession:
    """What launch_job asks of a Session, answered at once."""

    def __init__(self, clock):
        self.reactor = clock
        self.proto = FakeProto()

    def call(self, op, **fields):
        answers = {
            "create": {}, "pids": {"daemon": os.getpid()},
            "bless": {"npages": 4096, "nonzero_pages": 4000},
            "launch": {"clones": [{"domid": 2, "name": "demo.1"}, {"domid": 3, "name": "demo.2"}]},
            "wait": {"name": "demo.%s" % fields.get("domain"), "result": 1, "expected": 1,
                     "state": "done", "launch_ms": 1.0, "faults": 10}}
        return defer.succeed(answers[op])


class DemoPlotTests(unittest.TestCase):
    def test_missing_library_reported_before_the_run(self):
        self.patch(importlib.util, "find_spec",
                   lambda name, *a: None if name == "matplotlib" else object())
        self.patch(scenarios, "Session", lambda *a, **k: self.fail("the run started"))
        args = argparse.Namespace(scenario="demo", plot="out.png", clones=2, memory_mib=16,
                                  json=False)
        failure = self.failureResultOf(scenarios.run_scenario(task.Clock(), args, {}), CliError)
        self.assertIn("pip install xenclone[plot]", str(failure.value))
        self.assertEqual(failure.value.code, 2)

    def test_short_run_drawn_with_enough_points_and_named(self):
        drawn = []
        self.patch(plot, "plot_memory", lambda samples, budget, path, title: drawn.append(
            (len(samples), title)))
        clock = task.Clock()
        session = FakeSession(clock)
        d = scenarios.launch_job(session, 2, 16, plot="out.png")
        self.assertNoResult(d)           # the run was over at once: its end state is sampled
        clock.pump([scenarios.PLOT_INTERVAL] * 60)
        result = self.successResultOf(d)
        [(points, title)] = drawn
        self.assertEqual(points, scenarios.PLOT_SAMPLES)
        self.assertEqual(result["plot_samples"], points)
        self.assertIn("demo: 2 clones of a 16 MiB master", title)
        # The ledger's figures: the kernel's view is too slow to poll a short run.
        self.assertEqual(set(map(repr, session.proto.requests)), {repr(("host", {"kernel": False}))})

    def test_ledger_sample(self):
        host = {"ledger": {"private_pages": 40, "resident_pages": 250,
                           "evictions": {"drop-clean": 5, "page-out": 1}}, "kernel": None}
        self.assertEqual(plot.sample_from_host(0.5, host), {
            "t": 0.5, "resident": 250, "shared": 210, "private": 40, "evicted": 6})
