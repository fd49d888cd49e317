"""For fast XenStore tests: the embedded server in this process with a
client connected to it, and a controller as the XenStore plane sees it."""

import os
import shutil
import tempfile

import attr
from twisted.internet import defer, reactor

from xenclone.wire import WireError
from xenclone.xenstore.client import XenStoreClient
from xenclone.xenstore.server import XenStoreServer


@defer.inlineCallbacks
def embedded_xenstore(case, domain_dir=False):
    """Set ``case.server``, ``case.store`` and a connected ``case.client``
    (and ``case.domains``, the guests' socket directory, if asked)."""
    tmp = tempfile.mkdtemp(prefix="xs-")        # short: AF_UNIX paths are limited
    case.addCleanup(shutil.rmtree, tmp)
    case.domains = os.path.join(tmp, "domains") if domain_dir else None
    case.server = XenStoreServer(reactor, os.path.join(tmp, "socket"), domain_dir=case.domains)
    case.server.listen()
    case.addCleanup(lambda: case.server.stop())
    case.store = case.server.store
    case.client = XenStoreClient(reactor, case.server.path, min_delay=0.01, max_delay=0.1)
    yield case.client.connect()
    case.addCleanup(case.client.close)


@attr.s(eq=False)
class Dom:
    domid = attr.ib()
    name = attr.ib()
    role = attr.ib(default="clone")
    state = attr.ib(default="done")
    image = attr.ib(default="img")
    clone_id = attr.ib(default=None)
    result = attr.ib(default=None)
    launch_ms = attr.ib(default=None)

    def summary(self):
        return {"domid": self.domid, "name": self.name, "role": self.role,
                "image": self.image, "state": self.state}


class Ledger:
    def host_stats(self):
        return {"budget_pages": 1000, "allocated_pages": 10, "evictions": {"drop-clean": 0}}


class Pager:
    def stats(self, domid):
        return {"resident_pages": 10 + domid, "faults": 3}


class FakeController:
    """``op_<name>`` as the real one: dicts, Deferreds or ``WireError``."""

    def __init__(self):
        self.domains = {}
        self.images = [{"image_id": "img", "generation": "g1", "npages": 4096,
                        "meta": {"master": "m"}}]
        self.pager = Pager()
        self.ledger = Ledger()
        self.on_change = []
        self.calls = []

    def add(self, dom):
        self.domains[dom.domid] = dom
        for listener in self.on_change:
            listener()

    def op_images(self, msg):
        self.calls.append("images")
        return defer.succeed({"images": [dict(i) for i in self.images]})

    def op_info(self, msg):
        dom = self.domains.get(msg.get("domain"))
        if dom is None:
            raise WireError("no-domain", "unknown domain %r" % (msg.get("domain"),))
        return {"domid": dom.domid, "name": dom.name, "image": dom.image, "state": dom.state}

    def op_echo(self, msg):
        self.calls.append("echo")
        return dict(msg.fields, echoed=True)

    def op_bless(self, msg):
        self.calls.append("bless")
        self.images.append({"image_id": msg["name"], "generation": "g2"})
        return {"image_id": msg["name"], "generation": "g2"}

    def op_launch(self, msg):
        self.calls.append("launch")
        return {"clones": [{"domid": 100 + i, "clone_id": i + 1, "name": "x"}
                           for i in range(msg["count"])]}
