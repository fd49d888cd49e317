"""Host memory as the kernel counts it, never from our own counters.

host = sum over our processes of (PSS - PSS of shmem they map)
       + every xenclone memfd's resident size (images, masters)

Shared image pages are then counted once, however many clones map them.
"""

import os
import sys
import time

MEMFD_PREFIX = "/memfd:xenclone"


def _rollup(pid):
    fields = {}
    with open("/proc/%d/smaps_rollup" % pid) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                fields[parts[0][:-1]] = int(parts[1])
    return fields


def _memfds(pid):
    """(dev, inode) -> resident bytes of the xenclone memfds ``pid`` holds."""
    found = {}
    fd_dir = "/proc/%d/fd" % pid
    for name in os.listdir(fd_dir):
        path = os.path.join(fd_dir, name)
        try:
            if os.readlink(path).startswith(MEMFD_PREFIX):
                st = os.stat(path)
                found[(st.st_dev, st.st_ino)] = st.st_blocks * 512
        except OSError:
            continue
    return found


def host_bytes(pids):
    """Kernel-measured bytes used by these processes and their memfds."""
    private = 0
    memfds = {}
    for pid in pids:
        try:
            roll = _rollup(pid)
            memfds.update(_memfds(pid))
        except (FileNotFoundError, ProcessLookupError):
            continue
        private += (roll.get("Pss", 0) - roll.get("Pss_Shmem", 0)) * 1024
    return private + sum(memfds.values())


def clone_pages(vmm_pid, memserver_pid):
    """What the host holds for clones, in pages, counted as the ledger's
    allocated figure is: the image caches' resident pages (the memory
    server's memfds) plus the clones' private copies (the anonymous pages of
    the VMM host's private mappings of image memfds, from smaps)."""
    images = sum(_memfds(memserver_pid).values()) // 4096
    private_kib, in_clone = 0, False
    with open("/proc/%d/smaps" % vmm_pid) as f:
        for line in f:
            first = line.split(None, 1)[0]
            if not first.endswith(":"):          # a mapping's header line
                parts = line.split()
                in_clone = (len(parts) >= 6 and parts[1].endswith("p")
                            and parts[5].startswith(MEMFD_PREFIX))
            elif in_clone and first == "Anonymous:":
                private_kib += int(line.split()[1])
    return images + private_kib // 4


def available_pages():
    """The kernel's MemAvailable, in pages."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 4
    raise OSError("no MemAvailable in /proc/meminfo")


def psi_some_avg10(path="/proc/pressure/memory"):
    """PSI: % of the last 10 s some task stalled on memory; None where the
    kernel has no PSI."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("some "):
                    return float(dict(kv.split("=") for kv in line.split()[1:])["avg10"])
    except (OSError, KeyError, ValueError):
        return None
    return None


def pss_bytes(pid):
    return _rollup(pid).get("Pss", 0) * 1024


def sample_forever(vmm_pid, memserver_pid, interval):
    """``python -m xenclone.hostmem VMM_PID MEMSERVER_PID INTERVAL``: print
    "monotonic-seconds clone-pages" every interval until killed.  A process
    of its own, so neither the GIL nor a busy reactor stretches the interval."""
    while True:
        t = time.monotonic()
        print("%.4f %d" % (t, clone_pages(vmm_pid, memserver_pid)), flush=True)
        time.sleep(max(0.0, interval - (time.monotonic() - t)))


if __name__ == "__main__":
    try:
        sample_forever(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]))
    except (KeyboardInterrupt, BrokenPipeError, FileNotFoundError, ProcessLookupError):
        pass
