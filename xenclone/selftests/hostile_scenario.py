"""``xenclone selftest hostile-peer``: a scratch daemon among hostile peers.

One scratch daemon (``twistd -n xenclone`` in a temporary directory, with
its own memory server on a TLS port), then:

    a lying remote   the daemon's ``memserver_remote`` is a server that
                     lies (``lying_server.py``) about a copy of an image
                     the daemon blessed: traversal names, a short zero map,
                     short page runs, corrupt pages, a 4 GiB frame.  Those
                     it describes are refused at launch; clones of those it
                     serves wait, and the pages the daemon kept are
                     compared with the truth, byte for byte
    64 strangers     TLS links to the daemon's own memory server that never
                     authenticate (``hostile_links.py``): its VmRSS before
                     and after
    a second daemon  ``twistd xenclone`` on the same state_dir: it must
                     exit 2, and the first must still answer
    a restart        ``set`` a clone's limit, kill -9 the daemon, start it
                     again: the limit holds

Figures: ``preauth_rss_growth_mib``, ``outside_writes`` (paths that
appeared outside the daemon's state and run directories),
``corrupt_pages_served``, ``settings_kept``, ``second_daemon_refused``.
"""

import os
import shutil
import socket
import sys
import tempfile

from twisted.internet import defer, threads, utils

from xenclone.control_client import connect
from xenclone.helper_gate import hello
from xenclone.image import OpenImage
from xenclone.interfaces import PAGE_SIZE
from xenclone.memserver.tls import write_server_files
from xenclone.selftests import hostile_links
from xenclone.selftests.lying_server import KINDS, LyingServer
from xenclone.selftests.memory_scenarios import bless_master
from xenclone.selftests.scratch_daemon import ScratchDaemon, sleep
from xenclone.wire import WireError

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
STRANGERS = 64
RSS_BUDGET_MIB = 16
LIMIT = 2048
WAIT_S = 5.0            # the lied-to clones' time to be served a lie, if they would be


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _outside(d):
    """Every path under the scratch directory but its state and run
    directories, and the root's ``/outside``."""
    found = {"/outside"} if os.path.exists("/outside") else set()
    for top, dirs, files in os.walk(d.tmp):
        dirs[:] = [x for x in dirs if os.path.join(top, x) not in (d.state_dir, d.run_dir)]
        found.update(os.path.join(top, n) for n in dirs + files)
    return found


@defer.inlineCallbacks
def _kept_pages(d, liar, image, base):
    """(pages the daemon's cache holds of ``image``, those not the truth):
    read from the memfd its memory server hands the daemon."""
    sock = os.path.join(d.run_dir, "memserver.sock")
    link = yield hello((yield connect(d.reactor, sock)), sock)
    try:
        msg = yield link.request("open", image=image)
    finally:
        yield link.close()
    fd = msg.fds[0]
    try:
        cached = OpenImage(image, None, None, None, msg["npages"], fd, msg.payload).cached_pages()
        wrong = sum(os.pread(fd, PAGE_SIZE, p * PAGE_SIZE) != liar.truth(base, p) for p in cached)
    finally:
        os.close(fd)
    return len(cached), wrong


@defer.inlineCallbacks
def _lies(s, d, liar):
    """Launch every lie; (refused at launch {kind: code}, clones' states
    {kind: state}, pages kept, corrupt pages kept)."""
    refused, states, clones = {}, {}, {}
    for kind in KINDS:
        try:
            [clones[kind]] = (yield d.call("launch", image="lie-%s-base" % kind))["clones"]
        except WireError as e:
            refused[kind] = e.code
    yield sleep(s.reactor, WAIT_S)
    kept = corrupt = 0
    for kind, clone in clones.items():
        info = yield d.call("info", domain=clone["domid"])
        states[kind] = info["state"] if info["result"] is None else "ran: %s" % info["result"]
        pages, wrong = yield _kept_pages(d, liar, "lie-%s-base" % kind, "base")
        kept, corrupt = kept + pages, corrupt + wrong
        yield d.call("destroy", domain=clone["domid"])
    return refused, states, kept, corrupt


