"""Observing the host: ``xenclone top``, the /metrics endpoint, memory plots."""

import argparse
import io
import re
import struct
import sys

from twisted.application.service import IService
from twisted.internet import defer, reactor, task
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool, readBody

from xenclone.cli import top
from xenclone.metrics import make_metrics_service
from xenclone.selftests.plot import MemorySampler, plot_memory
from xenclone.wire import ConnectionLost, Message, WireError

HOST = {
    "backend": "kvm", "policy": "clock", "stalled": None,
    "ledger": {"budget_pages": 1000, "allocated_pages": 310, "cached_image_pages": 270,
               "private_pages": 50, "resident_pages": 255, "peak_pages": 400, "clones": 2,
               "evictions": {"drop-clean": 5, "drop-shared": 2, "page-out": 1}},
    "kernel": {"allocated_pages": 300, "resident_pages": 250, "private_pages": 40,
               "image_cache_pages": {"web": 200, "db": 60},
               "clones": {"2": {"shared": 100, "private": 20, "zero": 30, "absent": 50},
                          "3": {"shared": 110, "private": 20, "zero": 0, "absent": 70}}},
}
DOMAINS = [
    {"domid": 1, "name": "web-master", "role": "master", "image": None, "state": "paused",
     "memory_mib": 1},
    {"domid": 2, "name": "web.1", "role": "clone", "image": "web", "state": "running",
     "memory_mib": 1},
    {"domid": 3, "name": "web.2", "role": "clone", "image": "web", "state": "done",
     "memory_mib": 1},
    {"domid": 4, "name": "web.3", "role": "clone", "image": "web", "state": "running",
     "memory_mib": 1},
]


def clone_stats(resident, shared, private, zero, paged_out, faults, target=None, limit=None):
    return {"nominal_pages": 256, "resident_pages": resident, "shared_pages": shared,
            "private_pages": private, "zero_pages": zero, "paged_out_pages": paged_out,
            "evicted_pages": 0, "evictions": {}, "faults": faults, "target_pages": target,
            "limit_pages": limit, "flags": {}}


INFO = {1: {"nominal_pages": 256, "faults": 0},
        # web.1 is a fork: info adds its frames as the hypervisor counts them.
        2: dict(clone_stats(150, 100, 20, 30, 4, 154, limit=500),
                hypervisor={"own": 40, "shared": 900, "paged_out": 7, "max": 300}),
        3: clone_stats(130, 110, 20, 0, 0, 131, target=64)}
# domid 4 is destroyed between ``list`` and its ``info``


class FakeProto:
    def __init__(self, host=HOST):
        self.host = host
        self.requests = []

    def request(self, op, **fields):
        self.requests.append((op, fields))
        if op == "host":
            if isinstance(self.host, Exception):
                return defer.fail(self.host)
            return defer.succeed(Message(dict(self.host, id=1, ok=True)))
        if op == "list":
            return defer.succeed(Message({"id": 2, "ok": True, "domains": DOMAINS}))
        if op == "info":
            domid = fields["domain"]
            if domid not in INFO:
                return defer.fail(WireError("no-domain", "unknown domain %r" % domid))
            dom = next(d for d in DOMAINS if d["domid"] == domid)
            return defer.succeed(Message(dict(dom, id=3, ok=True, **INFO[domid])))
        raise AssertionError("unexpected op %r" % op)


def top_args(*argv):
    parser = argparse.ArgumentParser()
    top.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["top"] + list(argv))


