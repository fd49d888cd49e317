"""Images: what a bless captures and what a launch opens.  Immutable."""

import errno
import os
import re

import attr

from xenclone.interfaces import PAGE_SIZE

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_name(name, what="name"):
    """Names of images and domains: short, safe in paths and XenStore."""
    # fullmatch: "$" would let a trailing newline through
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValueError("bad %s %r: use 1-64 of A-Z a-z 0-9 _ . - (not first)" % (what, name))
    return name


@attr.s(frozen=True)
class Capture:
    """A paused domain's state, handed from a backend to the memory server.

    ``mem_fd`` is a memfd holding guest RAM (page ``p`` at offset
    ``p * 4096``); the receiver must not keep it beyond the copy.
    """

    arch = attr.ib()          # e.g. "kvm-x86-32": which backend can restore it
    vcpu_state = attr.ib()    # opaque bytes, backend-specific
    mem_fd = attr.ib()
    npages = attr.ib()
    meta = attr.ib(factory=dict)   # master name, config, workload params


@attr.s(frozen=True)
class OpenImage:
    """An image opened through the local fast path.

    ``mem_fd`` is the memory server's memfd of the image: zero pages are
    holes in it, every other page is resident while the image is cached.
    ``zero`` has one byte per page, 1 where the image page is all zero.
    ``origin`` is None for a local image; for a mirror, the remote memory
    server (``server``) and its name for the image (``image``).
    """

    image_id = attr.ib()
    generation = attr.ib()
    arch = attr.ib()
    vcpu_state = attr.ib()
    npages = attr.ib()
    mem_fd = attr.ib()
    zero = attr.ib()
    meta = attr.ib(factory=dict)
    origin = attr.ib(default=None)

    def cached_pages(self):
        """The pages this host's cache holds, as the kernel shows them
        (zero pages are holes; so are pages the cache let go)."""
        pages, offset, end = [], 0, self.npages * PAGE_SIZE
        while offset < end:
            try:
                start = os.lseek(self.mem_fd, offset, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:      # no data past offset
                    break
                raise
            stop = min(os.lseek(self.mem_fd, start, os.SEEK_HOLE), end)
            pages.extend(range(start // PAGE_SIZE, (stop + PAGE_SIZE - 1) // PAGE_SIZE))
            offset = stop
        return pages

    def read_page(self, pfn):
        """A page of this host's cache of the image (the caller knows it
        is cached: a hole reads as zeros)."""
        return os.pread(self.mem_fd, PAGE_SIZE, pfn * PAGE_SIZE)

    def store_page(self, pfn, data):
        """Put a fetched page back into this host's cache of the image."""
        os.pwrite(self.mem_fd, data, pfn * PAGE_SIZE)

    def drop_pages(self, pfns):
        """Let this host's cache of the image go of these pages (the disk
        copy stays); no clone may map them any more."""
        from xenclone.memserver.cache import punch
        for pfn in pfns:
            punch(self.mem_fd, pfn, 1)
