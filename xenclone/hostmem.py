"""Host memory as the kernel counts it, never from our own counters.

host = sum over our processes of (PSS - PSS of shmem they map)
       + every xenclone memfd's resident size (images, masters)

Shared image pages are then counted once, however many clones map them.
"""

import os

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


def pss_bytes(pid):
    return _rollup(pid).get("Pss", 0) * 1024
