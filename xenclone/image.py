"""Images: what a bless captures and what a launch opens.  Immutable."""

import errno
import os

import attr

from xenclone.interfaces import PAGE_SIZE


@attr.s(frozen=True)
class Capture:
    """A paused domain's state, handed from a backend to the memory server.

    Guest RAM is either ``mem_fd``, a memfd (page ``p`` at offset
    ``p * 4096``) the receiver must not keep beyond the copy, or, on Xen,
    ``domid``: a paused domain the memory server reads through foreign
    mappings itself, so the image never passes through a dom0 buffer.
    """

    arch = attr.ib()          # e.g. "kvm-x86-32": which backend can restore it
    vcpu_state = attr.ib()    # opaque bytes, backend-specific
    mem_fd = attr.ib()
    npages = attr.ib()
    meta = attr.ib(factory=dict)   # master name, config, workload params
    domid = attr.ib(default=None)

    def close(self):
        if self.mem_fd is not None:
            os.close(self.mem_fd)


@attr.s(frozen=True)
class OpenImage:
    """An image opened through the local fast path.

    ``mem_fd`` is the memory server's memfd of the image: zero pages are
    holes in it, every other page is resident while the image is cached.
    ``zero`` has one byte per page, 1 where the image page is all zero.
    ``origin`` is None for a local image; for a mirror, the remote memory
    server (``server``) and its name for the image (``image``).
    ``server_domain`` is None, or where the image lives on Xen: the
    memory-server domain ``domid`` granted its pages as refs ``first_ref``
    onwards (page p is ref first_ref + p).  Its memfd is then empty, and a
    backend that can map grants sets ``pages`` to read them.
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
    server_domain = attr.ib(default=None)
    pages = attr.ib(default=None, eq=False)     # .read_page(pfn), if granted

    def has_page(self, pfn):
        """Whether this host holds the page's contents (granted, or in the
        cache: a hole there is a page the cache let go, or never fetched)."""
        if self.pages is not None:
            return True
        offset = pfn * PAGE_SIZE
        try:
            return os.lseek(self.mem_fd, offset, os.SEEK_DATA) == offset
        except OSError as e:
            if e.errno == errno.ENXIO:
                return False
            raise

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
        """A page of this host's copy of the image (the caller knows it
        is there: a hole reads as zeros)."""
        if self.pages is not None:
            return self.pages.read_page(pfn)
        return os.pread(self.mem_fd, PAGE_SIZE, pfn * PAGE_SIZE)

    def store_page(self, pfn, data):
        """Put a fetched page back into this host's cache of the image (an
        image in the server domain has every page there already)."""
        if self.pages is None:
            os.pwrite(self.mem_fd, data, pfn * PAGE_SIZE)

    def drop_pages(self, pfns):
        """Let this host's cache of the image go of these pages (the disk
        copy stays); no clone may map them any more."""
        from xenclone._linux import lib
        for pfn in pfns:
            rc = lib.lx_punch_hole(self.mem_fd, pfn * PAGE_SIZE, PAGE_SIZE)
            if rc < 0:      # a hole: the next fault fetches the page again
                raise OSError(-rc, os.strerror(-rc))
