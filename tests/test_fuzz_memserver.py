"""Fuzz the real memory server: its Unix socket and its TLS port.

A quick run is part of the suite; ``make fuzz`` runs many more cases
(``XENCLONE_FUZZ_EXAMPLES`` per target).
"""

import functools
import os
import sys
import time

from hypothesis import strategies as st
from twisted.trial import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fuzz_run  # noqa: E402
import memserver_helpers as H  # noqa: E402
from fuzz_link import CASE_SECONDS, Link, expect, frame  # noqa: E402
from fuzz_strategies import cases, ints, names, requests, unlike, values  # noqa: E402
from fuzz_targets import IMAGE, NPAGES, TOKEN, LocalJudge, MemoryServer, RemoteJudge  # noqa: E402

image = st.one_of(st.just(IMAGE), values)
page = st.one_of(st.integers(-2, NPAGES + 2), ints, values)
READ = [("info", {}, {"image": image}), ("describe", {}, {"image": image}),
        ("fetch", {}, {"image": image, "pfn": page, "count": page, "generation": values}),
        ("crcs", {}, {"image": image, "first": page, "count": page})]
LOCAL = READ + [
    ("ping", {}, {}), ("images", {}, {}), ("open", {}, {"image": image}),
    ("mirror", {}, {"name": st.one_of(names, st.just(IMAGE), values), "info": values,
                    "vcpu_state": values, "server": values}),
    ("put", {}, {"name": st.one_of(names, st.just(IMAGE), values), "arch": values,
                 "npages": page, "vcpu_state": st.one_of(st.just(""), values), "meta": values}),
    ("discard", {}, {"image": unlike(IMAGE)})]
REMOTE = LOCAL + [("hello", {}, {"token": st.one_of(st.just(TOKEN), st.just(TOKEN[:-1]),
                                                    values)})]
# A TLS link may say hello first, with the right token or not.
hellos = st.sampled_from([b"", frame({"id": "hi", "op": "hello", "token": TOKEN}),
                          frame({"id": "hi", "op": "hello", "token": TOKEN + "x"})])
remote_cases = st.tuples(hellos, cases(requests(REMOTE))).map(
    lambda t: (t[0] + t[1][0], 0))


# Frames that close their link: oversized, not JSON, not an object, too deep.
BAD_FRAMES = [b"\xff\xff\xff\xff\x00\x00\x00\x00", frame(b"{{{"), frame(b"[]"),
              frame(b"[" * 5000 + b"]" * 5000)]


class MemoryServerFuzz(unittest.TestCase):
    def setUp(self):
        self.server = MemoryServer(self)

    def test_put_in_flight_survives_bad_frames(self):
        """A put copies its image in a thread for a while; bad frames on
        other links meanwhile leave it whole."""
        npages = 8192
        cap, zero = H.make_capture(npages)
        self.addCleanup(os.close, cap.mem_fd)
        good = Link.unix(self.server.sock)
        self.addCleanup(good.close)
        good.send(frame({"id": 1, "op": "put", "nfds": 1, "name": "big", "arch": "a",
                         "npages": npages, "vcpu_state": ""}), [cap.mem_fd])
        for junk in BAD_FRAMES:
            fuzz_run.hostile(Link.unix(self.server.sock), (junk, 0),
                             LocalJudge(self.server))
        fields, _, _ = good.read(time.monotonic() + CASE_SECONDS)
        self.assertEqual((fields["ok"], fields["npages"]), (True, npages), fields)
        for pfn in (1, npages // 2 + 1, npages - 1):
            _, page, _ = good.call("fetch", image="big", pfn=pfn, count=1)
            self.assertEqual(page, H.expected_page(pfn, zero))

    def test_unix_socket(self):
        good = Link.unix(self.server.sock)
        self.addCleanup(good.close)
        fuzz_run.run("memserver-unix", self.server, good,
                     lambda: Link.unix(self.server.sock),
                     lambda: LocalJudge(self.server), cases(requests(LOCAL)))

    def test_tls_port(self):
        good = Link.tls(self.server.port, self.server.ca)
        self.addCleanup(good.close)
        good.call("hello", token=TOKEN)
        fuzz_run.run("memserver-tls", self.server, good,
                     lambda: Link.tls(self.server.port, self.server.ca),
                     lambda: RemoteJudge(self.server), remote_cases,
                     functools.partial(expect, stranger_token=TOKEN))
