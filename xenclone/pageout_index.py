"""The index of a clone's page-out store: which guest page each slot holds.

The VMM host writes a slot's record before it drops the page from guest
RAM, so a daemon that dies at any point finds every paged-out page again
on restart (``xenclone.control.recovery``).  A slot is reused once its page
came back; the newest record of a page is its slot, and a page the kernel
shows present is not paged out whatever the index says.

Record at ``slot * RECORD.size`` of ``<store>.idx``: magic, sequence
number (monotonic), pfn, CRC32 of the page.
"""

import os
import struct
import time

RECORD = struct.Struct("<4sQQI")
MAGIC = b"XCPO"


def index_path(store_path):
    return store_path + ".idx"


def records(pfns, slots, crcs):
    """(offset, bytes) to write for these slots, newest first in time."""
    seq = time.monotonic_ns()
    return [(slot * RECORD.size, RECORD.pack(MAGIC, seq + i, pfn, crc))
            for i, (pfn, slot, crc) in enumerate(zip(pfns, slots, crcs))]


def read_index(store_path):
    """pfn -> (slot, crc) of each page's newest record; {} if none."""
    try:
        with open(index_path(store_path), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return {}
    newest = {}
    for slot in range(len(data) // RECORD.size):
        magic, seq, pfn, crc = RECORD.unpack_from(data, slot * RECORD.size)
        if magic == MAGIC and (pfn not in newest or seq > newest[pfn][0]):
            newest[pfn] = (seq, slot, crc)
    return {pfn: (slot, crc) for pfn, (_, slot, crc) in newest.items()}


def remove(store_path):
    for path in (store_path, index_path(store_path)):
        if os.path.exists(path):
            os.unlink(path)
