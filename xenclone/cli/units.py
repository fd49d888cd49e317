"""Sizes as a Xen administrator writes and reads them.

    parse_size("512")  -> pages of 512 MiB (a plain number is MiB, as xl mem-set)
    parse_size("2G"), "512M", "64K", "1T", "1.5G", "512MiB"  -> pages
    show_pages(131072) -> "512M"

The daemon counts 4 KiB pages; the command converts at its edge, so
``--json`` keeps the daemon's page counts.  A size that is not a whole
number of pages is rounded up to one.
"""

import argparse
import math
import re

PAGE = 4096
_UNITS = {"": 2**20, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_size(text):
    """Pages of a size: ``512``, ``512M``, ``2G``...; ValueError if it is none."""
    m = _SIZE.match(str(text))
    if not m:
        raise ValueError("%r is not a size (e.g. 512 or 512M: MiB; 64K, 2G, 1T)" % (text,))
    number, unit = m.groups()
    return math.ceil(float(number) * _UNITS[unit.lower()] / PAGE)


def show_bytes(n):
    """1536 MiB -> "1.5G": the largest unit that keeps the figure >= 1."""
    for suffix, size in (("T", 2**40), ("G", 2**30), ("M", 2**20), ("K", 2**10)):
        if n >= size:
            text = "%.1f" % (n / size)
            return (text[:-2] if text.endswith(".0") else text) + suffix
    return "0" if n == 0 else "%dB" % n


def show_pages(pages):
    return show_bytes(pages * PAGE)


def size_arg(text):
    """An argparse type: a bad size is a usage error naming it."""
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))
