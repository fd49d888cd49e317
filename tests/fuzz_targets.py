"""The real servers under fuzz: a memory server process (Unix socket and
TLS port) and a daemon run by ``twistd -n xenclone`` with its helpers.

Each target knows its processes, a well-behaved request whose answer it
can check, and ``judge``, which checks the success replies a hostile
request may get.  They block (see ``fuzz_link``) and log to files, never
to a pipe that a blocked test would stop draining.
"""

import base64
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from xenclone.helpers import socket_owner_pid
from xenclone.interfaces import PAGE_SIZE
from xenclone.memserver import page_crcs
from xenclone.memserver.store import MAX_FETCH

import memserver_helpers as H
from fuzz_link import Broken, Link

IMAGE = "img"
NPAGES = 300
TOKEN = "fuzz-token-0123456789abcdef"


def _wait_for(what, ready, proc, log, seconds=120):
    end = time.monotonic() + seconds
    while not ready():
        if proc.poll() is not None or time.monotonic() > end:
            with open(log, errors="replace") as f:
                raise RuntimeError("%s did not start:\n%s" % (what, f.read()[-4000:]))
        time.sleep(0.05)


def _spawn(argv, log, cwd):
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                env=dict(os.environ, PYTHONPATH=H.ROOT))


def _stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open("/proc/%d/stat" % pid) as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def fetch_valid(request):
    """The pages a fetch request names, or None if it names none."""
    pfn, count = request.get("pfn"), request.get("count")
    if request.get("image") != IMAGE or type(pfn) is not int or type(count) is not int:
        return None
    if request.get("generation") is not None:      # a hostile peer cannot know it
        return None
    if not (1 <= count <= MAX_FETCH and 0 <= pfn and pfn + count <= NPAGES):
        return None
    return pfn, count


def crcs_valid(request):
    """Whether a crcs request names entries of IMAGE's table."""
    first, count = request.get("first"), request.get("count")
    return type(first) is int and type(count) is int and 1 <= count <= page_crcs.MAX_CRCS \
        and 0 <= first <= NPAGES - count


class MemoryServer:
    """A memory server with image ``IMAGE`` on its Unix socket and TLS."""

    def __init__(self, testcase):
        self.tmp = tempfile.mkdtemp(prefix="xcfz-")
        testcase.addCleanup(shutil.rmtree, self.tmp, True)
        self.sock = os.path.join(self.tmp, "ms.sock")
        self.log = os.path.join(self.tmp, "memserver.log")
        cert, key, self.ca, tok = H.tls_files(os.path.join(self.tmp, "tls"), ["127.0.0.1"],
                                              TOKEN.encode())
        self.port = H.free_port()
        argv = H.server_argv(os.path.join(self.tmp, "store"), self.sock,
                             tcp="127.0.0.1:%d" % self.port, token_file=tok, cert=cert, key=key)
        self.proc = _spawn(argv, self.log, self.tmp)
        testcase.addCleanup(_stop, self.proc)
        _wait_for("memory server", lambda: H.READY in open(self.log, "rb").read(),
                  self.proc, self.log)
        cap, self.zero = H.make_capture(NPAGES)
        self.crcs = page_crcs.new_table(NPAGES)
        page_crcs.note(self.crcs, 0, self.pages(0, NPAGES))
        link = Link.unix(self.sock)
        try:
            fields, _, _ = link.call("put", [cap.mem_fd], name=IMAGE, arch="a", npages=NPAGES,
                                     vcpu_state=base64.b64encode(cap.vcpu_state).decode())
            assert fields["ok"], fields
        finally:
            link.close()
            os.close(cap.mem_fd)
        self.pids = {"memserver": self.proc.pid}

    def alive(self):
        return self.proc.poll() is None

    def pages(self, pfn, count):
        return b"".join(H.expected_page(p, self.zero) for p in range(pfn, pfn + count))

    def good_request(self, pfn, count):
        return {"id": "good", "op": "fetch", "image": IMAGE, "pfn": pfn % (NPAGES - count + 1),
                "count": count}

    def check_good(self, request, fields, payload):
        if not fields.get("ok") or payload != self.pages(request["pfn"], request["count"]):
            raise Broken("a well-behaved fetch got %r / %d wrong bytes" % (fields, len(payload)))

    def judge_success(self, request, fields, payload, fds):
        """A success must be the right answer to a request that was valid."""
        op, image = request.get("op"), request.get("image")
        if op == "fetch" and fetch_valid(request):
            if payload == self.pages(*fetch_valid(request)):
                return
        elif op == "open" and image == IMAGE and len(fds) == 1:
            if os.fstat(fds[0]).st_size == NPAGES * PAGE_SIZE and len(payload) == NPAGES:
                return
        elif op in ("info", "describe") and image == IMAGE and fields.get("npages") == NPAGES:
            if op == "info" or len(payload) == NPAGES:      # describe: the zero map
                return
        elif op == "crcs" and image == IMAGE and crcs_valid(request):
            first, count = request["first"], request["count"]
            if payload == page_crcs.to_bytes(self.crcs[first:first + count]):
                return
        elif op == "images" and [i["image_id"] for i in fields["images"]] == [IMAGE]:
            return
        elif op == "ping" and fields.get("pid") == self.proc.pid:
            return
        raise Broken("%r was answered %r" % (request, fields))


