"""CRIU as a peer: the guest's workload as a process, dumped once, restored
as clones eagerly and lazily.

Debian 12's CRIU 3.17 fails on this kernel ("vdso: Unexpected rt vDSO area
bounds"); Debian 13's 4.1.1 needs glibc 2.38, newer than Debian 12's, so
``bench/get-criu.sh`` unpacks it with its own libraries into a private
root and it runs from there.

The master is ``criu_workload.c``: the test guest's workload as a process
whose memory mirrors a master's RAM (same pages, same data set, same
answers, checked with xenclone/workload.py).  It is dumped once per
workload, its images on tmpfs as QEMU's saved streams are.  A clone is a
``criu restore --restore-detached`` of that image into a PID namespace of
its own (so clones restore side by side), its pipes swapped for new ones
with ``--inherit-fd``; its clone id and input wait in its stdin before the
restore starts, so it answers as soon as it runs:

- ``eager``: every page read from the image before the process runs;
- ``lazy``: ``--lazy-pages``: a ``criu lazy-pages`` daemon per clone
  (started untimed: it stands for the image, as QEMU's post-copy sources
  do) serves the clone's userfaultfd from the local image, and once the
  restore is done pushes the pages not asked for yet, as post-copy does;
- ``resident``: eager clones with an empty stdin, timed from their go
  (clone id and input written) once every restore has returned.

Faults are the clone process's (minor + major, /proc: a fault the lazy
daemon served counts as a major one).  Pages moved: the image's pages per
eager clone; for lazy clones their anonymous pages once all have answered,
which the daemons copied in by then (asked for or pushed).
"""

import contextlib
import os
import selectors
import shutil
import signal
import struct
import subprocess
import tempfile
import time

from xenclone import workload

import kernel_memory

HERE = os.path.dirname(os.path.abspath(__file__))
SHIM = os.path.join(os.path.dirname(HERE), "libxc_shim", "src", "linux")
# The workload, with the shim's data-set words (pages.c) rather than a copy.
SOURCES = [os.path.join(HERE, "criu_workload.c"), os.path.join(SHIM, "pages.c")]
PRIVATE_ROOT = os.environ.get("XENCLONE_CRIU_ROOT", "/var/cache/xenclone-bench/criu-root")
MODES = ("eager", "lazy")


