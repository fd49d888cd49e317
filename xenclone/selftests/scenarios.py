"""``xenclone demo`` and ``xenclone selftest``: whole jobs on this host.

They talk to the running daemon; where none runs, they start a private one
(the same service tree, in this process, with its helpers in a temporary
directory) and take it down afterwards.
"""

import importlib.util
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

from twisted.internet import defer, task
from twisted.logger import globalLogBeginner, textFileLogObserver

from xenclone import hostmem
from xenclone.config import load_daemon_config
from xenclone.control_client import EXIT_FAILED, CliError, ask, connect
from xenclone.helpers import socket_owner_pid
from xenclone.selftests import crash_scenarios, memory_scenarios
from xenclone.selftests.hostile_scenario import scenario_hostile_peer
from xenclone.selftests.xenstore_scenario import scenario_xenstore
from xenclone.wire import WireError
from xenclone.xenstore.plane import xenstore_mode, xenstore_socket

# A demo's launch-to-done is about a second: sample the ledger often enough
# to draw it (each poll waits for the previous answer, so a busy host
# gets fewer, not overlapping, polls), and draw at least PLOT_SAMPLES
# points, the run's end state after a run that was over sooner.
PLOT_INTERVAL = 0.005
PLOT_SAMPLES = 50


class Session:
    """A control connection, to the running daemon or a private one."""

    def __init__(self, reactor, settings, log_to_file=False):
        self.reactor = reactor
        self.settings = settings
        self.log_to_file = log_to_file     # only where no one else logs (not trial)
        self.proto = None
        self.service = None
        self.tmp = None
        self._pids = {}

    @defer.inlineCallbacks
    def open(self):
        try:
            self.proto = yield connect(self.reactor, self.settings["control_socket"])
            return self
        except CliError:
            pass
        from xenclone.service import make_service
        self.tmp = tempfile.mkdtemp(prefix="xenclone-")
        run, state = os.path.join(self.tmp, "run"), os.path.join(self.tmp, "state")
        self.settings = dict(self.settings, run_dir=run, state_dir=state,
                             memserver_dir=os.path.join(state, "images"),
                             control_socket=os.path.join(run, "control.sock"))
        if self.log_to_file:
            # Beside the helpers' logs, kept with XENCLONE_KEEP_TMP.
            log = open(os.path.join(self.tmp, "daemon.log"), "a")
            globalLogBeginner.beginLoggingTo([textFileLogObserver(log)],
                                             redirectStandardIO=False)
        self.service = make_service(self.settings, self.reactor)
        self.service.startService()
        yield self.service.getServiceNamed("core").ready
        yield self.service.getServiceNamed("xenstore").ready
        self.proto = yield connect(self.reactor, self.settings["control_socket"])
        # Known now, so close() can stop the helpers whatever happens later.
        self._pids = yield self.call("pids")
        return self

    def call(self, op, **fields):
        return ask(self.proto, op, **fields)

    @defer.inlineCallbacks
    def close(self):
        """Take a private daemon down with its helpers; whatever failed
        before must not hide behind a failure here."""
        if self.service is not None:
            try:
                self._pids = yield self.call("pids")    # a helper may have been restarted
                yield self.call("destroy_all")
            except WireError as e:
                print("xenclone: cleanup: %s" % e, file=sys.stderr)
        yield self.proto.close()
        if self.service is not None:
            yield self.service.stopService()
            if xenstore_mode(self.settings) == "embedded":     # never a real xenstored
                # Asked now, not at open: the daemon may have started a new one.
                self._pids["xenstore"] = socket_owner_pid(xenstore_socket(self.settings))
            for name in ("vmmhost", "memserver", "xenstore"):
                try:
                    os.kill(self._pids[name], 15)
                except (KeyError, TypeError, ProcessLookupError):
                    pass
            if os.environ.get("XENCLONE_KEEP_TMP"):
                print("xenclone: private daemon files kept in %s" % self.tmp, file=sys.stderr)
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)


