"""Run a tool as a child process the reactor watches, bounded in time.

``run(reactor, argv, timeout, code)`` is the shared choke point of the
tools the daemon drives (``xl``: backends/xen/xl.py; ``qemu-img``:
backends/xen/disk_tool.py): its Deferred fires with the tool's standard output, or
fails with ``WireError(code + "-failed")`` carrying the tool's last line of
error, or ``WireError(code + "-timeout")`` once the child, killed after
``timeout`` seconds, has been reaped.
"""

from twisted.internet import defer, error, protocol
from twisted.logger import Logger

from xenclone.wire import WireError

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


def run(reactor, argv, timeout, code):
    """Deferred[str]: the output of ``argv`` (``argv[0]`` looked up in PATH)."""
    def kill(d):
        try:
            proc.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass

    done = defer.Deferred(kill)
    collect = _Collect(done)
    proc = reactor.spawnProcess(collect, argv[0], argv, env=None)
    log.debug("{tool} {args}", tool=code, args=" ".join(argv[1:]))

    def finished(result):
        status, out, err = result
        if status != 0:
            why = (err.strip() or out.strip()).splitlines()
            raise WireError(code + "-failed", "%s: %s" % (" ".join(argv), why[-1] if why else
                                                         "exit status %s" % status))
        return out

    def timed_out(f):
        f.trap(defer.TimeoutError, defer.CancelledError)

        def gone(_):        # killed: the answer once it is reaped, not before
            raise WireError(code + "-timeout", "%s: no answer in %.0f s"
                            % (" ".join(argv), timeout))

        return collect.ended.addBoth(gone)

    done.addTimeout(timeout, reactor)
    return done.addCallbacks(finished, timed_out)