class TopTests(unittest.TestCase):
    def run_top(self, proto, *argv):
        self.err = io.StringIO()
        self.patch(sys, "stderr", self.err)
        clock, out = task.Clock(), io.StringIO()
        d = top.run_top(clock, proto, top_args(*argv), out=out)
        code = []
        d.addCallback(code.append)
        return clock, out, code

    def test_batch_frames(self):
        proto = FakeProto()
        clock, out, code = self.run_top(proto, "--batch", "--iterations", "2", "--delay", "0.5")
        self.assertEqual(code, [])             # one frame shown, one to go
        clock.advance(0.5)
        self.assertEqual(code, [0])
        text = out.getvalue()
        self.assertNotIn(top.CLEAR, text)
        frames = text.strip("\n").split("\n\n")
        self.assertEqual(len(frames), 2)
        self.assertEqual(frames[0], frames[1])
        lines = frames[0].splitlines()
        self.assertEqual(lines[0], "budget 3.9M  allocated 1.2M (kernel)  resident 1000K  "
                                   "private 160K  cached 1M  evictions drop-clean=5 "
                                   "drop-shared=2 page-out=1  policy clock")
        self.assertEqual(lines[1].split(), [title for title, _ in top.COLUMNS])
        rows = [line.split() for line in lines[2:]]
        self.assertEqual(rows, [
            ["web-master", "1", "master", "paused", "-", "-", "-", "-", "-", "0", "-", "-",
             "-", "-"],
            ["web.1", "2", "clone", "running", "600K", "400K", "80K", "120K", "16K", "154", "-",
             "2M", "160K", "28K"],
            ["web.2", "3", "clone", "done", "520K", "440K", "80K", "0", "0", "131", "256K", "-",
             "-", "-"],
        ])
        # Numbers are right-aligned under their titles.
        self.assertEqual(len({len(line) for line in lines[1:]}), 1)
        first_frame = proto.requests[:6]
        self.assertEqual([f["domain"] for op, f in first_frame if op == "info"], [1, 2, 3, 4])

    def test_screen_mode_clears(self):
        clock, out, code = self.run_top(FakeProto(), "--iterations", "1")
        self.assertEqual(code, [0])
        self.assertTrue(out.getvalue().startswith(top.CLEAR + "budget 3.9M"))

    def test_stalled_shown(self):
        clock, out, code = self.run_top(FakeProto(dict(HOST, stalled="no victims")),
                                        "-b", "-i", "1")
        self.assertIn("  STALLED: no victims\n", out.getvalue())

    def test_failed_frame_shown_and_top_goes_on(self):
        proto = FakeProto(WireError("failed", "scan: unknown domain 9"))
        clock, out, code = self.run_top(proto, "-b", "-i", "2")
        proto.host = HOST
        clock.advance(1)
        self.assertEqual(code, [0])
        self.assertTrue(out.getvalue().startswith("xenclone top: scan: unknown domain 9\n\nbudget"))

    def test_daemon_gone(self):
        clock, out, code = self.run_top(FakeProto(ConnectionLost()), "-b")
        self.assertEqual(code, [top.EXIT_UNREACHABLE])
        self.assertEqual(out.getvalue(), "")
        self.assertEqual(self.err.getvalue(), "xenclone top: connection lost\n")

    def test_bad_delay(self):
        clock, out, code = self.run_top(FakeProto(), "--delay", "0")
        self.assertEqual(code, [top.EXIT_USAGE])
        self.assertEqual(out.getvalue(), "")
        self.assertIn("--delay must be above 0", self.err.getvalue())


# -- /metrics

class FakeDomain:
    def __init__(self, name, role, fill_mode="lazy"):
        self.name = name
        self.role = role
        self.fill_mode = fill_mode


class FakeForkBackend:
    """A fork's frames as the hypervisor counts them."""

    def frames(self, domid):
        return defer.succeed({"own": 40, "shared": 900, "paged_out": 7, "max": 300})


class FakePager:
    def __init__(self, stats):
        self._stats = stats

    def stats(self, domid):
        return self._stats.get(domid)


