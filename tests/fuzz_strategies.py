"""Hypothesis strategies for hostile peers of the xenclone wire.

A case is ``(data, nfds)``: the bytes one connection sends and how many
file descriptors ride with them (Unix sockets only).  Its frames are
random bytes, lying lengths, headers that are not JSON objects, or
requests with hostile field values (``requests``).
"""

import json
import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from xenclone.names import NAME_RE
from xenclone.wire import MAX_FDS, MAX_HEADER, MAX_PAYLOAD

from fuzz_link import HEAD, frame
from fuzz_seed import fuzz_seed

QUICK_EXAMPLES = 100


def fuzz_passes(quick=QUICK_EXAMPLES):
    """[(label, settings, seed or None)] of a target's runs.  In the suite:
    the fixed regression cases (derandomized, the same every run), then a
    quick run from a fresh seed.  With ``XENCLONE_FUZZ_EXAMPLES`` (``make
    fuzz``): that many cases from a fresh seed."""
    n = int(os.environ.get("XENCLONE_FUZZ_EXAMPLES") or quick)
    seed = fuzz_seed()
    common = dict(max_examples=n, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
    fresh = ("seed %d (replay: XENCLONE_FUZZ_SEED=%d)" % (seed, seed), settings(**common), seed)
    if n != quick:
        return [fresh]
    return [("regression cases", settings(derandomize=True, **common), None), fresh]


def valid_name(value):
    return isinstance(value, str) and NAME_RE.fullmatch(value) is not None


ints = st.one_of(
    st.integers(),
    st.sampled_from([-1, -2**31, 2**31, 2**32, 2**63 - 1, 2**63, 2**64, -2**63, 10**100,
                     int("9" * 4000)]))
names = st.one_of(
    st.text(max_size=24),
    st.sampled_from(["", ".", "..", "../../etc/passwd", "a/../../b", "/etc/shadow", "img\n",
                     "img\x00", "\x00", "..\\x", "img/", " img", "\u00b2", "\u0661",
                     "%s%n", "{}", "a" * 65, "x\udcff"]),
    st.integers(1000, 300000).map(lambda n: "A" * n))
scalars = st.one_of(st.none(), st.booleans(), ints, st.floats(), names)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.text(max_size=8), inner, max_size=4), max_leaves=8)


def unlike(*real):
    """Hostile values that cannot name any of ``real`` (so an op on them
    must be refused, never act on the real thing)."""
    return values.filter(lambda v: not any(type(v) is type(r) and v == r for r in real))


def invalid_int(lo, hi):
    return values.filter(lambda v: not (type(v) is int and lo <= v <= hi))


def requests(variants):
    """A request header: one of ``variants`` ((op, required fields,
    optional fields), each a strategy), with hostile extras, a hostile id
    and maybe fds announced; or an unknown op."""
    known = [st.fixed_dictionaries(dict(required, op=st.just(op)), optional=optional)
             for op, required, optional in variants]
    extras = st.dictionaries(st.text(max_size=8), values, max_size=2)
    ids = st.one_of(st.integers(0, 2**31), values)
    nfds = st.sampled_from([None, 0, 1, 1, 2])
    return st.tuples(st.one_of(*known, st.fixed_dictionaries({"op": values})), extras,
                     ids, nfds).map(_request)


def _request(parts):
    fields, extras, rid, nfds = parts
    fields = dict(extras, **fields, id=rid)
    if nfds is not None:
        fields["nfds"] = nfds
    return fields


# Headers that are not a request object: not JSON, not an object, not UTF-8,
# nested past any recursion limit, or an object with a hostile nfds.
bad_headers = st.one_of(
    st.binary(max_size=64),
    values.filter(lambda v: not isinstance(v, dict)).map(lambda v: json.dumps(v).encode()),
    st.integers(1, 400000).map(lambda n: b"[" * n + b"]" * n),
    st.sampled_from([b"{", b"{}}", b"{\"op\":\"ping\"", b"\xff\xfe{}", b"\"\\ud800\"",
                     b"{\"a\":1,\"a\":2}", b"NaN", b"{\"op\":\"ping\",\"id\":1e999}"]),
    st.fixed_dictionaries({"op": st.just("ping"), "id": st.just(1),
                           "nfds": values}).map(lambda d: json.dumps(d).encode()),
    st.fixed_dictionaries({"ok": values, "id": values}).map(lambda d: json.dumps(d).encode()),
    st.fixed_dictionaries({"event": values}).map(lambda d: json.dumps(d).encode()))

LIMITS = [0, 1, MAX_HEADER, MAX_HEADER + 1, MAX_PAYLOAD, MAX_PAYLOAD + 1, 2**31, 2**32 - 1]


@st.composite
def lying_frame(draw, headers):
    """A frame whose lengths may not match what follows."""
    head = draw(headers)
    payload = draw(st.binary(max_size=32))
    hlen = draw(st.one_of(st.just(len(head)), st.sampled_from(LIMITS),
                          st.integers(0, len(head) + 8)))
    plen = draw(st.one_of(st.just(len(payload)), st.sampled_from(LIMITS)))
    return HEAD.pack(hlen, plen) + head + payload


def cases(request_headers):
    """(data, nfds): one hostile connection's bytes and fd count."""
    good = request_headers.map(frame)
    piece = st.one_of(good, good, st.binary(max_size=64),
                      lying_frame(bad_headers | request_headers.map(
                          lambda h: json.dumps(h).encode())),
                      bad_headers.map(frame))
    nfds = st.sampled_from([0, 0, 1, 1, 2, 3, MAX_FDS + 1])
    # Fds ride on a byte: no bytes, no fds.
    return st.tuples(st.lists(piece, min_size=1, max_size=4).map(b"".join), nfds).map(
        lambda t: (t[0], t[1] if t[0] else 0))

