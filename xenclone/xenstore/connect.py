"""Which XenStore client to make for a socket path.

On a Xen dom0, for the host's xenstored (no path, or xenstored's usual
socket), libxenstore (``libclient``): it finds xenstored as xl does,
honouring ``$XENSTORED_PATH``, so a xenstored in a stub domain, reachable
only through /dev/xen/xenbus, works too.  Anywhere else (the embedded
server, a socket named in the config, a shim built without libxenstore),
the wire-protocol client (``client``).

For many writes at once (a fork clone's home), a second client: the wire
client on xenstored's socket where it has one, which sends every request
at once, where libxenstore waits for each answer before the next.
"""

import os

from xenclone.backends.xen.libxc import host_has_xen
from xenclone.xenstore.client import DEFAULT_SOCKET, XenStoreClient
from xenclone.xenstore.libclient import LibXenStoreClient
from xenclone.xenstore.libxs import binding


def has_libxenstore():
    try:
        binding()
    except ImportError:
        return False
    return True


def _host_xenstored(path):
    return path in (None, DEFAULT_SOCKET) and host_has_xen() and has_libxenstore()


def xenstore_client(reactor, path=None):
    """An unconnected client with XenStoreClient's interface."""
    if _host_xenstored(path):
        return LibXenStoreClient(reactor)
    return XenStoreClient(reactor, path)


def bulk_client(reactor, path=None):
    """An unconnected client for many writes at once, or None where
    ``xenstore_client``'s already sends them so (or no socket takes them)."""
    if _host_xenstored(path) and os.path.exists(DEFAULT_SOCKET):
        return XenStoreClient(reactor, DEFAULT_SOCKET)
    return None
