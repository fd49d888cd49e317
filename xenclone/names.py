"""Names and identifiers that come from outside, checked where they enter.

Every value the daemon or a helper receives from a peer it does not
control (a remote memory server, a guest, XenStore, the control socket, a
config file, a record on disk another process wrote) and later uses as a
name goes through one of these checks first.  They accept only short ASCII
words without "/" or a leading ".", so such a value can be joined into a
path or a XenStore node as it is.  ``join`` is the only way a path is built
from them: it checks every part again.

A refused value raises ``BadName``: a ``WireError`` (code ``bad-name``)
for the link that sent it, and a ``ValueError`` for config and disk.
"""

import os
import re

from xenclone.wire import WireError

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# A generation is a word of the image's origin (12 hex digits here).
GENERATION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
# A part of a path: a name with a suffix ("<generation>.json").
_PART_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_SHOWN = 80         # of a refused value, in the error text


class BadName(WireError, ValueError):
    def __init__(self, message):
        super().__init__("bad-name", message)


def _shown(value):
    text = repr(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."


def check_name(name, what="name"):
    """Names of images and domains: short, safe in paths and XenStore."""
    # fullmatch: "$" would let a trailing newline through
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise BadName("bad %s %s: use 1-64 of A-Z a-z 0-9 _ . - (not first)"
                      % (what, _shown(name)))
    return name


def check_generation(generation, what="generation"):
    """An image generation: 1-64 of A-Z a-z 0-9 _ - (no dot, no slash)."""
    if not isinstance(generation, str) or not GENERATION_RE.fullmatch(generation):
        raise BadName("bad %s %s: use 1-64 of A-Z a-z 0-9 _ - (not first)"
                      % (what, _shown(generation)))
    return generation


def check_token(token, what="token"):
    """A request's own id, echoed in its answer: 1-32 of A-Z a-z 0-9 _ -."""
    if not isinstance(token, str) or not TOKEN_RE.fullmatch(token):
        raise BadName("bad %s %s: use 1-32 of A-Z a-z 0-9 _ -" % (what, _shown(token)))
    return token


def check_id(value, what="id", hi=2**31 - 1):
    """A domain or clone id: a plain int (not a bool) from 0 to ``hi``."""
    if type(value) is not int or not 0 <= value <= hi:
        raise BadName("bad %s %s: an integer from 0 to %d" % (what, _shown(value), hi))
    return value


def join(base, *parts):
    """``base``/part/...: no part may hold "/" or start with ".", so the
    path stays inside ``base`` whatever the parts came from."""
    for part in parts:
        if not isinstance(part, str) or not _PART_RE.fullmatch(part):
            raise BadName("bad path part %s under %s" % (_shown(part), base))
    return os.path.join(base, *parts)
