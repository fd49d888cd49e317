"""The XenStore wire protocol (xen/include/public/io/xs_wire.h): pure codec.

Every message is a native-endian header ``type, req_id, tx_id, len``
followed by ``len`` bytes of payload, at most 4096 in either direction.
"""

import enum
import struct

HEADER = struct.Struct("=IIII")
PAYLOAD_MAX = 4096
ABS_PATH_MAX = 3072
REL_PATH_MAX = 2048


class Op(enum.IntEnum):
    DEBUG = 0
    DIRECTORY = 1
    READ = 2
    GET_PERMS = 3
    WATCH = 4
    UNWATCH = 5
    TRANSACTION_START = 6
    TRANSACTION_END = 7
    INTRODUCE = 8
    RELEASE = 9
    GET_DOMAIN_PATH = 10
    WRITE = 11
    MKDIR = 12
    RM = 13
    SET_PERMS = 14
    WATCH_EVENT = 15
    ERROR = 16
    IS_DOMAIN_INTRODUCED = 17
    RESUME = 18
    SET_TARGET = 19
    RESTRICT = 20
    RESET_WATCHES = 21
    DIRECTORY_PART = 22


class XenStoreError(Exception):
    """An operation failed; ``code`` is the errno name on the wire."""

    def __init__(self, code, detail=""):
        Exception.__init__(self, *((code, detail) if detail else (code,)))
        self.code = code


class ProtocolError(Exception):
    """The byte stream cannot be a XenStore stream: drop the connection."""


class Message:
    __slots__ = ("type", "req_id", "tx_id", "payload")

    def __init__(self, type, req_id=0, tx_id=0, payload=b""):
        self.type, self.req_id, self.tx_id, self.payload = type, req_id, tx_id, payload

    def __repr__(self):
        try:
            name = Op(self.type).name
        except ValueError:
            name = self.type
        return "Message(%s, req=%d, tx=%d, %r)" % (name, self.req_id, self.tx_id, self.payload[:64])

    def encode(self):
        if len(self.payload) > PAYLOAD_MAX:
            raise XenStoreError("E2BIG", "payload of %d bytes" % len(self.payload))
        return HEADER.pack(self.type, self.req_id, self.tx_id, len(self.payload)) + self.payload

    def reply(self, payload):
        return Message(self.type, self.req_id, self.tx_id, payload)

    def error(self, code):
        return Message(Op.ERROR, self.req_id, self.tx_id, code.encode() + b"\0")


def split_messages(buf):
    """Cut complete messages off ``buf``: return ``(messages, rest)``."""
    messages = []
    view = memoryview(buf)
    while len(view) >= HEADER.size:
        type_, req_id, tx_id, length = HEADER.unpack_from(view)
        if length > PAYLOAD_MAX:
            raise ProtocolError("payload length %d exceeds %d" % (length, PAYLOAD_MAX))
        end = HEADER.size + length
        if len(view) < end:
            break
        messages.append(Message(type_, req_id, tx_id, bytes(view[HEADER.size:end])))
        view = view[end:]
    return messages, bytes(view)


def strings(*items):
    """``a|b|`` on the wire: each item followed by a nul."""
    return b"".join((i.encode() if isinstance(i, str) else i) + b"\0" for i in items)


def parse_strings(payload, count=None):
    """The nul-terminated strings of ``payload`` (the first ``count`` if given).

    A missing final nul is tolerated, as xenstored does for the last argument;
    fields past ``count`` are the protocol's reserved ``?`` and are ignored.
    """
    if not payload:
        parts = []
    else:
        parts = payload[:-1].split(b"\0") if payload.endswith(b"\0") else payload.split(b"\0")
    if count is not None:
        if len(parts) < count:
            raise XenStoreError("EINVAL", "expected %d arguments, got %d" % (count, len(parts)))
        parts = parts[:count]
    try:
        return [p.decode("ascii") for p in parts]
    except UnicodeDecodeError:
        raise XenStoreError("EINVAL", "argument is not ASCII")


def split_value(payload):
    """``path|value``: the path and the raw value (which may hold nuls)."""
    path, sep, value = payload.partition(b"\0")
    if not sep:
        raise XenStoreError("EINVAL", "write without a value separator")
    return parse_strings(path, 1)[0], value


def error_code(payload):
    return payload.rstrip(b"\0").decode("ascii", "replace") or "EINVAL"
