"""Host memory over a job, sampled from the daemon and drawn to a PNG.

matplotlib is an optional extra (``pip install xenclone[plot]``), so it is
imported only by ``plot_memory``: sampling works without it.
"""

from twisted.internet import task

from xenclone.wire import ConnectionLost, WireError

SERIES = (("resident", "resident"), ("shared", "shared"), ("private", "private"),
          ("evicted", "evicted (total)"))


def sample_from_host(t, host):
    """One sample from a ``host`` reply: the kernel's per-clone pages summed
    over the clones (or, without the kernel's view, the ledger's figures),
    the ledger's evictions summed over the classes."""
    if host.get("kernel") is not None:
        clones = host["kernel"]["clones"].values()
        shared = sum(c["shared"] for c in clones)
        private = sum(c["private"] for c in clones)
    else:
        private = host["ledger"]["private_pages"]
        shared = host["ledger"]["resident_pages"] - private
    return {"t": t, "resident": shared + private, "shared": shared, "private": private,
            "evicted": sum(host["ledger"]["evictions"].values())}


class MemorySampler:
    """Polls ``host`` every ``interval`` seconds into ``samples``.  With
    ``kernel`` false it asks for the ledger's figures only: the kernel's
    view scans every clone's page map, too slow to poll a short run."""

    def __init__(self, reactor, proto, interval=0.1, kernel=True):
        self.reactor = reactor
        self.proto = proto
        self.interval = interval
        self.kernel = kernel
        self.samples = []
        self.budget_pages = None
        self._loop = task.LoopingCall(self._poll)
        self._loop.clock = reactor
        self._done = None
        self._t0 = None
        self._min = None        # set by stop(): the samples to have before stopping

    def start(self):
        self._t0 = self.reactor.seconds()
        self._done = self._loop.start(self.interval, now=True)

    def _poll(self):
        def keep(msg):
            self.budget_pages = msg["ledger"]["budget_pages"]
            self.samples.append(sample_from_host(self.reactor.seconds() - self._t0, msg.fields))
            if self._min is not None:
                self._stop_when_enough()

        def skip(f):
            # A clone destroyed mid-scan fails one poll: a missing sample is harmless.
            f.trap(WireError)
            if f.check(ConnectionLost):
                return f

        fields = {} if self.kernel else {"kernel": False}
        return self.proto.request("host", **fields).addCallbacks(keep, skip)

    def stop(self, min_samples=0):
        """Fires with the samples once a poll in flight has come back.  A
        run too short for ``min_samples`` polls is followed by its end
        state until there are that many (polls still fail on their own)."""
        self._min = min_samples
        self._stop_when_enough()
        return self._done.addCallback(lambda _: self.samples)

    def _stop_when_enough(self):
        if self._loop.running and len(self.samples) >= self._min:
            self._loop.stop()


def plot_memory(samples, budget_pages, path, title="xenclone host memory"):
    """Draws ``samples`` (dicts of t, resident, shared, private, evicted)
    and the budget as a dashed line to the PNG file ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # A bare Figure on an Agg canvas: no pyplot, no display, no global state.
    fig = Figure(figsize=(9, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    t = [s["t"] for s in samples]
    for key, label in SERIES:
        ax.plot(t, [s[key] for s in samples], label=label, linewidth=1.5)
    peak = max((s[key] for s in samples for key, _ in SERIES), default=0)
    if budget_pages is not None and budget_pages <= 2 * peak:
        ax.axhline(budget_pages, color="black", linestyle="--", linewidth=1, label="host budget")
    elif budget_pages is not None:
        # A budget far above the data would flatten every line: name it only.
        ax.plot([], [], color="black", linestyle="--", linewidth=1,
                label="host budget %d (above the scale)" % budget_pages)
    ax.set_xlabel("seconds")
    ax.set_ylabel("pages (4 KiB)")
    ax.secondary_yaxis("right", functions=(lambda p: p / 256, lambda m: m * 256)).set_ylabel("MiB")
    ax.set_title(title)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left")
    fig.savefig(path, format="png")
