"""The image cache in RAM: a memfd whose pages can be let go one by one."""

import os

from xenclone._linux import lib
from xenclone.interfaces import PAGE_SIZE


def punch(fd, pfn, count):
    """Free the cache's copy of pages (a hole; the next fault fetches)."""
    rc = lib.xc_punch_hole(fd, pfn * PAGE_SIZE, count * PAGE_SIZE)
    if rc < 0:
        raise OSError(-rc, os.strerror(-rc))
