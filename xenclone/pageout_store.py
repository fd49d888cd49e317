"""A clone's page-out store: its private pages in slots of a file, checked by CRC.

    <store_dir>/clone-<domid>.pages       page ``n`` of the store is slot ``n``
    <store_dir>/clone-<domid>.pages.idx   a record per slot: pfn, CRC32, sequence
                                          (``pageout_index``)

The backends write it (the KVM backend in its VMM host, Xen in its
evictor's thread): the pages, then a flush, then their index records, and
only then do they drop the pages from the guest.  The pager reads a slot
back when its page faults, and hands the guest nothing whose CRC is wrong;
a daemon that restarts reads the index (``control/recovery.py``).  The
store goes when its clone does.
"""

import errno
import os
import zlib

from xenclone import pageout_index
from xenclone.interfaces import PAGE_SIZE
from xenclone.runs import runs


def pwrite_all(fd, data, offset):
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        if n == 0:
            raise OSError(errno.EIO, "page-out store: short write")
        view, offset = view[n:], offset + n


def crcs_of(data, count):
    """The CRC32 of each of ``count`` pages in ``data``."""
    return [zlib.crc32(data[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]) for i in range(count)]


def write_pages(path, pfns, slots, data, sync):
    """Write pages (``data``) to the store at ``path`` and close it, for a
    writer that keeps no store open (Xen's evictor); their CRC32s."""
    crcs = crcs_of(data, len(pfns))
    store = PageOutStore(path)
    try:
        store.write(pfns, slots, data, crcs, sync)
    finally:
        store.close()
    return crcs


class PageOutStore:
    def __init__(self, path):
        self.path = path
        self._fds = None        # (store, index), open to read and write
        self._read_fd = None

    @classmethod
    def of_clone(cls, store_dir, domid):
        return cls(os.path.join(store_dir, "clone-%d.pages" % domid))

    # -- the writer's side (a backend)

    def open(self):
        """(store fd, index fd), made if need be; kept open until ``close``."""
        if self._fds is None:
            self._fds = tuple(os.open(p, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                              for p in (self.path, pageout_index.index_path(self.path)))
        return self._fds

    def write(self, pfns, slots, data, crcs, sync, flush=None):
        """Write the pages (``data``, one after another) to their slots,
        flush them, then write their index records.  ``flush(fd, offset,
        length)`` pushes the pages out (default: fdatasync if ``sync``).
        Raises OSError, having written no index record, if the pages failed."""
        if not slots:
            return
        fd, index_fd = self.open()
        for i, n in runs(slots):
            pwrite_all(fd, data[i * PAGE_SIZE:(i + n) * PAGE_SIZE], slots[i] * PAGE_SIZE)
        lo, hi = min(slots), max(slots) + 1
        if flush is not None:
            flush(fd, lo * PAGE_SIZE, (hi - lo) * PAGE_SIZE)
        elif sync:
            os.fdatasync(fd)
        for offset, record in pageout_index.records(pfns, slots, crcs):
            pwrite_all(index_fd, record, offset)
        if sync:
            os.fdatasync(index_fd)

    # -- the reader's side (the pager, recovery)

    def read(self, slot, crc):
        """The page in ``slot``, or None if its record is short or its CRC wrong."""
        if self._read_fd is None:
            self._read_fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        data = os.pread(self._read_fd, PAGE_SIZE, slot * PAGE_SIZE)
        if len(data) != PAGE_SIZE or zlib.crc32(data) != crc:
            return None
        return data

    def index(self):
        """pfn -> (slot, crc) of each page the store holds; {} if none."""
        return pageout_index.read_index(self.path)

    def close(self):
        for fd in (self._fds or ()) + ((self._read_fd,) if self._read_fd is not None else ()):
            os.close(fd)
        self._fds = self._read_fd = None

    def remove(self):
        """The clone is gone: so is its store."""
        self.close()
        pageout_index.remove(self.path)
