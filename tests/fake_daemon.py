"""A control socket in the test's own reactor that answers as the daemon
would, from canned figures: for runs of the real ``xenclone`` command
that need a daemon but no clones."""

import os
import shutil
import tempfile

from twisted.internet import defer
from twisted.internet.protocol import Factory

from tests.test_observe import DOMAINS, HOST, INFO
from xenclone.wire import FrameProtocol, WireError


class FakeDaemon:
    """``op_<name>`` as the controller has them; ``calls`` records each."""

    def __init__(self, domains=DOMAINS):
        self.domains = domains
        self.calls = []

    def op_host(self, msg):
        self.calls.append(("host", msg.fields))
        return dict(HOST)

    def op_list(self, msg):
        self.calls.append(("list", msg.fields))
        return {"domains": self.domains}

    def op_info(self, msg):
        self.calls.append(("info", msg.fields))
        dom = next((d for d in self.domains if d["domid"] == msg["domain"]
                    or d["name"] == msg["domain"]), None)
        if dom is None or dom["domid"] not in INFO:
            raise WireError("no-domain", "unknown domain %r" % msg["domain"])
        return dict(dom, **INFO[dom["domid"]])

    def __getattr__(self, name):
        if not name.startswith("op_"):
            raise AttributeError(name)

        def record(msg):
            self.calls.append((name[3:], msg.fields))
            return defer.succeed({"domid": 2, "name": "web.1"})
        return record


def listen(testcase, reactor, handler):
    """Serve ``handler`` on a socket in a temp dir; returns the config file
    that names it (for ``xenclone -c``)."""
    tmp = tempfile.mkdtemp(prefix="xc-")      # short: AF_UNIX paths are at most 107 bytes
    testcase.addCleanup(shutil.rmtree, tmp, True)
    path = os.path.join(tmp, "control.sock")
    factory = Factory.forProtocol(lambda: FrameProtocol(handler=handler))
    factory.noisy = False
    port = reactor.listenUNIX(path, factory)
    testcase.addCleanup(port.stopListening)
    conf = os.path.join(tmp, "xenclone.conf")
    with open(conf, "w") as f:
        f.write('control_socket = "%s"\n' % path)
    return conf