def private_session(reactor):
    """A Session on a private daemon, whatever else runs on this host."""
    settings = dict(load_daemon_config(None), control_socket="/nonexistent/xenclone.sock")
    return Session(reactor, settings, log_to_file=True).open()


class PeakSampler:
    """Samples host memory from the kernel while a job runs."""

    def __init__(self, reactor, pids, interval=0.02):
        self.pids = pids
        self.peak = 0
        self._loop = task.LoopingCall(self.sample)
        self._loop.clock = reactor
        self._loop.start(interval)

    def sample(self):
        self.peak = max(self.peak, hostmem.host_bytes(self.pids))

    def stop(self):
        self.sample()
        self._loop.stop()


def _pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


@defer.inlineCallbacks
def launch_job(s, clones, memory_mib, name="demo", plot=None):
    """create → bless → launch → check; returns the figures.  With ``plot``
    (a PNG path), memory over time is drawn there."""
    master = "%s-master" % name
    yield s.call("create", config={"name": master, "memory": memory_mib})
    blessed = yield s.call("bless", domain=master, name=name)
    pids = yield s.call("pids")
    base = hostmem.host_bytes(list(pids.values()))
    sampler = PeakSampler(s.reactor, list(pids.values()))
    memory = None
    if plot:
        from xenclone.selftests.plot import MemorySampler
        memory = MemorySampler(s.reactor, s.proto, interval=PLOT_INTERVAL, kernel=False)
        memory.start()
    launched = yield s.call("launch", image=name, count=clones)
    infos = []
    for c in launched["clones"]:
        infos.append((yield s.call("wait", domain=c["domid"], timeout=600)))
    sampler.stop()
    if memory is not None:
        samples = yield memory.stop(min_samples=PLOT_SAMPLES)
        from xenclone.selftests.plot import plot_memory
        plot_memory(samples, memory.budget_pages, plot, title="xenclone %s: %d clones of a "
                    "%d MiB master, %s" % (name, clones, memory_mib,
                                           time.strftime("%Y-%m-%d %H:%M")))
    plotted = len(samples) if memory is not None else None
    wrong = ["%s: %s (expected %s, %s)" % (i["name"], i["result"], i["expected"], i["state"])
             for i in infos if i["result"] != i["expected"]]
    launch_ms = [i["launch_ms"] for i in infos if i["launch_ms"] is not None]
    npages = blessed["npages"]
    result = {
        "results_ok": not wrong and len(infos) == clones,
        "wrong": wrong,
        "clones": clones,
        "memory_mib": memory_mib,
        "launch_ms_p50": round(statistics.median(launch_ms), 3) if launch_ms else None,
        "launch_ms_p99": round(_pct(launch_ms, 0.99), 3) if launch_ms else None,
        "pages_nominal": npages * clones,
        "pages_faulted": sum(i["faults"] for i in infos),
        "host_peak_mib": round(sampler.peak / 2**20, 1),
        "host_base_mib": round(base / 2**20, 1),
        "eager_mib": memory_mib * clones,
        "image_stored_pages": blessed["nonzero_pages"],
        "domids": [c["domid"] for c in launched["clones"]],
        "image": name,
    }
    if plotted is not None:
        result["plot_samples"] = plotted
    return result


def _needs_plot_library(args):
    """Said before the run, not after it: the run may take minutes."""
    if args.scenario == "demo" and args.plot and importlib.util.find_spec("matplotlib") is None:
        raise CliError("demo --plot needs matplotlib: pip install xenclone[plot] "
                       "(or pip install matplotlib)", 2)


def _demo_text(r):
    return "\n".join([
        "xenclone demo: %d clones of a %d MiB master" % (r["clones"], r["memory_mib"]),
        "  answers            %s" % ("all right" if r["results_ok"] else "WRONG: %s" % r["wrong"]),
        "  launch latency     p50 %s ms, p99 %s ms" % (r["launch_ms_p50"], r["launch_ms_p99"]),
        "  pages faulted      %d of %d nominal (%.1f%%)" % (
            r["pages_faulted"], r["pages_nominal"], 100.0 * r["pages_faulted"] / r["pages_nominal"]),
        "  host memory peak   %.1f MiB, eager copies would need %d MiB (%.1f%%)" % (
            r["host_peak_mib"], r["eager_mib"], 100.0 * r["host_peak_mib"] / r["eager_mib"]),
    ])


