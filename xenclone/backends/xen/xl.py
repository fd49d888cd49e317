"""The one place the Xen backend runs ``xl``: domain creation and teardown.

libxl does much more than the hypercalls (XenStore homes, consoles, the
domain's monitor process), so creating and destroying domains goes through
``xl``; everything else goes through libxc.  Each call is a child process
the reactor watches, bounded by a timeout after which it is killed.
"""

from twisted.internet import defer, error, protocol
from twisted.logger import Logger

from xenclone.config import format_value
from xenclone.wire import WireError

XL = "xl"
TIMEOUT = 60.0      # xl create of a small PVH domain takes 1-5 s under TCG

log = Logger()


class _Collect(protocol.ProcessProtocol):
    def __init__(self, done):
        self.done = done
        self.ended = defer.Deferred()   # fires once the process is reaped, even if killed
        self.out, self.err = [], []

    def outReceived(self, data):
        self.out.append(data)

    def errReceived(self, data):
        self.err.append(data)

    def processEnded(self, reason):
        self.ended.callback(None)
        if not self.done.called:
            code = reason.value.exitCode if reason.check(error.ProcessTerminated) else 0
            self.done.callback((code, b"".join(self.out).decode(errors="replace"),
                                b"".join(self.err).decode(errors="replace")))


def run(reactor, args, timeout=TIMEOUT):
    """Deferred[str]: ``xl ARGS``'s output; WireError('xl-failed') with its
    message when it fails, WireError('xl-timeout') when it hangs."""
    argv = [XL] + list(args)

    def kill(d):
        try:
            proc.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass

    done = defer.Deferred(kill)
    collect = _Collect(done)
    proc = reactor.spawnProcess(collect, XL, argv, env=None)
    log.debug("xl {args}", args=" ".join(args))

    def finished(result):
        code, out, err = result
        if code != 0:
            why = (err.strip() or out.strip()).splitlines()
            raise WireError("xl-failed", "%s: %s" % (" ".join(argv), why[-1] if why else
                                                    "exit status %s" % code))
        return out

    def timed_out(f):
        f.trap(defer.TimeoutError, defer.CancelledError)

        def gone(_):        # killed: the answer once it is reaped, not before
            raise WireError("xl-timeout", "%s: no answer in %.0f s" % (" ".join(argv), timeout))

        return collect.ended.addBoth(gone)

    done.addTimeout(timeout, reactor)
    return done.addCallbacks(finished, timed_out)


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
