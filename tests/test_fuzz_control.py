"""Fuzz the control socket of a real daemon (``twistd -n xenclone``).

Ops that only read may succeed.  Ops that act get hostile references,
or the real domain or image with a hostile argument: they must all be
refused, so the daemon's domains stay as they were.  ``destroy_all``
takes no input and is left out.
"""

import os
import sys

from hypothesis import strategies as st
from twisted.trial import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fuzz_run  # noqa: E402
from fuzz_link import Link  # noqa: E402
from fuzz_strategies import (  # noqa: E402
    cases, invalid_int, ints, names, requests, unlike, valid_name, values)
from fuzz_targets import Daemon  # noqa: E402

from test_daemon import _need_kvm  # noqa: E402

D = Daemon
REFS = [D.MASTER, D.CLONE, D.DIMAGE, 1, 2, "1", "2"]
domain = st.one_of(st.sampled_from(REFS), values)
image = st.one_of(st.just(D.DIMAGE), values)
# "02" names domain 2 too
no_domain = unlike(*REFS).filter(
    lambda v: not (isinstance(v, str) and v.isascii() and v.isdigit() and int(v) in (1, 2)))
no_image = unlike(D.DIMAGE)
number = st.one_of(st.integers(-2, D.NPAGES + 2), ints, values)
KNOBS = {"target": int, "limit": int, "evict": list, "share.onfetch": bool}


def _bad_knobs(knobs):
    return not (isinstance(knobs, dict) and knobs and all(
        type(v) is KNOBS.get(k) for k, v in knobs.items()))


def _bad_config(config):
    """Refused: no new valid name (the master's own is taken) or no valid size."""
    if not isinstance(config, dict):
        return True
    name, memory = config.get("name"), config.get("memory")
    return not (valid_name(name) and name != D.MASTER and type(memory) is int
                and 4 <= memory <= 64 * 1024)


configs = st.one_of(values, st.fixed_dictionaries(
    {}, optional={"name": st.one_of(names, st.just(D.MASTER)), "memory": number,
                  "seed": values, "read_percent": values})).filter(_bad_config)
READ = [(op, {}, {}) for op in ("pids", "list", "images", "host")] + [
    ("info", {}, {"domain": domain}), ("audit", {}, {"domain": domain}),
    ("wait", {}, {"domain": domain, "timeout": values}),
    ("page", {}, {"image": image, "pfn": number, "count": number}),
    ("page_sums", {}, {"domain": domain,
                       "pfns": st.one_of(st.lists(number, max_size=32), values)}),
    ("image_check", {}, {"image": image}), ("isolation_check", {}, {"image": image})]
ACT = [(op, {}, {"domain": no_domain}) for op in ("destroy", "pause", "unpause")] + [
    ("create", {}, {"config": configs}),
    ("bless", {}, {"domain": no_domain, "name": values, "resume": values}),
    ("bless", {"domain": st.just(D.MASTER), "name": values.filter(
        lambda v: v and not valid_name(v))}, {}),
    ("launch", {}, {"image": no_image, "count": values, "paused": values, "share": values}),
    ("launch", {"image": st.just(D.DIMAGE), "count": invalid_int(1, 256)}, {}),
    ("discard", {}, {"image": no_image, "force": values}),
    ("discard", {"image": st.just(D.DIMAGE)}, {"force": st.sampled_from([False, 0, "", None])}),
    ("set", {}, {"domain": no_domain, "knobs": values}),
    ("set", {"domain": st.just(D.CLONE), "knobs": values.filter(_bad_knobs)}, {}),
    ("set_host", {"budget_pages": invalid_int(1, 2**40)}, {}),
    ("evict", {}, {"domain": no_domain, "to": values}),
    ("evict", {"domain": st.just(D.CLONE), "to": invalid_int(0, 2**40)}, {}),
    ("hoard", {}, {"domain": no_domain, "rate": values, "wait": values}),
    ("hoard", {"domain": st.just(D.CLONE), "rate": invalid_int(1, 10**7)}, {})]


class ControlSocketFuzz(unittest.TestCase):
    def setUp(self):
        _need_kvm()
        self.daemon = Daemon(self)

    def test_control_socket(self):
        fuzz_run.run("control", self.daemon, self.daemon.good,
                     lambda: Link.unix(self.daemon.sock), lambda: self.daemon.judge,
                     cases(requests(READ + ACT)))
