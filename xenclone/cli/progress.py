"""Progress of a long operation, as the daemon streams it (control/progress.py).

    request with progress=true -> "progress" events -> a display on stderr,
    then the result on stdout, as always:

    stdout and stderr terminals  a tqdm bar, redrawn every REDRAW_S (so a
                                 bless that waits shows its time), gone
                                 once the result is printed
    otherwise                    plain lines ("launch web: 3/16 clones"),
                                 at most one a LINE_S, and the last one
    --json, or XenStore requests no progress asked: the result only

stdout is kept for the result, so ``xenclone launch web -n 4 | ...`` reads
the clones' ids as before.
"""

import sys

from tqdm import tqdm
from twisted.internet import task

from xenclone.cli.units import show_pages

OPS = frozenset({"launch", "bless", "hoard", "discard", "evict"})
REDRAW_S = 0.5
LINE_S = 1.0


def wanted(op, fields, args):
    """Whether to ask for progress: a long op, shown to a person or a log."""
    return (op in OPS and not getattr(args, "json", False)
            and not (op == "hoard" and not fields.get("wait")))


def display(clock, target, stream=None):
    """The display for ``stream`` (stderr): a bar on a terminal, else lines."""
    stream = stream or sys.stderr
    terminal = stream.isatty() and sys.stdout.isatty()
    return (Bar if terminal else Lines)(clock, target, stream)


def _figures(ev):
    done, total, unit = ev.get("done"), ev.get("total"), ev.get("unit")
    if done is None:
        return ""
    if unit == "pages":
        return "%s of %s" % (show_pages(done), show_pages(total or 0))
    return "%d/%d %s" % (done, total or 0, unit or "")


class Lines:
    """One line per change, at most one a LINE_S; the last always."""

    def __init__(self, clock, target, stream):
        self.clock, self.target, self.stream = clock, target, stream
        self.shown_at = None
        self.held = None

    def event(self, ev):
        finished = ev.get("done") is not None and ev.get("done") == ev.get("total")
        now = self.clock.seconds()
        if finished or self.shown_at is None or now - self.shown_at >= LINE_S:
            self._show(ev)
        else:
            self.held = ev

    def _show(self, ev):
        self.held, self.shown_at = None, self.clock.seconds()
        figures = _figures(ev)
        print("%s %s: %s%s" % (ev.get("of"), self.target, ev.get("stage"),
                               ": " + figures if figures else ""), file=self.stream, flush=True)

    def close(self):
        if self.held is not None:
            self._show(self.held)


class Bar:
    """A tqdm bar; without a total (bless), the time it has taken."""

    def __init__(self, clock, target, stream):
        self.clock, self.target, self.stream = clock, target, stream
        self.bar = None
        self.redraw = task.LoopingCall(self._refresh)
        self.redraw.clock = clock

    def event(self, ev):
        if self.bar is None:
            total = ev.get("total")
            fmt = None if total else "{desc}[{elapsed}]"
            self.bar = tqdm(total=total, file=self.stream, leave=False, dynamic_ncols=True,
                            unit=ev.get("unit") or "it", bar_format=fmt, mininterval=0)
            self.redraw.start(REDRAW_S, now=False)
        self.bar.set_description("%s %s: %s" % (ev.get("of"), self.target, ev.get("stage")),
                                 refresh=False)
        if ev.get("done") is not None:
            self.bar.n = ev["done"]
        self.bar.refresh()

    def _refresh(self):
        self.bar.refresh()

    def close(self):
        if self.bar is not None:
            self.redraw.stop()
            self.bar.close()
