"""QEMU 7.2 (Debian's qemu-system-x86, TCG) as a peer, on the same guest.

The project's guest kernel boots with ``-kernel guest.elf`` (Multiboot) and
talks through QEMU's fw_cfg and debug console (guest/qemu_channel.h).  A
master is booted once per workload, its RAM a file on tmpfs; while it spins
at its bless point it is saved twice: a full stream (RAM included) and the
device state alone (``x-ignore-shared``).  Clones are then made three ways:

- ``eager``: ``-incoming`` from the full stream into anonymous RAM;
- ``postcopy``: a paused source per clone (the template file mapped
  ``share=off``, so it holds nothing of its own) migrates to the clone with
  ``postcopy-ram``, switched to post-copy at once: the clone faults pages in
  through userfaultfd while the rest streams behind;
- ``template``: the template file mapped ``share=off`` (copy on write) plus
  the saved device state, as Kata's VM templating does.

``resident`` is the all-resident run of the same workload: eager clones
restored paused, timed from ``cont``.
"""

import mmap
import os
import selectors
import shutil
import subprocess
import tempfile
import time

from xenclone import workload
from xenclone._linux import ffi, lib

import kernel_memory
from qmp import QMP

QEMU = "qemu-system-x86_64"
MODES = ("eager", "postcopy", "template")


def available():
    return shutil.which(QEMU) is not None


