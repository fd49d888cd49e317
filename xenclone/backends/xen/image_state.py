"""A Xen image's opaque vCPU state: the xl settings the master was made
with (without its devices), its kind (the project's guest, or a Linux
guest) and its vifs and disks as xl strings, then Xen's HVM save record.
Launches read the settings back to make clones alike, and the devices to
give each clone its own (clone_devices.py)."""

import json
import struct

GUEST, LINUX = "guest", "linux"     # master kinds
_HEAD = struct.Struct("<I")


def pack_state(config, hvm_context, kind=GUEST, devices=None):
    head = {"xl": config, "kind": kind}
    if devices:
        head["devices"] = devices
    head = json.dumps(head, sort_keys=True).encode()
    return _HEAD.pack(len(head)) + head + hvm_context


def _head(blob):
    n, = _HEAD.unpack_from(blob)
    return json.loads(blob[_HEAD.size:_HEAD.size + n]), _HEAD.size + n


def unpack_state(blob):
    """``(xl settings, kind, HVM record)``."""
    head, end = _head(blob)
    return head["xl"], head.get("kind", GUEST), blob[end:]


def unpack_devices(blob):
    """The master's ``{"vif": [...], "disk": [...]}``, or None."""
    return _head(blob)[0].get("devices")
