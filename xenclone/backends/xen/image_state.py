"""A Xen image's opaque vCPU state: the xl settings the master was made
with and its kind (the project's guest, or a Linux guest), then Xen's HVM
save record.  Launches read the settings back to make clones alike."""

import json
import struct

GUEST, LINUX = "guest", "linux"     # master kinds
_HEAD = struct.Struct("<I")


def pack_state(config, hvm_context, kind=GUEST):
    head = json.dumps({"xl": config, "kind": kind}, sort_keys=True).encode()
    return _HEAD.pack(len(head)) + head + hvm_context


def unpack_state(blob):
    """``(xl settings, kind, HVM record)``."""
    n, = _HEAD.unpack_from(blob)
    head = json.loads(blob[_HEAD.size:_HEAD.size + n])
    return head["xl"], head.get("kind", GUEST), blob[_HEAD.size + n:]
