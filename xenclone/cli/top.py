"""``xenclone top``: a live view of the host and its domains, like xentop.
Memory is shown in units (K, M, G of 4 KiB pages); faults are counts.

Each frame asks the daemon for ``host``, ``list`` and every domain's
``info``; ``--batch`` prints plain frames one after another (``xentop -b``)
so that scripts can read them.
"""

import sys

from twisted.internet import defer, task

from xenclone.cli.text import value
from xenclone.cli.units import show_pages
from xenclone.wire import ConnectionLost, WireError

# The codes of cli.main, not imported from there: main imports this module.
EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3
CLEAR = "\x1b[H\x1b[2J"
COLUMNS = (("NAME", "name"), ("DOMID", "domid"), ("ROLE", "role"), ("STATE", "state"),
           ("RESIDENT", "resident_pages"), ("SHARED", "shared_pages"),
           ("PRIVATE", "private_pages"), ("ZERO", "zero_pages"),
           ("PAGEDOUT", "paged_out_pages"), ("FAULTS", "faults"),
           ("TARGET", "target_pages"), ("LIMIT", "limit_pages"),
           # A fork's frames as the hypervisor counts them (info's hypervisor).
           ("HV-OWN", "hypervisor.own"), ("HV-PAGEDOUT", "hypervisor.paged_out"))


def _figure(info, key):
    """``info[key]``; a dotted key looks inside a dict (``hypervisor.own``)."""
    head, _, leaf = key.partition(".")
    v = info.get(head)
    return v.get(leaf) if leaf and isinstance(v, dict) else (None if leaf else v)


def add_parser(sub):
    sp = sub.add_parser("top", help="live view of host memory and domains, like xentop",
                        description="live view of host memory and domains, like xentop")
    sp.add_argument("--delay", "-d", type=float, default=1.0, metavar="SECONDS",
                    help="seconds between frames (default 1)")
    sp.add_argument("--iterations", "-i", type=int, default=0, metavar="N",
                    help="stop after N frames (default: run until interrupted)")
    sp.add_argument("--batch", "-b", action="store_true",
                    help="print plain frames one after another, without clearing the screen")
    return sp


def header(host):
    ledger, kernel = host["ledger"], host["kernel"]
    evictions = " ".join("%s=%d" % kv for kv in sorted(ledger.get("evictions", {}).items()))
    line = ("budget %s  allocated %s (kernel)  resident %s  private %s  cached %s  "
            "evictions %s  policy %s" % (
                show_pages(ledger["budget_pages"]), show_pages(kernel["allocated_pages"]),
                show_pages(kernel["resident_pages"]), show_pages(kernel["private_pages"]),
                show_pages(sum(kernel["image_cache_pages"].values())),
                evictions or "-", host.get("policy", "-")))
    if host.get("stalled"):
        line += "  STALLED: %s" % host["stalled"]
    return line


def table(infos):
    """Right-aligned figures (sizes in units), left-aligned words; missing
    figures are '-' (a master has no page accounting, a clone may have no
    target)."""
    cells = [[value(key, _figure(info, key), pages=key.startswith("hypervisor."))
              for _, key in COLUMNS] for info in infos]
    widths = [max([len(title)] + [len(row[i]) for row in cells])
              for i, (title, _) in enumerate(COLUMNS)]

    def fmt(row):
        return " ".join(c.ljust(w) if i < 4 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    return [fmt([title for title, _ in COLUMNS])] + [fmt(row) for row in cells]


@defer.inlineCallbacks
def snapshot(proto):
    """One frame's data: the host, then every domain's info.  A domain that
    is destroyed between ``list`` and its ``info`` is left out."""
    host = yield proto.request("host")
    listing = yield proto.request("list")

    def info(dom):
        d = proto.request("info", domain=dom["domid"])
        d.addCallback(lambda msg: dict(dom, **msg.fields))
        d.addErrback(lambda f: None if f.check(WireError) and not f.check(ConnectionLost) else f)
        return d

    d = defer.gatherResults([info(dom) for dom in listing["domains"]], consumeErrors=True)
    d.addErrback(lambda f: f.value.subFailure if f.check(defer.FirstError) else f)
    infos = yield d
    return host.fields, [i for i in infos if i is not None]


def render(host, infos):
    return "\n".join([header(host)] + table(infos))


def run_top(reactor, proto, args, out=None):
    """Fires with the exit code once ``--iterations`` frames are shown (1 if
    the last one failed), or 3 when the daemon goes away."""
    out = out or sys.stdout
    if not args.delay > 0 or args.iterations < 0:
        print("xenclone top: --delay must be above 0 and --iterations at least 0",
              file=sys.stderr)
        return defer.succeed(EXIT_USAGE)
    state = {"shown": 0, "error": None}

    def frame():
        d = snapshot(proto)
        d.addCallbacks(lambda snap: show(render(*snap)), transient)
        return d

    def transient(f):
        # A clone destroyed mid-scan fails one frame; show it and go on.
        f.trap(WireError)
        if f.check(ConnectionLost):
            return f
        show("xenclone top: %s" % f.value, error=True)

    def show(text, error=False):
        state["error"] = error
        out.write(text + "\n\n" if args.batch else CLEAR + text + "\n")
        out.flush()
        state["shown"] += 1
        if args.iterations and state["shown"] >= args.iterations:
            loop.stop()

    def done(_):
        return EXIT_FAILED if state["error"] else 0

    def lost(f):
        f.trap(ConnectionLost)
        print("xenclone top: %s" % f.value, file=sys.stderr)
        return EXIT_UNREACHABLE

    loop = task.LoopingCall(frame)
    loop.clock = reactor
    return loop.start(args.delay, now=True).addCallbacks(done, lost)
