"""Progress of long operations: the daemon's events (control/progress.py)
and the command's display of them (cli/progress.py)."""

import io
import types

from twisted.internet import defer, task
from twisted.trial import unittest

from xenclone.cli import progress as shown
from xenclone.control.progress import WithProgress
from xenclone.wire import WireError


class Link:
    """The requester's end as WithProgress uses it."""

    def __init__(self):
        self.connected = True
        self.events = []

    def send_event(self, event, **fields):
        self.events.append(dict(fields, event=event))


class Ops:
    """Controller ops that end when the test says."""

    def __init__(self):
        self.pending = defer.Deferred()

    def op_launch(self, msg):
        return self.pending

    def op_evict(self, msg):
        raise WireError("no-domain", "unknown domain %r" % msg["domain"])

    def op_list(self, msg):
        return {"domains": []}


class Dom:
    def __init__(self, domid, image):
        self.domid, self.image = domid, image


def clone(domid, image="web"):
    return Dom(domid, image)


def no_clone(msg):
    raise WireError("no-domain", "unknown domain %r" % msg["domain"])


class DaemonSideTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.link = Link()
        self.ops = Ops()
        self.attached = set()
        self.controller = types.SimpleNamespace(
            domains={1: clone(1, None)}, _clone=no_clone,
            ledger=types.SimpleNamespace(has_clone=self.attached.__contains__))
        self.handler = WithProgress(self.ops, self.controller, self.link, self.clock)

    def figures(self):
        return [(e["done"], e["total"], e["stage"]) for e in self.link.events]

    def test_launch_streams_changes_then_the_end(self):
        d = self.handler.op_launch({"id": 7, "image": "web", "count": 3, "progress": True})
        self.assertEqual(self.link.events, [])      # an op done within POLL_S shows nothing
        self.clock.advance(0.25)
        self.controller.domains[2] = clone(2)       # launching: not attached yet
        self.clock.advance(0.25)
        self.attached.add(2)
        self.clock.advance(0.25)
        self.controller.domains[3] = clone(3)
        self.controller.domains[4] = clone(4)
        self.attached.update((3, 4))
        self.ops.pending.callback({"clones": [2, 3, 4]})
        self.assertEqual(self.successResultOf(d), {"clones": [2, 3, 4]})
        self.assertEqual(self.figures(), [(0, 3, "launching"), (1, 3, "launching"),
                                          (3, 3, "launching")])
        self.assertEqual({(e["event"], e["request"], e["of"], e["unit"])
                          for e in self.link.events}, {("progress", 7, "launch", "clones")})
        self.clock.advance(5)
        self.assertEqual(len(self.link.events), 3)       # stopped with the op

    def test_nothing_without_asking(self):
        d = self.handler.op_launch({"image": "web", "count": 3})
        self.assertIs(d, self.ops.pending)
        self.clock.advance(1)
        self.assertEqual(self.link.events, [])
        self.assertEqual(self.handler.op_list({}), {"domains": []})

    def test_refusal_sends_nothing(self):
        self.assertRaises(WireError, self.handler.op_evict,
                          {"domain": "ghost", "to": 0, "progress": True})
        self.assertEqual(self.link.events, [])

    def test_failure_ends_without_a_last_event(self):
        d = self.handler.op_launch({"image": "web", "count": 2, "progress": True})
        self.clock.advance(0.25)
        self.ops.pending.errback(WireError("unknown-image", "no image 'web'"))
        self.failureResultOf(d, WireError)
        self.assertEqual(self.figures(), [(0, 2, "launching")])

    def test_quick_op_shows_nothing_but_its_end(self):
        d = self.handler.op_launch({"image": "web", "count": 1, "progress": True})
        self.controller.domains[2] = clone(2)
        self.attached.add(2)
        self.ops.pending.callback({"clones": [2]})
        self.successResultOf(d)
        self.assertEqual(self.figures(), [(1, 1, "launching")])

    def test_gone_command_or_broken_probe_never_fails_the_op(self):
        d = self.handler.op_launch({"image": "web", "count": 2, "progress": True})
        self.clock.advance(0.25)
        self.controller.domains = None     # the probe now raises: logged, not raised
        self.clock.advance(0.25)
        self.link.connected = False        # and the command goes: nothing more is read
        self.clock.advance(1)
        self.ops.pending.callback({"clones": []})
        self.assertEqual(self.successResultOf(d), {"clones": []})
        self.assertEqual(len(self.link.events), 1)
        self.assertEqual(len(self.flushLoggedErrors(AttributeError)), 1)


def event(done, total, stage="launching", unit="clones", op="launch"):
    return {"event": "progress", "of": op, "done": done, "total": total, "unit": unit,
            "stage": stage}


class CommandSideTests(unittest.TestCase):
    def test_lines_at_most_one_a_second_and_the_last(self):
        clock, out = task.Clock(), io.StringIO()
        lines = shown.Lines(clock, "web", out)
        lines.event(event(0, 16))
        clock.advance(0.5)
        lines.event(event(4, 16))        # held: too soon
        clock.advance(0.5)
        lines.event(event(9, 16))
        lines.event(event(16, 16))       # the end: always
        lines.close()
        self.assertEqual(out.getvalue().splitlines(), [
            "launch web: launching: 0/16 clones", "launch web: launching: 9/16 clones",
            "launch web: launching: 16/16 clones"])

    def test_held_line_shown_at_close(self):
        clock, out = task.Clock(), io.StringIO()
        lines = shown.Lines(clock, "web.1", out)
        lines.event(event(0, 4096, "filling", "pages", "hoard"))
        lines.event(event(2048, 4096, "filling", "pages", "hoard"))
        lines.close()
        self.assertEqual(out.getvalue().splitlines()[-1], "hoard web.1: filling: 8M of 16M")

    def test_bar_draws_figures_and_goes(self):
        clock, out = task.Clock(), io.StringIO()
        bar = shown.Bar(clock, "web", out)
        bar.event(event(3, 16))
        self.assertIn("launch web: launching", out.getvalue())
        self.assertIn("3/16", out.getvalue())
        bar.close()
        self.assertFalse(bar.redraw.running)

    def test_bar_without_total_shows_time(self):
        clock, out = task.Clock(), io.StringIO()
        bar = shown.Bar(clock, "m", out)
        bar.event(event(None, None, "capturing and storing", "", "bless"))
        self.assertIn("bless m: capturing and storing: [00:00]", out.getvalue())
        clock.advance(shown.REDRAW_S)
        bar.close()

    def test_asked_for_long_ops_only_and_never_with_json(self):
        args = types.SimpleNamespace(json=False)
        self.assertTrue(shown.wanted("launch", {}, args))
        self.assertTrue(shown.wanted("hoard", {"wait": True}, args))
        self.assertFalse(shown.wanted("hoard", {"wait": False}, args))
        self.assertFalse(shown.wanted("list", {}, args))
        self.assertFalse(shown.wanted("launch", {}, types.SimpleNamespace(json=True)))
