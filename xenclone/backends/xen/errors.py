"""The Xen backend's one error boundary towards the operator: libxc and
xenstored failures become WireErrors that carry their own text."""

from xenclone.backends.xen import libxc
from xenclone.wire import WireError
from xenclone.xenstore.client import Disconnected
from xenclone.xenstore.wire import XenStoreError


def xen_errors(d):
    """``d`` with libxc's and xenstored's failures translated."""
    def translate(f):
        f.trap(libxc.XenError, XenStoreError, Disconnected)
        code = "xen-error" if f.check(libxc.XenError) else "xenstore-error"
        raise WireError(code, str(f.value))

    return d.addErrback(translate)
