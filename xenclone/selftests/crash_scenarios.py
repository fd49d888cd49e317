"""Crash self-tests: the daemon killed, the memory server killed, the link
to a remote memory server cut, the page-out store full.  Each runs its own
scratch daemons (``scratch_daemon``), never the operator's, and ends by
checking every data page of every clone against the workload: 0 pages
lost, 0 clones lost."""

import os
import shutil
import signal
import subprocess

from twisted.internet import defer

from xenclone.control_client import connect
from xenclone.helper_gate import hello
from xenclone.selftests.memory_scenarios import answers_right, bless_master, disagreements
from xenclone.selftests.scratch_daemon import ScratchDaemon, sleep
from xenclone.wire import WireError



@defer.inlineCallbacks
def _finish(d, clones):
    """Wait for the clones; their answers, audits and every data page."""
    right, infos = yield answers_right(d, clones)
    disagree = yield disagreements(d, clones)
    lost = checked = 0
    for c in clones:
        check = yield d.call("memory_check", domain=c["domid"])
        lost += check["lost_pages"] + len(check["unchecked"])
        checked += check["checked_pages"]
    return ({"answers_right": right, "no_page_lost": lost == 0 and checked > 0,
             "ledger_matches_kernel": disagree == 0},
            {"clones": len(clones), "clones_right": sum(i["result"] == i["expected"]
                                                        for i in infos),
             "pages_verified": checked, "pages_lost": lost, "pages_disagreeing": disagree})


@defer.inlineCallbacks
def _settings_kept(d, clones, limit, evict, budget):
    """What the operator set before a restart holds after it."""
    infos = yield _infos(d, clones)
    host = yield d.call("host")
    return host["pressure"]["ceiling_pages"] == budget and all(
        i["limit_pages"] == limit and i["flags"]["evict"] == sorted(evict) for i in infos)


@defer.inlineCallbacks
def _until(reactor, probe, seconds, what):
    for _ in range(int(seconds / 0.05)):
        if (yield probe()):
            return
        yield sleep(reactor, 0.05)
    raise WireError("timeout", "%s did not happen within %d s" % (what, seconds))


@defer.inlineCallbacks
def _storm(d, name, memory, count, knobs=None, **workload):
    """A master blessed, ``count`` clones launched paused, given ``knobs``
    and let go together."""
    yield bless_master(d, name, memory, **workload)
    clones = (yield d.call("launch", image=name, count=count, paused=True))["clones"]
    for c in clones:
        if knobs:
            yield d.call("set", domain=c["domid"], knobs=knobs)
        yield d.call("unpause", domain=c["domid"])
    return clones


def _infos(d, clones):
    return defer.gatherResults([d.call("info", domain=c["domid"]) for c in clones])


@defer.inlineCallbacks
def scenario_kill_daemon(s):
    """The daemon (pager and ledger) killed -9 mid fault storm: a new one takes the clones back."""
    d = ScratchDaemon(s.reactor)
    try:
        yield d.start()
        # Limits below what each writes: pages are paged out all along.
        clones = yield _storm(d, "kd", 64, 3, {"limit": 2048, "evict": ["drop-clean", "page-out"]},
                              read_percent=100, write_pages=3000)

        @defer.inlineCallbacks
        def paging_out():
            return any(i["paged_out_pages"] for i in (yield _infos(d, clones)))
        yield _until(s.reactor, paging_out, 60, "a page-out")
        budget = (yield d.call("host"))["pressure"]["ceiling_pages"] - 1
        yield d.call("set_host", budget_pages=budget)
        running = sum(i["state"] == "running" for i in (yield _infos(d, clones)))
        yield d.kill()

        # No daemon: the clones wait in their faults, kept by the VMM host.
        vmm_sock = os.path.join(d.run_dir, "vmmhost.sock")
        vmm = yield hello((yield connect(s.reactor, vmm_sock)), vmm_sock)
        before = (yield vmm.request("list")).fields["domains"]
        yield sleep(s.reactor, 1.0)
        after = (yield vmm.request("list")).fields["domains"]
        yield vmm.close()

        yield d.start()
        listed = {x["domid"] for x in (yield d.call("list"))["domains"]}
        kept = yield _settings_kept(d, clones, 2048, ["drop-clean", "page-out"], budget)
        checks, figures = yield _finish(d, clones)
        [new] = (yield d.call("launch", image="kd"))["clones"]
        checks.update(
            killed_mid_storm=running > 0,
            clones_kept_while_down=before == after and
            [x["result"] for x in after if x["role"] == "clone"] == [None] * len(clones),
            clones_taken_back={c["domid"] for c in clones} <= listed,
            clone_ids_go_on=new["clone_id"] == len(clones) + 1,
            settings_kept=kept)
        figures.update(running_when_killed=running, kills_survived=1)
        return checks, figures
    finally:
        yield d.stop()