def version():
    out = subprocess.run([QEMU, "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else None


class Guest:
    """One QEMU process and the marks its guest wrote to the debug console."""

    def __init__(self, argv, qmp_path):
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL)
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.qmp_path = qmp_path
        self._qmp = None
        self.out = b""
        self.marks = {}            # mark byte -> perf_counter when it came
        self._result = bytearray()
        self._pending = 0          # result bytes still to come

    @property
    def qmp(self):
        if self._qmp is None:
            self._qmp = QMP(self.qmp_path)
        return self._qmp

    def feed(self):
        """Marks are single bytes; 'D' is followed by 4 bytes of result,
        which may look like marks."""
        data = self.proc.stdout.read() or b""
        now = time.perf_counter()
        for b in data:
            if self._pending:
                self._result.append(b)
                self._pending -= 1
                continue
            mark = bytes([b])
            self.marks.setdefault(mark, now)
            if mark == b"D":
                self._pending = 4
        self.out += data

    def result(self):
        if b"D" not in self.marks or self._pending:
            return None
        return int.from_bytes(bytes(self._result), "little")

    def answered(self):
        return b"X" in self.marks or self.result() is not None

    def kill(self):
        if self._qmp is not None:
            self._qmp.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()


def wait_for(guests, done, timeout=600.0):
    """Read every guest's console until ``done(guest)`` holds for all."""
    sel = selectors.DefaultSelector()
    for g in guests:
        sel.register(g.proc.stdout, selectors.EVENT_READ, g)
    deadline = time.monotonic() + timeout
    try:
        while not all(done(g) for g in guests):
            if time.monotonic() > deadline:
                raise RuntimeError("QEMU guests did not finish in %d s" % timeout)
            for key, _ in sel.select(0.5):
                key.data.feed()
            for g in guests:
                if g.proc.poll() is not None and not done(g):
                    g.feed()
                    if not done(g):
                        raise RuntimeError("QEMU exited (%s): %s" % (
                            g.proc.returncode, g.proc.stderr.read().decode(errors="replace")))
    finally:
        sel.close()


class Peer:
    """A blessed QEMU master and its saved state; clones of every mode."""

    def __init__(self, memory_mib, read_percent, kernel, workdir=None):
        self.mib = memory_mib
        self.params = workload.Params.for_memory(memory_mib, read_percent=read_percent, seed=1)
        self.kernel = kernel
        self.dir = tempfile.mkdtemp(prefix="xc-qemu-", dir=workdir or "/dev/shm")
        self.ram = os.path.join(self.dir, "master.ram")
        self.full = os.path.join(self.dir, "full.snap")
        self.devstate = os.path.join(self.dir, "devices.snap")
        self._n = 0
        self.saved_pages = None

    def _argv(self, ram, qmp, extra=()):
        return [QEMU, "-accel", "tcg", "-nodefaults", "-no-user-config", "-display", "none",
                "-machine", "pc,memory-backend=ram", "-m", "%dM" % self.mib,
                # the vapic ROM fails to load its state on restore under TCG
                "-global", "apic-common.vapic=off",
                "-object", ram, "-kernel", self.kernel, "-debugcon", "stdio",
                "-qmp", "unix:%s,server=on,wait=off" % qmp] + list(extra)

    def _qmp_path(self):
        self._n += 1
        return os.path.join(self.dir, "qmp-%d.sock" % self._n)

    def _file_ram(self, share):
        return "memory-backend-file,id=ram,size=%dM,mem-path=%s,share=%s" % (
            self.mib, self.ram, "on" if share else "off")

    def _anon_ram(self):
        return "memory-backend-ram,id=ram,size=%dM" % self.mib

    @staticmethod
    def _clone_arg(clone_id, input):
        return ["-fw_cfg", "name=opt/xenclone,string=%d %d" % (clone_id, input)]

    def bless(self):
        """Boot the master, load its params and data set, save it at READY."""
        with open(self.ram, "wb") as f:
            f.truncate(self.mib << 20)
        q = self._qmp_path()
        m = Guest(self._argv(self._file_ram(True), q), q)
        try:
            wait_for([m], lambda g: b"P" in g.marks or b"X" in g.marks, timeout=60)
            self._write_master()
            wait_for([m], lambda g: b"R" in g.marks, timeout=60)
            # Saved running (it only spins), so restored clones start by
            # themselves; a saved VM must run again before the next save.
            m.qmp.execute("migrate", uri="exec:cat > %s" % self.full)
            info = m.qmp.wait_migration()
            self.saved_pages = info["ram"]["normal"]
            m.qmp.execute("cont")
            m.qmp.capabilities(x_ignore_shared=True)
            m.qmp.execute("migrate", uri="exec:cat > %s" % self.devstate)
            m.qmp.wait_migration()
        finally:
            m.kill()

    def _write_master(self):
        """What the VMM host writes into a master on KVM: the data set,
        zero pages zero (the BIOS used some), then the params page."""
        p = self.params
        fd = os.open(self.ram, os.O_RDWR)
        try:
            mem = mmap.mmap(fd, self.mib << 20)
        finally:
            os.close(fd)
        base = ffi.cast("char *", ffi.from_buffer(mem))
        lib.lx_fill_dataset(base, p.memory_pages, p.data_first_pfn, p.data_npages, p.seed,
                            p.zero_every)
        zero = ffi.new("uint8_t[]", p.memory_pages)
        lib.lx_copy_nonzero(base, ffi.NULL, p.memory_pages, zero)
        for pfn in range(p.data_first_pfn, p.memory_pages):
            if p.is_zero_page(pfn) and not zero[pfn]:
                mem[pfn * 4096:(pfn + 1) * 4096] = bytes(4096)
        mem[workload.PARAMS_ADDR:workload.PARAMS_ADDR + workload.PARAMS_STRUCT.size] = p.pack()
        del base
        mem.close()

    # -- clones

    def launch(self, mode, clone_ids, inputs):
        """Start clones in ``mode``; returns (guests, sources)."""
        if mode == "eager":
            return [Guest(self._argv(self._anon_ram(), q, self._clone_arg(c, i)
                                     + ["-incoming", "exec:cat %s" % self.full]), q)
                    for c, i, q in self._each(clone_ids, inputs)], []
        if mode == "template":
            guests = [Guest(self._argv(self._file_ram(False), q, self._clone_arg(c, i)
                                       + ["-incoming", "defer"]), q)
                      for c, i, q in self._each(clone_ids, inputs)]
            for g in guests:
                g.qmp.capabilities(x_ignore_shared=True)
                g.qmp.execute("migrate-incoming", uri="exec:cat %s" % self.devstate)
            return guests, []
        if mode == "postcopy":
            return self._postcopy(clone_ids, inputs)
        raise ValueError(mode)

    def _each(self, clone_ids, inputs):
        return [(c, i, self._qmp_path()) for c, i in zip(clone_ids, inputs)]

    def sources(self, count):
        """Paused post-copy sources, restored from the template (untimed:
        they stand for the image)."""
        srcs = [Guest(self._argv(self._file_ram(False), q, ["-S", "-incoming", "defer"]), q)
                for q in (self._qmp_path() for _ in range(count))]
        for s in srcs:
            s.qmp.capabilities(x_ignore_shared=True)
            s.qmp.execute("migrate-incoming", uri="exec:cat %s" % self.devstate)
        for s in srcs:
            s.qmp.wait_migration()
            s.qmp.capabilities(x_ignore_shared=False, postcopy_ram=True)
        return srcs

    def _postcopy(self, clone_ids, inputs):
        srcs = self._pending_sources
        self._pending_sources = None
        guests = []
        for (c, i, q), src in zip(self._each(clone_ids, inputs), srcs):
            g = Guest(self._argv(self._anon_ram(), q, self._clone_arg(c, i)
                                 + ["-incoming", "defer"]), q)
            sock = q + ".mig"
            g.qmp.capabilities(postcopy_ram=True)
            g.qmp.execute("migrate-incoming", uri="unix:%s" % sock)
            src.qmp.execute("migrate", uri="unix:%s" % sock)
            src.qmp.execute("migrate-start-postcopy")
            guests.append(g)
        return guests, srcs

    _pending_sources = None

    def prepare(self, mode, count):
        """Untimed set-up a mode needs before launch."""
        if mode == "postcopy":
            self._pending_sources = self.sources(count)

    def resident(self, clone_ids, inputs):
        """The all-resident run: clones restored paused; returns guests
        and the time ``cont`` was sent to the first."""
        guests = [Guest(self._argv(self._anon_ram(), q, self._clone_arg(c, i)
                                   + ["-S", "-incoming", "exec:cat %s" % self.full]), q)
                  for c, i, q in self._each(clone_ids, inputs)]
        for g in guests:
            g.qmp.wait_migration()
        t0 = time.perf_counter()
        for g in guests:
            g.qmp.execute("cont")
        return guests, t0

    def expected(self, clone_id, input):
        return workload.expected_result(self.params, clone_id, input)

    def files(self, mode):
        """The shared files a mode's clones use (their image)."""
        return [self.full] if mode in ("eager", "resident") else [self.ram]

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def ram_pages_mapped(pid, path):
    """Resident pages of the mapping of ``path`` in ``pid`` (smaps)."""
    rss, inside = 0, False
    try:
        with open("/proc/%d/smaps" % pid) as f:
            for line in f:
                first = line.split(None, 1)[0]
                if not first.endswith(":"):
                    inside = line.rstrip().endswith(path)
                elif inside and first == "Rss:":
                    rss += int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return rss // 4


def run(peer, mode, clones, first_id=1):
    """One run of ``clones`` clones in ``mode``: the figures, from the kernel
    and from QEMU, taken once every clone has answered."""
    ids = list(range(first_id, first_id + clones))
    inputs = [1000 + c for c in ids]
    sources = []
    if mode == "resident":
        guests, t0 = peer.resident(ids, inputs)
    else:
        peer.prepare(mode, clones)
        t0 = time.perf_counter()
        guests, sources = peer.launch(mode, ids, inputs)
    try:
        wait_for(guests, Guest.answered)
        t_end = max(g.marks.get(b"D", g.marks.get(b"X", 0)) for g in guests)
        right = all(g.result() == peer.expected(c, i) for g, c, i in zip(guests, ids, inputs))
        pids = [g.proc.pid for g in guests] + [s.proc.pid for s in sources]
        mem = kernel_memory.measure(pids, peer.files(mode))
        if mode == "postcopy":
            infos = [s.qmp.execute("query-migrate") for s in sources]
            faults = sum(i["ram"].get("postcopy-requests", 0) for i in infos)
            moved = sum(i["ram"]["transferred"] for i in infos) // 4096
        else:
            faults = sum(kernel_memory.faults(g.proc.pid) for g in guests)
            if mode == "template":
                moved = sum(ram_pages_mapped(g.proc.pid, peer.ram) for g in guests)
            else:
                moved = peer.saved_pages * clones
        first = [g.marks[b"G"] - g.t0 for g in guests
                 if b"G" in g.marks and mode != "resident"]
        return {"answers_right": right, "time_to_answers_s": t_end - t0,
                "launch_to_first_instruction_ms": sorted(first)[len(first) // 2] * 1e3
                if first else None,
                "pss_mib": mem["pss"] / 2**20, "rss_mib": mem["rss"] / 2**20,
                "faults": faults, "pages_moved": moved}
    finally:
        for g in guests + sources:
            g.kill()
