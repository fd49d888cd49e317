"""``xenclone``: an xl-style command for the daemon.

    xenclone [--config FILE] <command> [options] <Domain|Image>

Exit codes: 0 done, 1 the operation failed, 2 bad usage or config,
3 the daemon cannot be reached.
"""

import argparse
import json
import os
import sys
import time

from twisted.internet import defer, task
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol

from xenclone.cli import pipe, top
from xenclone.config import ConfigError, load_daemon_config, load_domain_config
from xenclone.config_file import config_path
from xenclone.wire import FrameProtocol, WireError

EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3


class CliError(Exception):
    def __init__(self, message, code=EXIT_FAILED):
        super().__init__(message)
        self.code = code


@defer.inlineCallbacks
def connect(reactor, socket_path):
    try:
        proto = yield connectProtocol(UNIXClientEndpoint(reactor, socket_path, timeout=5),
                                      FrameProtocol())
    except Exception as e:
        raise CliError("cannot reach the xenclone daemon at %s (%s); start it with "
                       "'twistd -n xenclone' or 'systemctl start xenclone'"
                       % (socket_path, e.__class__.__name__), EXIT_UNREACHABLE)
    return proto


def _fields(msg):
    return {k: v for k, v in msg.fields.items() if k not in ("id", "ok")}


# -- output

def _table(rows, columns):
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) if rows else len(c)
              for c in columns]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(columns, widths)) for r in rows]
    return "\n".join(lines)


def _print(args, result, text):
    if getattr(args, "json", False):
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(text(result))


def _kv(result):
    return "\n".join("%-16s %s" % (k, v) for k, v in sorted(result.items()))


# -- commands: each returns (op, fields, formatter)

def cmd_create(args):
    try:
        cfg = load_domain_config(args.config_file)
    except (ConfigError, OSError) as e:
        raise CliError(str(e), EXIT_USAGE)
    return "create", {"config": cfg}, lambda r: "created %s (domid %d)" % (r["name"], r["domid"])


def cmd_bless(args):
    return ("bless", {"domain": args.domain, "name": args.name, "resume": args.resume},
            lambda r: "image %s generation %s: %d pages, %d stored" % (
                r["image_id"], r["generation"], r["npages"], r["nonzero_pages"]))


def cmd_launch(args):
    fields = {"image": args.image, "count": args.n, "paused": args.paused}
    if args.no_share:
        fields["share"] = False
    if args.no_prefetch:
        fields["prefetch"] = False
    if args.fill:
        fields["fill"] = args.fill
    return ("launch", fields,
            lambda r: "\n".join("%d %s" % (c["domid"], c["name"]) for c in r["clones"]))


def cmd_list(args):
    return "list", {}, lambda r: _table(r["domains"], ["name", "domid", "role", "image", "state",
                                                       "memory_mib"])


def cmd_images(args):
    return "images", {}, lambda r: _table(r["images"], ["image_id", "generation", "npages",
                                                        "nonzero_pages", "clones"])


def cmd_info(args):
    return "info", {"domain": args.domain}, _kv


def cmd_host(args):
    return "host", {}, lambda r: json.dumps(r, indent=2, sort_keys=True)


def cmd_audit(args):
    return ("audit", {"domain": args.domain}, lambda r: "%d of %d pages disagree%s" % (
        r["disagree"], r["pages"], "".join(
            "\n  page %(pfn)d: ledger %(ledger)s, fault path %(state)d, kernel %(kernel)d" % p
            for p in r["first"])))


def cmd_check(args):
    target = {"image": args.domain} if args.image else {"domain": args.domain}
    return ("memory_check", target, lambda r: "%d pages of %d finished clones checked: %d lost%s%s"
            % (r["checked_pages"], r["clones"], r["lost_pages"],
               "".join("\n  %s page %d" % tuple(p) for p in r["first_lost"]),
               "\n  not finished, not checked: " + ", ".join(r["unchecked"])
               if r["unchecked"] else ""))


