"""Which XenStore client to make for a socket path.

On a Xen dom0, for the host's xenstored (no path, or xenstored's usual
socket), libxenstore (``libclient``): it finds xenstored as xl does,
honouring ``$XENSTORED_PATH``, so a xenstored in a stub domain, reachable
only through /dev/xen/xenbus, works too.  Anywhere else (the embedded
server, a socket named in the config, a shim built without libxenstore),
the wire-protocol client (``client``).
"""

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


def xenstore_client(reactor, path=None):
    """An unconnected client with XenStoreClient's interface."""
    if path in (None, DEFAULT_SOCKET) and host_has_xen() and has_libxenstore():
        return LibXenStoreClient(reactor)
    return XenStoreClient(reactor, path)
