"""``xenclone selftest xenstore``: the XenStore control plane of this host
(the embedded server or the real xenstored), driven by Debian's real
xenstore-* tools, as an operator or a script would."""

import json
import os
import shutil

from twisted.internet import defer, protocol, task, utils

from xenclone.wire import WireError
from xenclone.xenstore.plane import xenstore_socket
from xenclone.xenstore.publish import ROOT
from xenclone.xenstore.requests import REQUESTS

TOOLS = ("xenstore-write", "xenstore-read", "xenstore-watch", "xenstore-rm")


class _Watch(protocol.ProcessProtocol):
    """``xenstore-watch``: ``registered`` fires on its first line, ``ended``
    with its output and exit code."""

    def __init__(self):
        self.out = b""
        self.registered, self.ended = defer.Deferred(), defer.Deferred()

    def outReceived(self, data):
        self.out += data
        if b"\n" in self.out and not self.registered.called:
            self.registered.callback(None)

    def processEnded(self, reason):
        if not self.registered.called:
            self.registered.callback(None)
        self.ended.callback((self.out.decode(errors="replace").split(), reason.value.exitCode))


class Tools:
    def __init__(self, reactor, settings):
        self.reactor = reactor
        self.env = dict(os.environ, XENSTORED_PATH=xenstore_socket(settings))
        missing = [t for t in TOOLS if not shutil.which(t)]
        if missing:
            raise WireError("no-tools", "%s not found: apt-get install xenstore-utils"
                            % ", ".join(missing))

    @defer.inlineCallbacks
    def run(self, name, *args):
        out, err, code = yield utils.getProcessOutputAndValue(
            shutil.which(name), args, env=self.env, reactor=self.reactor)
        if code != 0:
            raise WireError("tool-failed", "%s %s: %s" % (name, " ".join(args),
                                                          err.decode(errors="replace").strip()))
        return out.decode().strip()

    @defer.inlineCallbacks
    def read_until(self, path, done, timeout=60.0):
        """Poll ``xenstore-read path`` until ``done(value)``; the last value."""
        value = None
        for _ in range(int(timeout / 0.1)):
            try:
                value = yield self.run("xenstore-read", path)
            except WireError:
                value = None
            if value is not None and done(value):
                break
            yield task.deferLater(self.reactor, 0.1, lambda: None)
        return value

    def watch(self, path, events):
        """``xenstore-watch -n events path`` (the first event is its registration)."""
        w = _Watch()
        argv = ["timeout", "60", shutil.which("xenstore-watch"), "-n", str(events), path]
        self.reactor.spawnProcess(w, shutil.which("timeout"), argv, env=self.env)
        return w


@defer.inlineCallbacks
def scenario_xenstore(s):
    """XenStore: xenstore-write of a launch request makes clones; xenstore-read and -watch see them."""
    tools = Tools(s.reactor, s.settings)
    master, image = "selftest-xs-master", "selftest-xs"
    yield s.call("create", config={"name": master, "memory": 16})
    yield s.call("bless", domain=master, name=image)
    request = "%s/selftest-%d" % (REQUESTS, os.getpid())
    checks, figures = {}, {}
    try:
        yield tools.run("xenstore-write", request,
                        json.dumps({"op": "launch", "image": image, "count": 2}))
        status = yield tools.read_until(request + "/status", lambda v: v in ("ok", "error"))
        result = json.loads((yield tools.run("xenstore-read", request + "/result")))
        domids = [c["domid"] for c in result["clones"]]
        figures["clones"] = domids
        checks["launched_by_xenstore_write"] = status == "ok" and len(domids) == 2
        first = "%s/clones/%d" % (ROOT, domids[0])
        published = yield tools.read_until(first + "/image", lambda v: v == image)
        checks["state_published"] = published == image
        watch = tools.watch(first, 2)
        yield watch.registered
        yield s.call("destroy", domain=domids[0])
        lines, code = yield watch.ended
        figures["watch_events"] = lines
        # Its registration, then the first change under the clone's node:
        # the removal, or a figure the publisher refreshed just before.
        checks["watch_saw_change"] = (code == 0 and len(lines) == 2 and lines[0] == first
                                      and lines[1].startswith(first))
    finally:
        yield tools.run("xenstore-rm", request)
        yield s.call("discard", image=image, force=True)
        yield s.call("destroy", domain=master)
    return checks, figures
