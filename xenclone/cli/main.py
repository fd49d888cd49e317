"""``xenclone``: an xl-style command for the daemon.

    xenclone [--config FILE] <command> [options] <Domain|Image>

Exit codes: 0 done, 1 the operation failed, 2 bad usage or config,
3 the daemon cannot be reached.
"""

import functools
import json
import os
import sys
import time

from twisted.internet import defer, task

from xenclone.cli import pipe, progress, top
from xenclone.cli.parser import build_parser
from xenclone.config import ConfigError, load_daemon_config
from xenclone.config_file import config_path
from xenclone.control_client import (EXIT_FAILED, EXIT_UNREACHABLE, EXIT_USAGE, CliError,
                                     ask, connect)
from xenclone.wire import WireError


# -- output

def _print(args, result, text):
    if getattr(args, "json", False):
        print(json.dumps(result, indent=2, sort_keys=True))
        return
    print(text(result))
    if result.get("warning"):     # as xl warns: the result stands
        print("xenclone: warning: %s: %s" % (args.command, result["warning"]), file=sys.stderr)


@defer.inlineCallbacks
def _run_command(reactor, args, settings):
    op, fields, fmt = args.func(args)
    if args.via_xenstore:
        ask = _ask_xenstore
    else:
        ask = functools.partial(_ask_control, shown=progress.wanted(op, fields, args))
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
def _ask_control(reactor, settings, op, fields, shown=False):
    """The reply's fields; ``shown``: the op's progress on stderr meanwhile."""
    proto = yield connect(reactor, settings["control_socket"])
    shown = shown and progress.display(reactor, fields.get("domain") or fields.get("image"))
    if shown:
        proto.on_event = lambda msg: msg.get("event") == "progress" and shown.event(msg.fields)
        fields = dict(fields, progress=True)
    try:
        return (yield ask(proto, op, **fields))
    finally:
        if shown:
            shown.close()
        proto.transport.loseConnection()


@defer.inlineCallbacks
def _ask_xenstore(reactor, settings, op, fields):
    from xenclone.xenstore.connect import xenstore_client
    from xenclone.xenstore.plane import xenstore_socket
    from xenclone.xenstore.requests import call

    path = xenstore_socket(settings)
    client = xenstore_client(reactor, path)
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
    parser, sub = build_parser()
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
        from xenclone.selftests.scenarios import run_scenario
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