@defer.inlineCallbacks
def _strangers(d, ms_port):
    """VmRSS growth of the daemon's memory server (MiB) under STRANGERS."""
    pid = (yield d.call("pids"))["memserver"]
    before = hostile_links.rss_kib(pid)
    ca = os.path.join(d.state_dir, "tls", "ca.pem")
    socks = yield threads.deferToThread(hostile_links.open_links, "127.0.0.1", ms_port, ca,
                                        STRANGERS)
    try:
        yield sleep(d.reactor, 0.5)
        return (hostile_links.rss_kib(pid) - before) / 1024
    finally:
        hostile_links.close_links(socks)


@defer.inlineCallbacks
def _second_daemon(d):
    """Whether a second daemon on the first's state_dir exits 2, touching
    nothing, while the first answers on."""
    run2 = os.path.join(d.tmp, "second-run")
    conf = os.path.join(d.tmp, "second.conf")
    with open(conf, "w") as f:
        f.write('state_dir = "%s"\nrun_dir = "%s"\ncontrol_socket = "%s/control.sock"\n'
                'xenstore = "off"\n' % (d.state_dir, run2, run2))
    out, err, code = yield utils.getProcessOutputAndValue(
        TWISTD, ["-n", "--pidfile=", "xenclone", "-c", conf], env=os.environ)
    yield d.call("list")
    return (code == 2 and b"another xenclone daemon" in err and not os.path.exists(run2)
            and b"Traceback" not in out + err)


@defer.inlineCallbacks
def _restart_after_set(d):
    [clone] = (yield d.call("launch", image="base", paused=True))["clones"]
    yield d.call("set", domain=clone["domid"], knobs={"limit": LIMIT})
    yield d.kill()
    yield d.start()
    info = yield d.call("info", domain=clone["domid"])
    return info["limit_pages"] == LIMIT


@defer.inlineCallbacks
def scenario_hostile_peer(s):
    """A lying remote memory server, 64 strangers, a second daemon, a restart after set."""
    tmp = tempfile.mkdtemp(prefix="xenclone-hostile-")
    cert, key, ca, token = (os.path.join(tmp, n) for n in ("liar.pem", "liar.key", "ca.pem",
                                                           "token"))
    write_server_files(cert, key, ca, ["127.0.0.1"])
    with open(token, "w") as f:
        f.write("any-token-will-do-for-a-liar\n")
    liar_port, ms_port = _free_port(), _free_port()
    d = ScratchDaemon(s.reactor, {"memserver_remote": "127.0.0.1:%d" % liar_port,
                                  "memserver_remote_ca": ca, "memserver_remote_token_file": token,
                                  "memserver_request_timeout_s": 2,
                                  "memserver_tcp": "127.0.0.1:%d" % ms_port})
    liar = None
    try:
        yield d.start()
        yield bless_master(d, "base", 16)
        shutil.copytree(os.path.join(d.state_dir, "images", "base"),
                        os.path.join(tmp, "liar", "base"))
        liar = LyingServer(s.reactor, os.path.join(tmp, "liar"), cert, key)
        liar.listen(liar_port)
        before = _outside(d)
        refused, states, kept, corrupt = yield _lies(s, d, liar)
        outside = sorted(_outside(d) - before)
        growth = yield _strangers(d, ms_port)
        second_refused = yield _second_daemon(d)
        settings_kept = yield _restart_after_set(d)
        checks = {
            "lies_refused_at_launch": set(refused) >= {"traversal", "zero"},
            "lied_to_clones_wait": all(st in ("waiting-for-memory-server", "paused-by-timeout")
                                       for st in states.values()),
            "no_outside_writes": not outside, "no_corrupt_page_served": corrupt == 0,
            "preauth_rss_bounded": growth < RSS_BUDGET_MIB,
            "second_daemon_refused": second_refused, "settings_kept": settings_kept}
        figures = {"preauth_rss_growth_mib": round(growth, 1), "outside_writes": len(outside),
                   "corrupt_pages_served": corrupt, "settings_kept": settings_kept,
                   "second_daemon_refused": second_refused, "refused_at_launch": refused,
                   "lied_to_clone_states": states, "honest_pages_kept": kept - corrupt,
                   "outside_paths": outside[:10]}
        return checks, figures
    finally:
        if liar is not None:
            yield liar.stop()
        yield d.stop()
        shutil.rmtree(tmp, ignore_errors=True)