class RemoteJudge:
    """One TLS connection: nothing but ``hello`` until the token is right."""

    READ_ONLY = ("fetch", "images", "info", "describe", "crcs")

    def __init__(self, server):
        self.server = server
        self.authed = False
        self.refused = False

    def __call__(self, request, fields, payload, fds):
        op = request.get("op")
        if fields["ok"] and self.refused:
            raise Broken("%r was answered %r after a refusal" % (request, fields))
        self.refused = self.refused or self.judge(op, request, fields, payload, fds)
        return self.refused

    def judge(self, op, request, fields, payload, fds):
        """True if this reply refuses the link."""
        if op == "hello":
            if fields["ok"] and not self.authed and request.get("token") != TOKEN:
                raise Broken("hello with %r was let in" % (request.get("token"),))
            self.authed = self.authed or fields["ok"]
            return not fields["ok"]
        if not self.authed:
            if fields.get("code") != "unauthenticated":
                raise Broken("%r before hello got %r" % (op, fields))
            return True
        if op not in self.READ_ONLY:
            if fields.get("code") != "unknown-op":
                raise Broken("%r is no remote op, yet got %r" % (op, fields))
            return False
        if fields["ok"]:
            self.server.judge_success(request, fields, payload, fds)
        return False


class LocalJudge:
    def __init__(self, server):
        self.server = server

    def __call__(self, request, fields, payload, fds):
        if fields["ok"]:
            self.server.judge_success(request, fields, payload, fds)
        return False


class Daemon:
    """``twistd -n xenclone`` in a temporary directory, with a master
    ``MASTER`` (domid 1), its image ``DIMAGE`` and one finished clone
    (domid 2)."""

    MASTER, DIMAGE, CLONE = "fzm", "fzimg", "fzimg.1"
    READ_OPS = ("pids", "list", "images", "host", "info", "page", "page_sums", "audit",
                "wait", "image_check", "isolation_check")
    NPAGES = 4096

    def __init__(self, testcase):
        self.tmp = tempfile.mkdtemp(prefix="xcfz-")
        testcase.addCleanup(shutil.rmtree, self.tmp, True)
        self.sock = os.path.join(self.tmp, "control.sock")
        self.log = os.path.join(self.tmp, "daemon.log")
        conf = os.path.join(self.tmp, "xenclone.conf")
        with open(conf, "w") as f:
            f.write('state_dir = "%s/state"\nrun_dir = "%s/run"\ncontrol_socket = "%s"\n'
                    % (self.tmp, self.tmp, self.sock))
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        self.proc = _spawn([twistd, "-n", "--pidfile", os.path.join(self.tmp, "twistd.pid"),
                            "--logfile", self.log, "xenclone", "-c", conf], self.log, H.ROOT)
        testcase.addCleanup(self._stop)
        self.pids = {}
        _wait_for("daemon", lambda: os.path.exists(self.sock), self.proc, self.log)
        self.good = Link.unix(self.sock)
        self.pids = self.call("pids")
        # The embedded XenStore server is a helper too: stopped with the rest
        # (not fuzzed: its fds follow the daemon's publishing).
        self.xenstore = socket_owner_pid(os.path.join(self.tmp, "run", "xenstore.sock"))
        self.call("create", config={"name": self.MASTER, "memory": 16})
        self.call("bless", domain=self.MASTER, name=self.DIMAGE)
        [clone] = self.call("launch", image=self.DIMAGE)["clones"]
        assert (clone["domid"], clone["name"]) == (2, self.CLONE), clone
        info = self.call("wait", domain=2, timeout=120)
        assert info["result"] == info["expected"], info
        self.domains = self.call("list")
        self.call("host")       # opens /dev/kvm once, for good: not a leak per case
        # The daemon's own digests, checked again after every case.
        self.digests = {(pfn, count): self.call("page", image=self.DIMAGE, pfn=pfn,
                                                count=count)["sha256"]
                        for pfn, count in self.windows()}

    def windows(self):
        return [(pfn, 1 + pfn % 64) for pfn in range(0, self.NPAGES - 64, 257)]

    def call(self, op, **fields):
        fields, _, _ = self.good.call(op, **fields)
        if not fields["ok"]:
            raise Broken("%s failed: %r" % (op, fields))
        return {k: v for k, v in fields.items() if k not in ("id", "ok")}

    def _stop(self):
        try:
            if self.pids:       # it got as far as the control socket
                self.call("destroy_all")
        finally:
            _stop(self.proc)
            helpers = [self.pids.get(name) for name in ("vmmhost", "memserver")]
            for pid in helpers + [getattr(self, "xenstore", None)]:
                if pid is not None and _alive(pid):
                    os.kill(pid, signal.SIGTERM)

    def alive(self):
        return all(_alive(pid) for pid in self.pids.values())

    def good_request(self, pfn, count):
        pfn, count = self.windows()[pfn % len(self.windows())]
        return {"id": "good", "op": "page", "image": self.DIMAGE, "pfn": pfn, "count": count}

    def check_good(self, request, fields, payload):
        want = self.digests[request["pfn"], request["count"]]
        if not fields.get("ok") or fields.get("sha256") != want:
            raise Broken("a well-behaved page got %r, not %s" % (fields, want))
        if self.call("list") != self.domains:
            raise Broken("the domains changed: %r" % (self.call("list"),))

    def judge(self, request, fields, payload, fds):
        if fields["ok"] and request.get("op") not in self.READ_OPS:
            raise Broken("%r was answered %r" % (request, fields))
        return False
