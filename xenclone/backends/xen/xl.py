"""The one place the Xen backend runs ``xl``: domain creation and teardown.

libxl does much more than the hypercalls (XenStore homes, consoles, the
domain's monitor process), so creating and destroying domains goes through
``xl``; everything else goes through libxc.  Each call is a child process
the reactor watches, bounded by a timeout after which it is killed
(child_process.py).
"""

from twisted.internet import defer

from xenclone import child_process
from xenclone.config import format_value

XL = "xl"
TIMEOUT = 60.0      # far above a small PVH domain's xl create under TCG (design.md)


def run(reactor, args, timeout=TIMEOUT):
    """Deferred[str]: ``xl ARGS``'s output; WireError('xl-failed') with its
    message when it fails, WireError('xl-timeout') when it hangs."""
    return child_process.run(reactor, [XL] + list(args), timeout, "xl")


def config_text(settings):
    """An xl.cfg(5) file from a dict of settings."""
    return "".join("%s = %s\n" % (k, format_value(v)) for k, v in settings.items())


@defer.inlineCallbacks
def create_paused(reactor, path, name):
    """``xl create -p``; returns the new domain's id."""
    yield run(reactor, ["create", "-p", "-q", path])
    out = yield run(reactor, ["domid", name], timeout=10)
    return int(out.strip())


def destroy(reactor, domid):
    return run(reactor, ["destroy", str(domid)])