def command():
    """argv prefix running a CRIU: the private trixie one, else the system's."""
    loader = os.path.join(PRIVATE_ROOT, "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    if os.path.exists(loader):
        libs = ":".join(os.path.join(PRIVATE_ROOT, d) for d in
                        ("usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu"))
        return [loader, "--library-path", libs, os.path.join(PRIVATE_ROOT, "usr/sbin/criu")]
    for d in ("/usr/sbin", "/usr/bin"):
        if os.path.exists(os.path.join(d, "criu")):
            return [os.path.join(d, "criu")]
    return None


def status():
    argv = command()
    if argv is None:
        return {"found": None, "run": False,
                "why": "no CRIU: Debian 12's 3.17 fails on this kernel (vDSO bounds); "
                       "bench/get-criu.sh unpacks Debian 13's 4.1.1 privately"}
    version = subprocess.run(argv + ["--version"], capture_output=True, text=True).stdout
    check = subprocess.run(argv + ["check"], capture_output=True, text=True)
    return {"found": argv[-1], "version": version.strip().replace("\n", " "),
            "check": (check.stdout + check.stderr).strip().splitlines()[-1:],
            "run": available(),
            "how": "the guest's workload as a process (bench/criu_workload.c), dumped "
                   "once from a PID namespace of its own; clones restored --restore-detached "
                   "side by side, each into a new PID namespace, pipes swapped with "
                   "--inherit-fd; lazy: --lazy-pages and a criu lazy-pages daemon per "
                   "clone on the local image",
            "lazy": "works on this kernel (%s). The lazy-pages daemon is made for lazy "
                    "migration: once the restore is done it pushes every page not asked for "
                    "yet (criu issue 2399), so a lazy clone ends as resident as an eager one. "
                    "It finds a faulting page by walking a list of the image's page ranges "
                    "(criu/uffd.c find_iov), one per 15 pages here (every 16th page of the "
                    "data set is zero): a fault costs O(ranges); such walks are its hottest "
                    "loops in a perf profile of 1 x 1 GiB" % os.uname().release}


def available():
    return command() is not None and shutil.which("unshare") is not None


def _tail(path, n=2000):
    try:
        with open(path, "rb") as f:
            return f.read()[-n:].decode(errors="replace")
    except FileNotFoundError:
        return "(no log)"


class Clone:
    """One restored workload process: its pipes, the restore, its marks."""

    def __init__(self, workdir, clone_id, input):
        self.dir = workdir
        self.id, self.input = clone_id, input
        self.stdin_r, self.stdin_w = os.pipe()
        self.out_r, self.out_w = os.pipe()
        self.restore = None
        self.t0 = None
        self.pid = self.pidfd = None
        self.out = b""
        self.marks = {}            # mark byte -> perf_counter when it came

    def go(self):
        os.write(self.stdin_w, struct.pack("<II", self.id, self.input))

    def start(self, argv):
        self.t0 = time.perf_counter()
        self.restore = subprocess.Popen(argv, pass_fds=(self.stdin_r, self.out_w),
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        os.close(self.stdin_r)
        os.close(self.out_w)
        self.stdin_r = self.out_w = None

    def restored(self):
        """Whether its restore returned; raises if it failed."""
        if self.pidfd is not None:
            return True
        if self.restore.poll() is None:
            return False
        if self.restore.returncode:
            raise RuntimeError("criu restore of clone %d failed (%d): %s" % (
                self.id, self.restore.returncode, _tail(os.path.join(self.dir, "restore.log"))))
        with open(os.path.join(self.dir, "pid")) as f:
            self.pid = int(f.read())
        self.pidfd = os.pidfd_open(self.pid)
        return True

    def feed(self):
        data = os.read(self.out_r, 64)
        if not data:
            raise RuntimeError("clone %d closed its output after %r: %s" % (
                self.id, self.out, _tail(os.path.join(self.dir, "restore.log"))))
        now = time.perf_counter()
        for b in data:             # 'G', then 'D' and the answer's 4 bytes
            self.marks.setdefault(bytes([b]), now)
        self.out += data

    def result(self):
        """Its answer, once 'G', 'D' and the answer's 4 bytes came."""
        if len(self.out) < 6:
            return None
        if self.out[:2] != b"GD":
            raise RuntimeError("clone %d wrote %r" % (self.id, self.out))
        return int.from_bytes(self.out[2:6], "little")

    def answered(self):
        return self.restored() and self.result() is not None

    def kill(self):
        """Kill the clone, and its restore if it is still going."""
        if self.restore is not None and self.restore.poll() is None:
            # criu's child is the first process of the clone's PID
            # namespace, which dies with it
            with contextlib.suppress(FileNotFoundError, ProcessLookupError), \
                    open("/proc/%d/task/%d/children" % ((self.restore.pid,) * 2)) as f:
                for pid in f.read().split():
                    os.kill(int(pid), signal.SIGKILL)
            self.restore.kill()
            self.restore.wait()
        elif self.restore is not None and self.pidfd is None and not self.restore.returncode:
            with contextlib.suppress(OSError):
                self.restored()    # for its pid
        if self.pidfd is not None:
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            sel = selectors.DefaultSelector()
            sel.register(self.pidfd, selectors.EVENT_READ)
            sel.select(30)         # readable once it has exited
            sel.close()
            os.close(self.pidfd)
        for fd in (self.stdin_r, self.stdin_w, self.out_r, self.out_w):
            if fd is not None:
                os.close(fd)


class TooSlow(RuntimeError):
    pass


def wait_for(clones, done, timeout=600.0):
    """Read every clone's marks until ``done(clone)`` holds for all
    (``TooSlow`` after ``timeout`` seconds)."""
    sel = selectors.DefaultSelector()
    for c in clones:
        sel.register(c.out_r, selectors.EVENT_READ, c)
    deadline = time.monotonic() + timeout
    try:
        while not all(done(c) for c in clones):
            if time.monotonic() > deadline:
                raise TooSlow("CRIU clones did not finish in %d s" % timeout)
            for key, _ in sel.select(0.01):
                key.data.feed()
    finally:
        sel.close()


class LazyDaemon:
    """``criu lazy-pages`` for one clone's restore, ready when started."""

    def __init__(self, criu, images, workdir):
        self.log = os.path.join(workdir, "lazy.log")
        ready_r, ready_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                criu + ["lazy-pages", "-D", images, "-W", workdir, "-o", self.log,
                        "--status-fd", str(ready_w)],
                pass_fds=(ready_w,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
            os.close(ready_w)
            ready_w = None
            if os.read(ready_r, 1) != b"\0":
                self.proc.wait()
                raise RuntimeError("criu lazy-pages did not start (%s): %s" % (
                    self.proc.returncode, _tail(self.log)))
        finally:
            os.close(ready_r)
            if ready_w is not None:
                os.close(ready_w)

    def finish(self, timeout=30):
        """It exits once its clone has gone (or, failing that, is killed)."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Peer:
    """A dumped workload process and its clones."""

    def __init__(self, memory_mib, read_percent, workdir=None):
        self.criu = command()
        if self.criu is None:
            raise RuntimeError("no CRIU: run bench/get-criu.sh")
        self.params = workload.Params.for_memory(memory_mib, read_percent=read_percent, seed=1)
        self.dir = tempfile.mkdtemp(prefix="xc-criu-", dir=workdir or "/dev/shm")
        self.images = os.path.join(self.dir, "images")
        self.pipes = None          # the dumped process's stdin and stdout: "pipe:[inode]"
        self.saved_pages = None
        self._n = 0

    def bless(self):
        """Build and start the workload, let it fill its image, dump it."""
        exe = os.path.join(self.dir, "criu_workload")
        subprocess.run(["gcc", "-O2", "-Wall", "-static", "-I", SHIM, "-o", exe] + SOURCES,
                       check=True)
        p = self.params
        args = [str(v) for v in (p.memory_pages, p.data_first_pfn, p.data_npages,
                                 p.common_reads, p.clone_reads, p.write_pages, p.seed,
                                 p.zero_every)]
        # stderr a path that exists at restore time, as every fd must be
        master = subprocess.Popen(["unshare", "--pid", "--fork", exe] + args,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL)
        try:
            if master.stdout.read(1) != b"R":
                raise RuntimeError("the CRIU workload did not start (%s)" % master.wait())
            with open("/proc/%d/task/%d/children" % (master.pid, master.pid)) as f:
                pid = int(f.read().split()[0])
            self.pipes = [os.readlink("/proc/%d/fd/%d" % (pid, fd)) for fd in (0, 1)]
            os.mkdir(self.images)
            dump = subprocess.run(self.criu + ["dump", "-t", str(pid), "-D", self.images,
                                               "-o", "dump.log"],
                                  stdin=subprocess.DEVNULL, capture_output=True)
            if dump.returncode:
                raise RuntimeError("criu dump failed: %s" % _tail(
                    os.path.join(self.images, "dump.log")))
        finally:
            master.kill()
            master.wait()
            master.stdin.close()
            master.stdout.close()
        self.saved_pages = os.path.getsize(self.pages_image()) // 4096

    def pages_image(self):
        (name,) = [n for n in os.listdir(self.images)
                   if n.startswith("pages-") and n.endswith(".img")]
        return os.path.join(self.images, name)

    def clone(self, clone_id, input):
        self._n += 1
        workdir = os.path.join(self.dir, "work-%d" % self._n)
        os.mkdir(workdir)
        return Clone(workdir, clone_id, input)

    def restore_argv(self, clone, lazy):
        return self.criu + [
            "restore", "-D", self.images, "-W", clone.dir, "-o", "restore.log",
            "--restore-detached", "--pidfile", os.path.join(clone.dir, "pid"),
            "--inherit-fd", "fd[%d]:%s" % (clone.stdin_r, self.pipes[0]),
            "--inherit-fd", "fd[%d]:%s" % (clone.out_w, self.pipes[1])] + (
            ["--lazy-pages"] if lazy else [])

    def expected(self, clone_id, input):
        return workload.expected_result(self.params, clone_id, input)

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def run(peer, mode, count, first_id=1, limit_s=600.0):
    """One run of ``count`` clones in ``mode`` ("resident" or one of MODES):
    the figures, from the kernel and from CRIU, once every clone answered;
    a run not done in ``limit_s`` seconds is stopped and counts as wrong,
    with ``over_limit_s``."""
    clones = [peer.clone(c, 1000 + c) for c in range(first_id, first_id + count)]
    daemons, ok = [], False
    try:
        if mode == "lazy":
            daemons = [LazyDaemon(peer.criu, peer.images, c.dir) for c in clones]
        if mode != "resident":
            for c in clones:
                c.go()
        t0 = time.perf_counter()
        for c in clones:
            c.start(peer.restore_argv(c, lazy=mode == "lazy"))
        if mode == "resident":
            wait_for(clones, Clone.restored)
            t0 = time.perf_counter()
            for c in clones:
                c.go()
        try:
            wait_for(clones, Clone.answered, limit_s - (time.perf_counter() - t0))
        except TooSlow:
            return {"answers_right": False, "over_limit_s": limit_s}
        t_end = max(c.marks[b"D"] for c in clones)
        right = all(c.result() == peer.expected(c.id, c.input) for c in clones)
        mem = kernel_memory.measure([c.pid for c in clones] + [d.proc.pid for d in daemons],
                                    [peer.pages_image()])
        faults = sum(kernel_memory.faults(c.pid) for c in clones)
        if mode == "lazy":
            moved = sum(kernel_memory.rollup(c.pid).get("Anonymous", 0) for c in clones) // 4
        else:
            moved = peer.saved_pages * count
        first = sorted(c.marks[b"G"] - c.t0 for c in clones if mode != "resident")
        ok = True
    finally:
        for c in clones:
            c.kill()
        for d in daemons:          # one whose restore failed would wait for it
            d.finish(30 if ok else 0)
        for c in clones:
            shutil.rmtree(c.dir, ignore_errors=True)
    return {"answers_right": right, "time_to_answers_s": t_end - t0,
            "launch_to_first_instruction_ms": first[len(first) // 2] * 1e3 if first else None,
            "pss_mib": mem["pss"] / 2**20, "rss_mib": mem["rss"] / 2**20,
            "faults": faults, "pages_moved": moved}
