"""XenStore for xenclone: the wire codec, the embedded server and the clients.

Where there is no Xen, the daemon runs the embedded server (``server``) over
the store (``tree``) and talks to it with the wire-protocol client
(``client``).  On a Xen dom0 it talks to the real xenstored through
libxenstore (``libclient`` over ``libxs``), over xenstored's socket or
/dev/xen/xenbus (xenstored in a stub domain).  ``connect.xenstore_client``
chooses; pyxs is for tests only.
"""

from xenclone.xenstore.wire import XenStoreError

__all__ = ["XenStoreError"]
