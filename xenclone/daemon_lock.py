"""One daemon per state_dir and per run_dir.

Two daemons on one state would serve the same clones (each taking their
fault handles back from the VMM host) and write the same page-out files;
on one run_dir the second would unlink the first's sockets.  So before the
daemon touches either directory it takes an flock on ``daemon.lock`` in
each, held for its life (the kernel drops it when the daemon dies, however
it dies: a kill -9 leaves no stale lock to clean up).  A daemon that finds
either taken touches nothing else and exits with code 2.
"""

import fcntl
import os

from twisted.application.service import Service

LOCK_NAME = "daemon.lock"


class AlreadyRunning(Exception):
    """Another daemon holds the lock; str() says which directory and pid."""


def _lock(directory):
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = os.path.join(directory, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise AlreadyRunning("another xenclone daemon (pid %s) uses %s; stop it first, or "
                             "give this one its own state_dir and run_dir" % (holder, directory))
    return fd


def take(settings):
    """Lock state_dir and run_dir for this daemon; the fds, to keep open
    (``LockHolder``)."""
    fds = []
    # One lock a directory: a second flock of the same file from this
    # process would take it for another daemon's.
    dirs = dict.fromkeys(os.path.realpath(settings[key]) for key in ("state_dir", "run_dir"))
    try:
        for path in dirs:
            fds.append(_lock(path))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds


class LockHolder(Service):
    """Keeps the locks; once running (after twistd forked, if it does),
    writes the daemon's pid in them for the next one's message."""

    def __init__(self, fds):
        self.fds = fds

    def startService(self):
        super().startService()
        pid = b"%d\n" % os.getpid()
        for fd in self.fds:
            os.ftruncate(fd, 0)
            os.pwrite(fd, pid, 0)
