"""dom0's side of a clone's identity handshake with the guest agent
(guest/identity-agent).

Before the clone runs, ``identity_nodes`` go into its XenStore home, ahead
of its ``xenclone/clone-id`` (the node the agent watches, so the agent finds
the rest in place when it fires):

    xenclone/entropy          64 fresh random bytes, hex, for this clone only:
                              readable and removable by it (read once)
    xenclone/ip, gateway      an address the operator gave (optional)
    xenclone/hostname         the name to take (optional; else <old>-<clone id>)
    xenclone/identity         "" until the agent writes "renewed" or "failed"
    xenclone/identity-detail  the agent's JSON account of what it did

dom0 owns every node; no other domain can read them.  ``wait_identity``
polls ``identity`` until the agent answers or the timeout passes: a clone
without the agent runs on, reported as not renewed.
"""

import ipaddress
import json
import os

from twisted.internet import defer, task

from xenclone.backends.xen import linux
from xenclone.wire import WireError

ENTROPY_BYTES = 64
POLL = 0.1
NOT_RENEWED = "not renewed"


def identity_nodes(domid, ip=None, gateway=None, hostname=None):
    """``(path, value, perms)`` in the order to write them (fork.write_home's
    ``extra``, or ``write_identity``).  Bad input is a WireError."""
    base = linux.home(domid) + "/xenclone"
    readable, writable = ["n0", "r%d" % domid], ["n0", "b%d" % domid]
    nodes = [(base, "", readable),
             (base + "/entropy", os.urandom(ENTROPY_BYTES).hex(), writable)]
    if ip is not None:
        nodes.append((base + "/ip", _interface(ip), readable))
    if gateway is not None:
        nodes.append((base + "/gateway", _address(gateway), readable))
    if hostname is not None:
        nodes.append((base + "/hostname", _hostname(hostname), readable))
    nodes += [(base + "/identity", "", writable), (base + "/identity-detail", "", writable)]
    return nodes


def _interface(text):
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        raise WireError("bad-ip", "ip %r is not an address with a prefix, e.g. 10.0.0.5/24"
                        % (text,))
    if "/" not in str(text):
        raise WireError("bad-ip", "ip %r needs its prefix length, e.g. %s/24" % (text, text))
    return str(iface)


def _address(text):
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise WireError("bad-ip", "gateway %r is not an address" % (text,))


def _hostname(text):
    labels = str(text).split(".")
    if not all(1 <= len(l) <= 63 and l.replace("-", "").isalnum() and l.isascii()
               and not l.startswith("-") for l in labels):
        raise WireError("bad-hostname", "hostname %r: letters, digits and '-' in labels of "
                        "1 to 63" % (text,))
    return str(text)


@defer.inlineCallbacks
def write_identity(xs, domid, ip=None, gateway=None, hostname=None):
    """The nodes written, each before its permissions (a clone made by
    ``xl create``; then ``linux.write_clone_id``)."""
    for path, value, perms in identity_nodes(domid, ip, gateway, hostname):
        yield xs.write(path, value)
        yield xs.set_perms(path, perms)


@defer.inlineCallbacks
def wait_identity(reactor, xs, domid, timeout):
    """``{"identity": "renewed"|"failed", "detail": {...}, "seconds": s}``
    once the agent answers; ``{"identity": "not renewed"}`` after
    ``timeout`` seconds without an answer (0: one look)."""
    base = linux.home(domid) + "/xenclone"
    t0 = reactor.seconds()
    while True:
        state = yield linux.read_node(xs, base + "/identity")
        if state in (b"renewed", b"failed"):
            raw = yield linux.read_node(xs, base + "/identity-detail")
            try:
                detail = json.loads(raw or b"{}")
            except ValueError:
                detail = {"unreadable": (raw or b"")[:200].decode(errors="replace")}
            return {"identity": state.decode(), "detail": detail,
                    "seconds": round(reactor.seconds() - t0, 3)}
        if reactor.seconds() - t0 >= timeout:
            return {"identity": NOT_RENEWED}
        yield task.deferLater(reactor, POLL, lambda: None)