class FakeController:
    def __init__(self, fail=False):
        self.fail = fail
        self.domains = {1: FakeDomain("web-master", "master"),
                        2: FakeDomain("web.1", "clone", fill_mode="fork"),
                        3: FakeDomain('odd "name"\\x', "clone"), 5: FakeDomain("new", "clone")}
        self.backend = FakeForkBackend()
        self.pager = FakePager({2: INFO[2], 3: INFO[3]})    # 5: not attached yet

    def op_host(self, msg):
        if self.fail:
            return defer.fail(RuntimeError("kernel view failed\nsecond line"))
        return defer.succeed(HOST)


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (-?[0-9.e+]+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\["\\n])*)"(,|$)')


def parse_exposition(text):
    """Checks the 0.0.4 text format line by line; returns {(name, labels): value}
    and {name: type}."""
    assert text.endswith("\n"), "exposition must end with a newline"
    types, helps, samples = {}, set(), {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split()[2]
            assert name not in helps, "second HELP for %s" % name
            helps.add(name)
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert kind in ("gauge", "counter") and name not in types, line
            types[name] = kind
        else:
            m = SAMPLE.match(line)
            assert m, "bad sample line %r" % line
            name, labels = m.group(1), {}
            assert types.get(name) and name in helps, "%s has no HELP/TYPE before it" % name
            assert name == list(types)[-1], "samples of %s are not together" % name
            pos = 0
            for lm in LABEL.finditer(m.group(2) or ""):
                assert lm.start() == pos, "bad labels in %r" % line
                pos = lm.end()
                labels[lm.group(1)] = re.sub(r'\\(.)', lambda e: {"n": "\n"}.get(e.group(1),
                                                                               e.group(1)),
                                             lm.group(2))
            assert pos == len(m.group(2) or ""), "bad labels in %r" % line
            key = (name, tuple(sorted(labels.items())))
            assert key not in samples, "duplicate sample %r" % (key,)
            samples[key] = float(m.group(3))
    return samples, types


class MetricsTests(unittest.TestCase):
    @defer.inlineCallbacks
    def get(self, controller, path):
        svc = make_metrics_service(reactor, controller, "tcp:0:interface=127.0.0.1")
        self.assertTrue(IService.providedBy(svc))
        port = yield svc.endpoint.listen(svc.factory)
        self.addCleanup(port.stopListening)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        url = "http://127.0.0.1:%d%s" % (port.getHost().port, path)
        response = yield Agent(reactor, pool=pool).request(b"GET", url.encode())
        body = yield readBody(response)
        return response, body.decode()

    @defer.inlineCallbacks
    def test_exposition(self):
        response, body = yield self.get(FakeController(), "/metrics")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"),
                         [b"text/plain; version=0.0.4; charset=utf-8"])
        samples, types = parse_exposition(body)
        self.assertEqual(types, {
            "xenclone_host_budget_pages": "gauge", "xenclone_host_allocated_pages": "gauge",
            "xenclone_host_resident_pages": "gauge", "xenclone_evictions_total": "counter",
            "xenclone_clone_pages": "gauge", "xenclone_clone_faults_total": "counter",
            "xenclone_clone_hypervisor_pages": "gauge"})
        odd = 'odd "name"\\x'
        expected = {
            ("xenclone_host_budget_pages", ()): 1000,
            ("xenclone_host_allocated_pages", (("source", "kernel"),)): 300,
            ("xenclone_host_allocated_pages", (("source", "ledger"),)): 310,
            ("xenclone_host_resident_pages", ()): 250,
            ("xenclone_evictions_total", (("class", "drop-clean"),)): 5,
            ("xenclone_evictions_total", (("class", "drop-shared"),)): 2,
            ("xenclone_evictions_total", (("class", "page-out"),)): 1,
            ("xenclone_clone_faults_total", (("domain", "web.1"),)): 154,
            ("xenclone_clone_faults_total", (("domain", odd),)): 131,
            # web.1 is a fork: its frames as the hypervisor counts them too.
            ("xenclone_clone_hypervisor_pages", (("domain", "web.1"), ("kind", "own"))): 40,
            ("xenclone_clone_hypervisor_pages", (("domain", "web.1"), ("kind", "shared"))): 900,
            ("xenclone_clone_hypervisor_pages", (("domain", "web.1"), ("kind", "paged_out"))): 7,
        }
        for name, stats in (("web.1", INFO[2]), (odd, INFO[3])):
            for kind, key in (("shared", "shared_pages"), ("private", "private_pages"),
                              ("zero", "zero_pages"), ("paged_out", "paged_out_pages"),
                              ("resident", "resident_pages")):
                expected[("xenclone_clone_pages", (("domain", name), ("kind", kind)))] = stats[key]
        self.assertEqual(samples, expected)
        self.assertIn('domain="odd \\"name\\"\\\\x"', body)

    @defer.inlineCallbacks
    def test_other_paths_404(self):
        for path in ("/", "/metrics/", "/metricsx", "/favicon.ico"):
            response, body = yield self.get(FakeController(), path)
            self.assertEqual(response.code, 404, path)
            self.assertNotIn("xenclone_", body)

    @defer.inlineCallbacks
    def test_error_500_one_line(self):
        response, body = yield self.get(FakeController(fail=True), "/metrics")
        self.assertEqual(response.code, 500)
        self.assertEqual(body, "error building metrics: RuntimeError: kernel view failed\n")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


# -- plots

class PlotTests(unittest.TestCase):
    def test_png(self):
        samples = [{"t": i * 0.1, "resident": 10 * i, "shared": 8 * i, "private": 2 * i,
                    "evicted": max(0, 5 * (i - 20))} for i in range(50)]
        path = self.mktemp()
        plot_memory(samples, 400, path)
        with open(path, "rb") as f:
            data = f.read()
        self.assertEqual(data[:8], b"\x89PNG\r\n\x1a\n")
        self.assertEqual(data[12:16], b"IHDR")
        self.assertEqual(struct.unpack("!II", data[16:24]), (900, 500))
        self.assertGreater(len(data), 10000)

    def test_sampler(self):
        clock = task.Clock()
        host = dict(HOST, ledger=dict(HOST["ledger"], evictions={"drop-clean": 0}))
        proto = FakeProto(host)
        sampler = MemorySampler(clock, proto, interval=0.1)
        sampler.start()
        proto.host = HOST
        clock.advance(0.1)
        proto.host = WireError("failed", "scan: unknown domain 4")   # one lost sample
        clock.advance(0.1)
        proto.host = HOST
        clock.advance(0.1)
        got = []
        sampler.stop().addCallback(got.append)
        self.assertEqual(len(got), 1)
        self.assertEqual([s["t"] for s in got[0]], [0, 0.1, 0.30000000000000004])
        self.assertEqual(got[0][0], {"t": 0, "resident": 250, "shared": 210, "private": 40,
                                     "evicted": 0})
        self.assertEqual(got[0][1]["evicted"], 8)
        self.assertEqual(sampler.budget_pages, 1000)
        clock.advance(1)
        self.assertEqual(len(proto.requests), 4)     # stopped: no more polls

    def test_sampler_daemon_gone(self):
        sampler = MemorySampler(task.Clock(), FakeProto(ConnectionLost()))
        sampler.start()
        return self.assertFailure(sampler.stop(), ConnectionLost)
