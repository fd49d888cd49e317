"""Property tests of what a guest or an operator may write: the request
parsers and the guest-request handler never raise anything but their
clear errors, and every answer fits in the guest's response node.

A quick run is part of the suite; the long one (100k cases each):

    XENCLONE_FUZZ_EXAMPLES=100000 trial tests.test_guest_fuzz
"""

import json
import os
import sys

from hypothesis import HealthCheck, given, seed, settings, strategies as st
from twisted.internet import task
from twisted.trial import unittest

from tests.fuzz_seed import fuzz_seed
from tests.xenstore_helpers import Dom, FakeController
from xenclone.wire import WireError
from xenclone.xenstore.guest import GuestPolicy, GuestRequests, parse_guest_request
from xenclone.xenstore.requests import parse_request
from xenclone.xenstore.wire import PAYLOAD_MAX

# A fresh seed each run, printed so that a failure can be replayed.
SEED = fuzz_seed()
print("guest fuzz: seed %d (replay: XENCLONE_FUZZ_SEED=%d)" % (SEED, SEED), file=sys.stderr)


def FUZZ(test):
    return seed(SEED)(settings(
        max_examples=int(os.environ.get("XENCLONE_FUZZ_EXAMPLES", "100")), deadline=None,
        database=None, suppress_health_check=list(HealthCheck))(test))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)
requests = st.fixed_dictionaries(
    {}, optional={"op": st.sampled_from(["clone", "destroy", ""]) | st.text(max_size=8),
                  "count": st.integers(-5, 300) | json_values,
                  "id": st.from_regex(r"[A-Za-z0-9_-]{1,32}", fullmatch=True) | json_values,
                  "domain": st.integers(0, 70000)})
raw_requests = (st.binary(max_size=PAYLOAD_MAX)
                | requests.map(lambda r: json.dumps(r).encode())
                | json_values.map(lambda v: json.dumps(v).encode()))


class ParserTests(unittest.TestCase):
    @FUZZ
    @given(raw_requests)
    def test_guest_request_parser(self, raw):
        try:
            count, token = parse_guest_request(raw)
        except WireError as e:
            self.assertIn(e.code, ("too-large", "bad-json", "bad-request", "unknown-op"))
        else:
            self.assertTrue(1 <= count <= 256 and isinstance(token, str))

    @FUZZ
    @given(raw_requests)
    def test_operator_request_parser(self, raw):
        try:
            fields = parse_request(raw)
        except WireError as e:
            self.assertIn(e.code, ("bad-json", "bad-request"))
        else:
            self.assertIsInstance(fields["op"], str)


class HandlerTests(unittest.TestCase):
    @FUZZ
    @given(st.lists(raw_requests, min_size=1, max_size=5), st.integers(0, 3))
    def test_every_answer_is_clear_and_fits(self, raws, max_clones):
        clock = task.Clock()
        controller = FakeController()
        controller.add(Dom(3, "gm", role="master", image=None))
        guests = GuestRequests(clock, None, controller, GuestPolicy(["gm"], max_clones, 1.0))
        for raw in raws:
            answer = self.successResultOf(guests._answer(3, raw))
            encoded = json.dumps(answer, sort_keys=True).encode()
            self.assertLessEqual(len(encoded), PAYLOAD_MAX)
            self.assertNotEqual(answer.get("code"), "internal", answer)
            if answer["ok"]:
                self.assertLessEqual(len(answer["clone_ids"]), max_clones)
            clock.advance(0.5)
