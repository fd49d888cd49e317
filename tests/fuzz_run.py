"""One fuzz run against one target: every case on its own connection,
judged by ``fuzz_link``; a well-behaved client with a request in flight
across each case; the servers alive and their fd counts as before after each.

Each target runs the passes of ``fuzz_strategies.fuzz_passes``: the fixed
regression cases and a fresh seed, printed (``XENCLONE_FUZZ_SEED`` replays
it).  With ``XENCLONE_FUZZ_REPORT`` set, each pass appends one JSON line
(target, pass, cases, seconds, failure with hypothesis' shrunk example) for
``fuzz_summary``.
"""

import json
import os
import sys
import time

from hypothesis import given, seed
from hypothesis import strategies as st
from hypothesis.reporting import default as default_reporter
from hypothesis.reporting import with_reporter

from fuzz_link import CASE_SECONDS, Broken, expect, fd_leak, fds, frame, settle
from fuzz_strategies import fuzz_passes


def _memfds(n):
    """Fds to pass: empty memfds, too small to be anyone's guest memory."""
    return [os.memfd_create("fuzz", os.MFD_CLOEXEC) for _ in range(n)]


def hostile(link, case, judge, oracle=expect):
    data, nfds = case
    try:
        fds = _memfds(nfds)
        try:
            link.send(data, fds)
        finally:
            for fd in fds:
                os.close(fd)
        settle(link, data, *oracle(data, nfds), judge)
    finally:
        link.close()


def one_case(target, good, connect, judge, case, pfn, count, cut, oracle=expect):
    fds_before = {proc: fds(pid) for proc, pid in target.pids.items()}
    request = target.good_request(pfn, count)
    good_bytes = frame(request)
    cut %= len(good_bytes) + 1
    good.send(good_bytes[:cut])        # in flight across the hostile case
    try:
        hostile(connect(), case, judge, oracle)
    finally:    # the good link stays in step whatever the hostile case did
        good.send(good_bytes[cut:])
        got = good.read(time.monotonic() + CASE_SECONDS)
    if got is None:
        raise Broken("the well-behaved client was cut off")
    target.check_good(request, got[0], got[1])
    if not target.alive():
        raise Broken("a server process died")
    for proc, pid in target.pids.items():
        leak = fd_leak(pid, fds_before[proc])
        if leak:
            raise Broken("%s fds changed: %r" % (proc, leak))


def run(name, target, good, connect, make_judge, cases, oracle=expect):
    """Fuzz ``target`` with ``cases``, each pass of ``fuzz_passes`` (its
    seed printed); raise on the first broken oracle (``fuzz_link.expect``,
    or what it says of a TLS link of strangers)."""
    for label, fuzz_settings, seed in fuzz_passes():
        print("fuzz %s: %s" % (name, label), file=sys.stderr)
        _run(name, label, fuzz_settings, seed, target, good, connect, make_judge, cases,
             oracle)


def _run(name, label, fuzz_settings, seed_value, target, good, connect, make_judge, cases,
         oracle):
    count = [0]
    report = []
    first = []

    @fuzz_settings
    @given(cases, st.integers(0, 1 << 20), st.integers(1, 16), st.integers(0, 1 << 20))
    def fuzz(case, pfn, n, cut):
        count[0] += 1
        try:
            one_case(target, good, connect, make_judge(), case, pfn, n, cut, oracle)
        except Broken as e:
            # A case that changed the server's state fails every case after
            # it, so the shrunk example may be innocent: keep the culprit.
            if not first:
                first.append("first failing case: %r\n%s" % (case, e))
            raise

    def reporter(text):
        report.append(str(text))
        default_reporter(text)

    if seed_value is not None:
        fuzz = seed(seed_value)(fuzz)
    t0 = time.monotonic()
    failure = None
    try:
        with with_reporter(reporter):
            fuzz()
    except Exception as e:
        failure = "\n".join(["%s: %s" % (name, label)] + report + _describe(e) + first)
        e.add_note("fuzz %s: %s" % (name, label))
        raise
    finally:
        _record(name, label, count[0], time.monotonic() - t0, failure)


def _describe(error):
    """Each failure hypothesis found, with its shrunk example (a note)."""
    errors = error.exceptions if isinstance(error, BaseExceptionGroup) else [error]
    return ["%s%s: %s" % ("".join(n + "\n" for n in getattr(e, "__notes__", [])),
                          type(e).__name__, e) for e in errors]


def _record(name, label, cases, seconds, failure):
    path = os.environ.get("XENCLONE_FUZZ_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"target": name, "pass": label, "cases": cases,
                                "seconds": round(seconds, 1), "failure": failure}) + "\n")

