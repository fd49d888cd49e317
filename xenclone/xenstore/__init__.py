"""XenStore for xenclone: the wire codec, the embedded server and the client.

Where there is no Xen, the daemon runs the embedded server (``server``) over
the store (``tree``); on a Xen dom0 the client (``client``) talks to the real
xenstored at /run/xenstored/socket.
"""

from xenclone.xenstore.wire import XenStoreError

__all__ = ["XenStoreError"]
