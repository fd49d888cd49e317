"""Checks of request fields both of the memory server's sockets share."""

from xenclone.wire import Reply, WireError


def field(msg, name, kind):
    value = msg.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise WireError("bad-request", "field %r missing or not %s" % (name, kind.__name__))
    return value


def fetch(store, msg):
    generation = msg.get("generation")
    if generation is not None and not isinstance(generation, str):
        raise WireError("bad-request", "generation must be a string")
    return Reply(payload=store.fetch(field(msg, "image", str), msg.get("pfn"),
                                     msg.get("count"), generation))


def crcs(store, msg):
    return Reply(payload=store.crcs(field(msg, "image", str), msg.get("first"),
                                    msg.get("count")))