@defer.inlineCallbacks
def scenario_kill_memserver(s):
    """The memory server killed -9 while clones fetch: it is started again and they finish."""
    d = ScratchDaemon(s.reactor, {"memserver_request_timeout_s": 2})
    try:
        yield d.start()
        yield bless_master(d, "km", 64, read_percent=60)
        # The host keeps a sliver of the image: most faults fetch.
        yield d.call("set_host", budget_pages=2048)
        clones = (yield d.call("launch", image="km", count=3))["clones"]

        @defer.inlineCallbacks
        def fetching():
            return min(i["faults"] for i in (yield _infos(d, clones))) > 200
        yield _until(s.reactor, fetching, 60, "fetches by every clone")
        old = (yield d.call("pids"))["memserver"]
        running = sum(i["state"] == "running" for i in (yield _infos(d, clones)))
        os.kill(old, signal.SIGKILL)
        checks, figures = yield _finish(d, clones)
        new = (yield d.call("pids"))["memserver"]
        checks.update(killed_mid_storm=running > 0, server_started_again=new != old)
        figures.update(running_when_killed=running, kills_survived=1)
        return checks, figures
    finally:
        yield d.stop()


def _ip(*args):
    subprocess.run([shutil.which("ip") or "/usr/sbin/ip"] + list(args), check=True,
                   capture_output=True, timeout=30)


class _Link:
    """A network namespace joined to this one by a veth pair."""

    def __init__(self, tag):
        self.ns = "xc-ms-" + tag
        self.inner, self.outer = "xcmi" + tag, "xcmo" + tag     # under 16 bytes
        self.server_ip, self.client_ip = "10.214.0.1", "10.214.0.2"

    def up(self):
        _ip("netns", "add", self.ns)
        _ip("link", "add", self.outer, "type", "veth", "peer", "name", self.inner,
            "netns", self.ns)
        _ip("-n", self.ns, "addr", "add", self.server_ip + "/30", "dev", self.inner)
        _ip("addr", "add", self.client_ip + "/30", "dev", self.outer)
        for args in (("-n", self.ns, "link", "set", "lo", "up"),
                     ("-n", self.ns, "link", "set", self.inner, "up"),
                     ("link", "set", self.outer, "up")):
            _ip(*args)

    def cut(self, cut):
        # The far end down: this end has no carrier and drops what it sends,
        # silently, as a pulled cable does (no reset reaches either side).
        _ip("-n", self.ns, "link", "set", self.inner, "down" if cut else "up")

    def remove(self):
        subprocess.run([shutil.which("ip") or "/usr/sbin/ip", "netns", "del", self.ns],
                       capture_output=True, timeout=30)    # takes the veth pair with it