@defer.inlineCallbacks
def scenario_launch(s):
    """8 clones: answers right, isolated, image unchanged, lazy; destroy frees pages."""
    r = yield launch_job(s, 8, 64, name="selftest-launch")
    checks = {"answers_right": r["results_ok"],
              "lazy": r["pages_faulted"] < r["pages_nominal"]}
    # The image is unchanged by the clones' writes: read back a page each wrote.
    img = yield s.call("image_check", image=r["image"])
    checks["image_unchanged"] = img["unchanged"]
    iso = yield s.call("isolation_check", image=r["image"])
    checks["clones_isolated"] = iso["isolated"]
    pids = yield s.call("pids")
    before = hostmem.pss_bytes(pids["vmmhost"])
    for domid in r["domids"]:
        yield s.call("destroy", domain=domid)
    after = hostmem.pss_bytes(pids["vmmhost"])
    r["vmmhost_pss_before_destroy_kib"] = before // 1024
    r["vmmhost_pss_after_destroy_kib"] = after // 1024
    checks["destroy_frees"] = after < before
    yield s.call("discard", image=r["image"], force=True)
    yield s.call("destroy", domain="%s-master" % r["image"])
    return checks, r


SCENARIOS = {"launch": (scenario_launch, scenario_launch.__doc__)}
SCENARIOS.update((name, (fn, fn.__doc__)) for name, fn in memory_scenarios.SCENARIOS.items())
SCENARIOS["xenstore"] = (scenario_xenstore, scenario_xenstore.__doc__)
SCENARIOS.update((name, (fn, fn.__doc__)) for name, fn in crash_scenarios.SCENARIOS.items())
SCENARIOS["hostile-peer"] = (scenario_hostile_peer, scenario_hostile_peer.__doc__)


@defer.inlineCallbacks
def run_scenario(reactor, args, settings):
    if args.scenario == "selftest" and args.list:
        for name, (_, doc) in sorted(SCENARIOS.items()):
            print("%-15s %s" % (name, doc.strip().splitlines()[0]))
        return 0
    names = getattr(args, "names", None) or sorted(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if args.scenario == "selftest" and unknown:
        raise CliError("unknown scenario(s): %s; see 'xenclone selftest --list'" % ", ".join(unknown), 2)
    _needs_plot_library(args)
    if args.scenario == "demo" and not (1 <= args.clones <= 256 and 16 <= args.memory_mib <= 65536):
        raise CliError("demo: --clones must be 1..256 and --memory-mib 16..65536", 2)
    s = yield Session(reactor, settings, log_to_file=True).open()
    try:
        if args.scenario == "demo":
            r = yield launch_job(s, args.clones, args.memory_mib, plot=args.plot)
            yield s.call("discard", image=r["image"], force=True)
            yield s.call("destroy", domain="demo-master")
            print(json.dumps(r, indent=2, sort_keys=True) if args.json else _demo_text(r))
            return 0 if r["results_ok"] else EXIT_FAILED
        report, ok = {}, True
        for name in names:
            try:
                checks, figures = yield SCENARIOS[name][0](s)
            except WireError as e:
                checks, figures = {"completed": False}, {"error": str(e)}
            passed = all(checks.values())
            ok = ok and passed
            report[name] = {"passed": passed, "checks": checks, "figures": figures}
            if not args.json:
                print("%-12s %s  %s%s" % (name, "PASS" if passed else "FAIL",
                                          " ".join("%s=%s" % kv for kv in sorted(checks.items())),
                                          "  error: %s" % figures["error"] if "error" in figures else ""))
        if args.json:
            print(json.dumps(report, indent=2, sort_keys=True))
        return 0 if ok else EXIT_FAILED
    finally:
        yield s.close()
