"""The one place the daemon runs ``qemu-img`` and ``cp`` on disk images.

Every call is a child process the reactor watches, killed after its timeout
(child_process.py).  A master's disk is read with ``-U`` (force-share): the
QEMU that serves it to the suspended master (Xen's qdisk backend) holds a
write lock on it, and nothing writes it while the guest is suspended.
"""

import json

from xenclone import child_process
from xenclone.wire import WireError

QEMU_IMG = "qemu-img"
CP = "cp"
QUICK_TIMEOUT = 30.0        # info, create: milliseconds on a local file system
COPY_TIMEOUT = 3600.0       # a full copy of a large disk, where reflinks are not offered


def _qemu_img(reactor, args, timeout=QUICK_TIMEOUT):
    return child_process.run(reactor, [QEMU_IMG] + list(args), timeout, "qemu-img")


def info(reactor, path):
    """Deferred[dict]: ``qemu-img info``'s JSON (``format``,
    ``virtual-size``, ``backing-filename`` where it has one)."""
    def parse(out):
        try:
            return json.loads(out)
        except ValueError:
            raise WireError("qemu-img-failed", "qemu-img info %s: not JSON" % path)

    return _qemu_img(reactor, ["info", "-U", "--output=json", path]).addCallback(parse)


def reflink(reactor, src, dst):
    """A copy sharing ``src``'s blocks until either is written; fails
    (``cp-failed``) where the file system offers no reflinks (ext4)."""
    return child_process.run(reactor, [CP, "--reflink=always", src, dst], QUICK_TIMEOUT, "cp")


def convert(reactor, src, fmt, dst):
    """A full copy in the same format, without zero blocks (and, for
    qcow2, without its backing chain: the copy stands alone)."""
    return _qemu_img(reactor, ["convert", "-U", "-f", fmt, "-O", fmt, src, dst],
                     timeout=COPY_TIMEOUT)


def create_overlay(reactor, backing, backing_fmt, path):
    """A qcow2 file whose unwritten clusters read from ``backing``."""
    return _qemu_img(reactor, ["create", "-q", "-f", "qcow2", "-F", backing_fmt,
                               "-b", backing, path])