@defer.inlineCallbacks
def scenario_cut_memserver(s):
    """The TCP link to another host's memory server cut mid storm: faults wait, then go on."""
    link = _Link("%05d" % (os.getpid() % 100000))
    link.remove()      # a run killed before its cleanup left it
    link.up()
    port = 7443
    server = ScratchDaemon(s.reactor, {"memserver_tcp": "%s:%d" % (link.server_ip, port)},
                           netns=link.ns)
    client = None
    try:
        yield server.start()
        yield bless_master(server, "cut", 64, read_percent=60)
        client = ScratchDaemon(s.reactor, {
            "memserver_remote": "%s:%d" % (link.server_ip, port),
            "memserver_remote_ca": os.path.join(server.state_dir, "tls", "ca.pem"),
            "memserver_remote_token_file": os.path.join(server.state_dir, "memserver.token"),
            "memserver_request_timeout_s": 2})
        yield client.start()
        clones = (yield client.call("launch", image="cut", count=2))["clones"]

        @defer.inlineCallbacks
        def fetching():
            return min(i["faults"] for i in (yield _infos(client, clones))) > 100
        yield _until(s.reactor, fetching, 60, "fetches by every clone")
        link.cut(True)
        states = set()

        @defer.inlineCallbacks
        def waiting():
            now = {i["state"] for i in (yield _infos(client, clones))}
            states.update(now)
            return now == {"waiting-for-memory-server"}
        yield _until(s.reactor, waiting, 30, "waiting-for-memory-server")
        stuck = [i["faults"] for i in (yield _infos(client, clones))]
        yield sleep(s.reactor, 3.0)      # reconnects fail meanwhile, backing off
        still = [i["faults"] for i in (yield _infos(client, clones))]
        link.cut(False)
        checks, figures = yield _finish(client, clones)
        images = (yield client.call("images"))["images"]
        checks.update(clones_waited=stuck == still, state_shown="waiting-for-memory-server" in states,
                      image_is_a_mirror=[i.get("origin", {}).get("server") for i in images] ==
                      ["%s:%d" % (link.server_ip, port)])
        figures.update(cuts_survived=1, faults_when_cut=stuck)
        return checks, figures
    finally:
        if client is not None:
            yield client.stop()
        yield server.stop()
        link.remove()


@defer.inlineCallbacks
def scenario_page_out_full(s):
    """The page-out store's disk full: page-out pauses with a reason, nothing is dropped, and it resumes once there is room."""
    d = ScratchDaemon(s.reactor)
    store = os.path.join(d.state_dir, "pageout")
    os.makedirs(store, mode=0o700)
    # 1 MiB: room for 256 of the 2000 pages the clone must page out.
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", store],
                   check=True, capture_output=True, timeout=30)
    try:
        yield d.start()
        [clone] = yield _storm(d, "full", 16, 1, {"limit": 1024,
                                                  "evict": ["drop-clean", "page-out"]},
                               read_percent=100, write_pages=3000)

        @defer.inlineCallbacks
        def refused():
            return (yield d.call("info", domain=clone["domid"]))["pageout_error"]
        yield _until(s.reactor, refused, 120, "a page-out error")
        held = yield d.call("info", domain=clone["domid"])
        # Room again: page-out resumes by itself, within its backoff.
        subprocess.run(["mount", "-o", "remount,size=64m", store], check=True,
                       capture_output=True, timeout=30)

        @defer.inlineCallbacks
        def resumed():
            info = yield d.call("info", domain=clone["domid"])
            return not info["pageout_error"] and info["evictions"]["page-out"] > held[
                "evictions"]["page-out"] or info["state"] == "done"
        yield _until(s.reactor, resumed, 120, "page-out resuming")
        checks, figures = yield _finish(d, [clone])
        after = yield d.call("info", domain=clone["domid"])
        error = held["pageout_error"] or ""
        checks.update(stopped_with_reason="No space" in error and "paused" in error,
                      clone_kept=held["state"] in ("running", "done"),
                      resumed_when_room=after["evictions"]["page-out"] >
                      held["evictions"]["page-out"] and not after["pageout_error"])
        figures.update(pageout_error=held["pageout_error"],
                       paged_out_before_full=held["evictions"]["page-out"],
                       paged_out_in_all=after["evictions"]["page-out"])
        return checks, figures
    finally:
        kept = yield d.stop(keep=True)
        subprocess.run(["umount", "-l", store], capture_output=True, timeout=30)
        if not os.environ.get("XENCLONE_KEEP_TMP"):
            shutil.rmtree(kept, ignore_errors=True)


SCENARIOS = {
    "kill-daemon": scenario_kill_daemon,
    "kill-memserver": scenario_kill_memserver,
    "cut-memserver": scenario_cut_memserver,
    "page-out-full": scenario_page_out_full,
}
