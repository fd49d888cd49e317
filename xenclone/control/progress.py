"""Progress of long operations, streamed to the command that asked.

    request {"op": "launch", "count": 16, "progress": true, "id": 7}
      -> WithProgress: a probe of the controller's state for that op,
         read every POLL_S while the op runs (a quicker op shows nothing)
      -> event {"event": "progress", "request": 7, "of": "launch",
                "done": 3, "total": 16, "unit": "clones", "stage": "launching"}
         each time the figures change, and, where there is a total, the
         figures it ended with
      -> the reply, as without progress

The controller is not touched: a probe reads what it already keeps
(domains, the ledger's figures), so every op that runs long gets progress
the same way, and requests without ``progress`` (XenStore requests,
scripts) see nothing of it.  (An event has no ``op``: a frame with one
is a request.)
"""

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from xenclone.wire import WireError

POLL_S = 0.25
log = Logger()


def _int(value, default):
    return value if type(value) is int and value > 0 else default


def _launch(controller, msg):
    before = set(controller.domains.values())
    ledger = controller.ledger

    def read():
        new = [d for d in controller.domains.values() if d not in before
               and d.image == msg.get("image") and ledger.has_clone(d.domid)]
        return len(new), _int(msg.get("count"), 1), "clones", "launching"
    return read


def _discard(controller, msg):
    def clones():
        return [d for d in controller.domains.values() if d.image == msg.get("image")]
    total = len(clones())

    def read():
        left = len(clones())
        return (total - left, total, "clones",
                "destroying clones" if left else "discarding the image")
    return read


def _clone_stats(controller, msg):
    """The clone's ledger figures, or None once it is gone."""
    try:
        dom = controller._clone(msg)
    except WireError:
        return None
    return lambda: controller.pager.stats(dom.domid)


def _hoard(controller, msg):
    stats = _clone_stats(controller, msg)
    if stats is None or not msg.get("wait"):
        return None

    def read():
        s = stats() or {}
        cap = s.get("target_pages") or s.get("nominal_pages")
        return s.get("resident_pages"), cap, "pages", "filling"
    return read


def _evict(controller, msg):
    stats = _clone_stats(controller, msg)
    if stats is None or stats() is None:
        return None
    first = stats()["resident_pages"]
    to = _int(msg.get("to"), 0)

    def read():
        s = stats() or {"resident_pages": to}
        return first - s["resident_pages"], max(0, first - to), "pages", "evicting"
    return read


def _bless(controller, msg):
    # The capture (a Linux guest suspends, up to 2 minutes) and the store
    # are the backend's and the memory server's: the command shows the
    # time it has taken.
    return lambda: (None, None, "", "capturing and storing")


PROBES = {"launch": _launch, "discard": _discard, "hoard": _hoard, "evict": _evict,
          "bless": _bless}


class WithProgress:
    """``handler`` (the control socket's) with progress events sent on
    ``proto`` for the requests that ask for them; ``controller`` is what
    the probes read."""

    def __init__(self, handler, controller, proto, clock, interval=POLL_S):
        self.handler = handler
        self.controller = controller
        self.proto = proto
        self.clock = clock
        self.interval = interval

    def __getattr__(self, name):
        method = getattr(self.handler, name)
        probe = PROBES.get(name[3:]) if name.startswith("op_") else None
        if probe is None:
            return method

        def reported(msg):
            read = None
            if msg.get("progress") is True:
                try:
                    read = probe(self.controller, msg)
                except Exception:       # progress never fails the op it reports
                    log.failure("progress of {op}", op=name[3:])
            if read is None:
                return method(msg)
            return self._run(method, msg, name[3:], read)
        return reported

    def _run(self, method, msg, op, read):
        d = defer.maybeDeferred(method, msg)
        if d.called:        # refused, or nothing to wait for: no events
            return d
        last = [None]

        def send(ended=False):
            if not self.proto.connected:
                return          # the command went away: the op runs on
            try:
                figures = read()
                if figures == last[0] or (ended and figures[1] is None):
                    return      # nothing new; or the end of an op without a total
                last[0] = figures
                done, total, unit, stage = figures
                self.proto.send_event("progress", request=msg.get("id"), of=op, done=done,
                                      total=total, unit=unit, stage=stage)
            except Exception:       # progress never fails the op it reports
                log.failure("progress of {op}", op=op)

        poll = task.LoopingCall(send)
        poll.clock = self.clock
        poll.start(self.interval, now=False)     # an op done sooner shows nothing

        def finished(result):
            poll.stop()
            if not isinstance(result, Failure):
                send(ended=True)    # the figures it ended with, before its reply
            return result

        return d.addBoth(finished)
