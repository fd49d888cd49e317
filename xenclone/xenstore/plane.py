"""The daemon's XenStore control plane, a service of the daemon's tree.

It connects to XenStore (setting ``xenstore``): on a Xen dom0 the real
xenstored; elsewhere the embedded server, run as a helper process like the
memory server and the VMM host, so that it survives a daemon restart just as
xenstored survives a toolstack restart, and guests' connections to it (held
by the VMM host) do not depend on the daemon.  Once the controller is up it
publishes state (``publish``), runs requests (``requests``) and answers
guests (``guest``).
"""

import os

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from xenclone.helpers import HelperProcess
from xenclone.wire import FrameProtocol
from xenclone.xenstore.client import DEFAULT_SOCKET
from xenclone.xenstore.connect import xenstore_client
from xenclone.xenstore.guest import GuestPolicy, GuestRequests
from xenclone.xenstore.publish import DomainHomes, Publisher
from xenclone.xenstore.requests import RequestRunner

log = Logger(namespace="xenclone.xenstore.plane")


def xenstore_mode(settings):
    """embedded, xenstored or off."""
    mode = settings["xenstore"]
    if mode != "auto":
        return mode
    on_xen = settings["backend"] == "xen" or (
        settings["backend"] == "auto" and os.path.exists("/proc/xen/capabilities"))
    return "xenstored" if on_xen else "embedded"


def xenstore_socket(settings):
    if settings["xenstore_socket"]:
        return settings["xenstore_socket"]
    if xenstore_mode(settings) == "embedded":
        return os.path.join(settings["run_dir"], "xenstore.sock")
    return DEFAULT_SOCKET


def guest_socket_dir(settings):
    """Where the embedded server opens each introduced domain's socket."""
    if xenstore_mode(settings) != "embedded":
        return None
    return os.path.join(settings["run_dir"], "xenstore-domains")


class XenStorePlane(Service):
    def __init__(self, reactor, settings, controller_ready):
        self.reactor = reactor
        self.settings = settings
        self.controller_ready = controller_ready
        self.mode = xenstore_mode(settings)
        self.client = None
        self.helper = None
        self._restarting = None     # Deferred of a restart under way
        self.parts = []         # what stops with the plane: publisher, runners
        self.ready = defer.Deferred()

    def startService(self):
        super().startService()
        if self.mode == "off":
            self.ready.callback(None)
            return
        d = self._start()
        d.addCallbacks(self.ready.callback, self._failed)

    def _failed(self, failure):
        log.failure("the XenStore control plane did not start", failure)
        self.ready.errback(failure)

    @defer.inlineCallbacks
    def _start(self):
        s = self.settings
        path = xenstore_socket(s)
        self.client = xenstore_client(self.reactor, path)
        if self.mode == "embedded":
            run = s["run_dir"]
            os.makedirs(run, mode=0o700, exist_ok=True)
            self.helper = HelperProcess(self.reactor, "XenStore", "xenclone.xenstore",
                                        ["--domain-dir", guest_socket_dir(s)], path,
                                        os.path.join(run, "xenstore.log"), gated=False)
            yield self._ensure_helper()
            # Nobody else restarts it (xenstored has systemd): while we cannot
            # reach it, make sure it runs.
            self.client.on_down.append(self._restart_helper)
        yield self.client.connect()
        controller = yield self.controller_ready
        yield self._attach(controller)
        log.info("XenStore control plane on {path} ({mode})", path=path, mode=self.mode)
        return self

    def _ensure_helper(self):
        """Connect to the embedded server, starting it if it does not answer.
        (The probe only connects and closes: any protocol will do.)"""
        return self.helper.connect(FrameProtocol).addCallback(lambda probe: probe.close())

    def _restart_helper(self):
        if self._restarting is not None:
            return
        d = self._restarting = self._ensure_helper()
        d.addErrback(lambda f: log.failure("restarting the embedded XenStore", f))
        d.addBoth(lambda _: setattr(self, "_restarting", None))

    @defer.inlineCallbacks
    def _attach(self, controller):
        s = self.settings
        policy = GuestPolicy(s["guest_requests"], s["guest_max_clones"],
                             s["guest_request_interval_ms"] / 1000.0)
        guests = GuestRequests(self.reactor, self.client, controller, policy)
        homes = DomainHomes(self.client, self.mode == "embedded", policy.may_ask)
        homes.on_home.append(guests.on_home)
        homes.on_gone.append(guests.on_gone)
        publisher = Publisher(self.reactor, self.client, controller, homes,
                              s["xenstore_publish_ms"] / 1000.0)
        requests = RequestRunner(self.client, controller)
        self.parts = [publisher, requests, guests]
        yield requests.start()
        self.client.on_connect += [publisher.forget, requests.forget]
        publisher.changed()

    def stopService(self):
        super().stopService()
        if self.client is None:
            return None
        d = defer.DeferredList([part.stop() for part in self.parts])
        # The embedded server keeps running: guests' VMMs hold connections to it.
        d.addCallback(lambda _: self.client.close())
        return d.addCallback(lambda _: self._restarting)