def cmd_wait(args):
    return "wait", {"domain": args.domain, "timeout": args.timeout}, _kv


def cmd_page(args):
    return ("page", {"image": args.image, "pfn": args.pfn, "count": args.n},
            lambda r: "%s page %d (+%d): sha256 %s%s" % (r["image"], r["pfn"], r["count"] - 1,
                                                        r["sha256"], " (zero)" if r["zero"] else ""))


def _knob(text):
    key, sep, value = text.partition("=")
    if not sep:
        raise CliError("set: %r is not key=value" % text, EXIT_USAGE)
    if key in ("target", "limit"):
        if not value.isdigit():
            raise CliError("set: %s wants a page count, got %r" % (key, value), EXIT_USAGE)
        return key, int(value)
    if key == "evict":
        return key, [v for v in value.split(",") if v]
    if key == "share.onfetch":
        if value not in _BOOLS:
            raise CliError("set: share.onfetch wants 1 or 0, got %r" % value, EXIT_USAGE)
        return key, _BOOLS[value]
    return key, value


_BOOLS = {"1": True, "on": True, "yes": True, "true": True,
          "0": False, "off": False, "no": False, "false": False}


def cmd_set(args):
    return ("set", {"domain": args.domain, "knobs": dict(_knob(k) for k in args.knobs)}, _kv)


def cmd_hoard(args):
    fields = {"domain": args.domain, "wait": args.wait}
    if args.rate is not None:
        fields["rate"] = args.rate
    return "hoard", fields, _kv


def cmd_evict(args):
    return ("evict", {"domain": args.domain, "to": args.to}, _kv)


def _domain_cmd(op):
    return lambda args: (op, {"domain": args.domain}, lambda r: "%s %s" % (op, r["name"]))


def cmd_discard(args):
    return ("discard", {"image": args.image, "force": args.force},
            lambda r: "discarded %s" % r["image"])


def cmd_memserver(args):
    return ("memserver", {"action": args.action, "force": args.force}, _kv)


