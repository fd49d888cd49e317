"""Memory of any set of processes as the kernel counts it, for every side.

total PSS = sum of (Pss - Pss_Shmem) over the processes
            + resident bytes of the shared files they use (tmpfs, memfds),
              each counted once
RSS is summed as the kernel reports it (shared pages counted per process).
The same rule as xenclone/hostmem.py, for processes that are not ours.
"""

import os

from xenclone import hostmem


def rollup(pid):
    try:
        return hostmem._rollup(pid)
    except (FileNotFoundError, ProcessLookupError):
        return {}


def faults(pid):
    """The process's minor + major page faults (/proc/PID/stat)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return int(fields[7]) + int(fields[9])      # minflt, majflt


def file_bytes(paths):
    total = 0
    for path in paths:
        try:
            total += os.stat(path).st_blocks * 512
        except FileNotFoundError:
            pass
    return total


def measure(pids, files=(), memfd_pids=()):
    """{"pss": bytes, "rss": bytes} for processes ``pids``, the shared
    ``files`` and the xenclone memfds held by ``memfd_pids``."""
    pss = rss = 0
    for pid in pids:
        roll = rollup(pid)
        pss += (roll.get("Pss", 0) - roll.get("Pss_Shmem", 0)) * 1024
        rss += roll.get("Rss", 0) * 1024
    memfds = {}
    for pid in memfd_pids:
        try:
            memfds.update(hostmem._memfds(pid))
        except (FileNotFoundError, ProcessLookupError):
            pass
    shared = file_bytes(files) + sum(memfds.values())
    return {"pss": pss + shared, "rss": rss}
