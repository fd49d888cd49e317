"""Per-page CRC32s of an image: made at bless, checked wherever pages return.

``<dir>/<image>/crc`` holds one little-endian uint32 per page, zlib's
CRC32 of the page (of a zero page too).  It is written with the image at
bless (a mirror's comes from its origin), and checked:

    load   the memory server copies an image from disk into RAM: a page
           that does not match and the image is not loaded
    fetch  it reads pages from disk for a pager: the fetch fails
           (``corrupt-image``)
    mirror the daemon gets a mirrored image's pages from the remote
           server: a page that is not what the origin described fails the
           fetch (``corrupt-page``), and the pager asks again later

A mismatch is an error for that image; its bytes never reach a clone.
An image in a Xen memory-server domain has its table too (for the hosts
that mirror it); its own pages never leave RAM, so it checks none.
"""

import sys
import zlib
from array import array

from twisted.internet import defer

from xenclone.interfaces import PAGE_SIZE
from xenclone.wire import WireError

ZERO_CRC = zlib.crc32(bytes(PAGE_SIZE))
MAX_CRCS = 1 << 20          # table entries per request: 4 MiB
FILE_NAME = "crc"


def new_table(npages):
    """Every page a zero page until ``note`` says otherwise."""
    return array("I", [ZERO_CRC]) * npages


def note(table, first, data):
    """Record the CRCs of the pages ``data`` holds from page ``first``."""
    view = memoryview(data)
    for i in range(len(data) // PAGE_SIZE):
        table[first + i] = zlib.crc32(view[i * PAGE_SIZE:(i + 1) * PAGE_SIZE])


def first_bad(table, first, data):
    """The first page of ``data`` (from page ``first``) whose CRC is not
    the table's, or None."""
    view = memoryview(data)
    for i in range(len(data) // PAGE_SIZE):
        if zlib.crc32(view[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]) != table[first + i]:
            return first + i
    return None


def to_bytes(table):
    if sys.byteorder == "big":
        table = array("I", table)
        table.byteswap()
    return table.tobytes()


def from_bytes(blob, npages):
    """A table from its bytes; ValueError unless it has one entry a page."""
    if len(blob) != 4 * npages:
        raise ValueError("CRC table of %d bytes for %d pages" % (len(blob), npages))
    table = array("I")
    table.frombytes(blob)
    if sys.byteorder == "big":
        table.byteswap()
    return table


@defer.inlineCallbacks
def fetch_table(source, image_id, npages):
    """An image's whole table from a memory server (local or remote), in
    requests of at most MAX_CRCS entries."""
    parts = []
    for first in range(0, npages, MAX_CRCS):
        parts.append((yield source.crcs(image_id, first, min(MAX_CRCS, npages - first))))
    try:
        return from_bytes(b"".join(parts), npages)
    except ValueError as e:
        raise WireError("bad-reply", "the CRC table of %r: %s" % (image_id, e))