def _parser():
    p = argparse.ArgumentParser(prog="xenclone", description="Clone running virtual machines.")
    p.add_argument("--config", "-c", metavar="FILE",
                   help="daemon config (xl.cfg syntax); default: $XENCLONE_CONFIG, else "
                        "/etc/xen/xenclone.conf if it exists, else built-in defaults")
    p.add_argument("--via-xenstore", action="store_true",
                   help="ask through XenStore requests instead of the control socket")
    sub = p.add_subparsers(dest="command", metavar="<command>")

    def add(name, func, help, json_out=False):
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(func=func)
        if json_out:
            sp.add_argument("--json", action="store_true", help="machine-readable output")
        return sp

    add("create", cmd_create, "start a master domain from a config file").add_argument(
        "config_file", metavar="CONFIG")
    sp = add("bless", cmd_bless, "turn a domain into an immutable image", True)
    sp.add_argument("domain", metavar="Domain")
    sp.add_argument("--name", help="image name (default: the domain's)")
    sp.add_argument("--resume", action="store_true", help="let the master run on")
    sp = add("launch", cmd_launch, "start clones of an image and print their ids", True)
    sp.add_argument("image", metavar="Image")
    sp.add_argument("-n", type=int, default=1, help="how many clones")
    sp.add_argument("--paused", action="store_true")
    sp.add_argument("--no-share", action="store_true",
                    help="share.onfetch=0: private copies of image pages, none shared")
    sp.add_argument("--no-prefetch", action="store_true",
                    help="do not map the image's recorded working set at launch")
    sp.add_argument("--fill", choices=("lazy", "before-run", "auto"),
                    help="how the clone gets its memory (default: the daemon's fill setting)")
    add("list", cmd_list, "list domains with role, image and state", True)
    add("images", cmd_images, "list images", True)
    add("info", cmd_info, "show a domain's state and page figures", True).add_argument(
        "domain", metavar="Domain")
    add("host", cmd_host, "show the backend's capabilities and the host ledger", True)
    add("audit", cmd_audit, "compare a clone's pages: ledger, fault path and kernel",
        True).add_argument("domain", metavar="Domain")
    sp = add("check", cmd_check, "check every data page of finished clones against the "
             "workload's expectation", True)
    sp.add_argument("domain", metavar="Domain|Image")
    sp.add_argument("--image", action="store_true", help="check every clone of the image")
    sp = add("wait", cmd_wait, "wait until a domain stops running", True)
    sp.add_argument("domain", metavar="Domain")
    sp.add_argument("--timeout", type=int, default=60)
    for op, text in (("pause", "stop a domain's vCPUs"), ("unpause", "let a domain run"),
                     ("destroy", "destroy a domain and free its memory")):
        add(op, _domain_cmd(op), text, True).add_argument("domain", metavar="Domain")
    sp = add("set", cmd_set, "set a clone's target, limit and eviction classes", True)
    sp.add_argument("domain", metavar="Domain")
    sp.add_argument("knobs", nargs="+", metavar="key=value",
                    help="target=PAGES limit=PAGES evict=drop-clean,drop-shared,page-out "
                         "share.onfetch=1|0")
    sp = add("hoard", cmd_hoard, "fill a clone's remaining pages in the background", True)
    sp.add_argument("domain", metavar="Domain")
    sp.add_argument("--rate", type=int, help="pages a second (default: the config's hoard_rate)")
    sp.add_argument("--wait", action="store_true", help="return when the hoard is done")
    sp = add("evict", cmd_evict, "evict a clone's pages down to a resident count", True)
    sp.add_argument("domain", metavar="Domain")
    sp.add_argument("--to", type=int, required=True, metavar="PAGES")
    sp = add("page", cmd_page, "digest of image pages, read from the memory server", True)
    sp.add_argument("image", metavar="Image")
    sp.add_argument("pfn", type=int)
    sp.add_argument("-n", type=int, default=1, help="how many pages (1-256)")
    sp = add("memserver", cmd_memserver, "the memory-server domain (Xen): status, start, "
             "or stop (refused while it holds images or feeds clones)", True)
    sp.add_argument("action", choices=("status", "start", "stop"))
    sp.add_argument("--force", action="store_true",
                    help="stop anyway: its images are lost, clones faulting from it paused")
    sp = add("discard", cmd_discard, "delete an image (refused while clones live)", True)
    sp.add_argument("image", metavar="Image")
    sp.add_argument("--force", action="store_true", help="destroy its clones first")
    top.add_parser(sub).set_defaults(func=None)
    sp = sub.add_parser("demo", help="bless a master, launch clones, check every answer")
    sp.add_argument("--clones", type=int, default=16)
    sp.add_argument("--memory-mib", type=int, default=256)
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--plot", metavar="FILE.png", help="draw host memory over time")
    sp.set_defaults(func=None, scenario="demo")
    sp = sub.add_parser("selftest", help="run acceptance scenarios on this host")
    sp.add_argument("names", nargs="*", metavar="NAME")
    sp.add_argument("--list", action="store_true", help="list the scenarios")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=None, scenario="selftest")
    sp = sub.add_parser("xenstore-env", help="print XENSTORED_PATH=... for the daemon's XenStore")
    sp.set_defaults(func=None, scenario="xenstore-env")
    sp = sub.add_parser("help", help="show help for a command")
    sp.add_argument("topic", nargs="?")
    sp.set_defaults(func=None, scenario="help")
    return p, sub


@defer.inlineCallbacks
def _run_command(reactor, args, settings):
    op, fields, fmt = args.func(args)
    ask = _ask_xenstore if args.via_xenstore else _ask_control
    try:
        result = yield ask(reactor, settings, op, fields)
    except WireError as e:
        raise CliError("%s: %s" % (args.command, e))
    _print(args, result, fmt)
    return EXIT_FAILED if _FOUND_FAULT.get(op, lambda r: False)(result) else 0


# Checks whose answer is a failure for scripts (exit 1) though the command ran.
_FOUND_FAULT = {"audit": lambda r: r["disagree"] > 0,
                "memory_check": lambda r: r["lost_pages"] > 0}


@defer.inlineCallbacks
def _ask_control(reactor, settings, op, fields):
    proto = yield connect(reactor, settings["control_socket"])
    try:
        return _fields((yield proto.request(op, **fields)))
    finally:
        proto.transport.loseConnection()


@defer.inlineCallbacks
def _ask_xenstore(reactor, settings, op, fields):
    from xenclone.xenstore.client import XenStoreClient
    from xenclone.xenstore.plane import xenstore_socket
    from xenclone.xenstore.requests import call

    path = xenstore_socket(settings)
    client = XenStoreClient(reactor, path)
    try:
        yield client.connect().addTimeout(5, reactor)
    except defer.TimeoutError:
        yield client.close()
        raise CliError("cannot reach XenStore at %s; is the xenclone daemon running?" % path,
                       EXIT_UNREACHABLE)
    try:
        return (yield call(client, op, fields, "cli-%d-%d" % (os.getpid(), time.time_ns())))
    except WireError as e:
        if e.code == "no-daemon":
            raise CliError(str(e), EXIT_UNREACHABLE)
        raise
    finally:
        yield client.close()


@defer.inlineCallbacks
def _run_top(reactor, args, settings):
    proto = yield connect(reactor, settings["control_socket"])
    try:
        return (yield top.run_top(reactor, proto, args))
    finally:
        proto.transport.loseConnection()


def main(argv=None):
    parser, sub = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    if args.command == "help":
        return _help(parser, sub, args.topic)
    try:
        settings = load_daemon_config(config_path(args.config))
    except (ConfigError, OSError) as e:
        print("xenclone: %s" % e, file=sys.stderr)
        return EXIT_USAGE
    if args.command == "xenstore-env":
        from xenclone.xenstore.plane import xenstore_mode, xenstore_socket
        if xenstore_mode(settings) == "off":
            print("xenclone: XenStore is off in this config (xenstore = \"off\")", file=sys.stderr)
            return EXIT_USAGE
        print("XENSTORED_PATH=%s" % xenstore_socket(settings))
        return 0
    if args.via_xenstore and args.func is None:
        print("xenclone: --via-xenstore applies to single commands, not %s" % args.command,
              file=sys.stderr)
        return EXIT_USAGE
    if args.command == "top":
        body = lambda reactor: _run_top(reactor, args, settings)
    elif args.func is None:
        from xenclone.cli.scenarios import run_scenario
        body = lambda reactor: run_scenario(reactor, args, settings)
    else:
        body = lambda reactor: _run_command(reactor, args, settings)
    return _react(body)


def _help(parser, sub, topic):
    if topic is None:
        parser.print_help()
        return 0
    if topic not in sub.choices:
        print("xenclone: help: no command %r; commands: %s"
              % (topic, ", ".join(sorted(sub.choices))), file=sys.stderr)
        return EXIT_USAGE
    sub.choices[topic].print_help()
    return 0


def _react(body):
    code = []

    def run(reactor):
        d = defer.maybeDeferred(body, reactor)

        def done(result):
            code.append(result if isinstance(result, int) else 0)

        def failed(f):
            if f.check(BrokenPipeError):     # `xenclone top | head`: the reader is done
                code.append(pipe.closed())
            elif f.check(CliError):
                print("xenclone: %s" % f.value, file=sys.stderr)
                code.append(f.value.code)
            else:
                print("xenclone: internal error: %s" % f.getErrorMessage(), file=sys.stderr)
                code.append(EXIT_FAILED)

        return d.addCallbacks(done, failed)

    try:
        task.react(run)
    except SystemExit:
        pass
    return code[0] if code else EXIT_FAILED


def entry():
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        code = pipe.closed()
    sys.exit(code)
