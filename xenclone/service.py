"""The daemon's service tree, built by factory functions.

    xenclone (MultiService)
      helpers   memory server and VMM host: connected, started if absent
      pager     the fault source thread and the pipeline
      control   the control socket (mode 0600, or 0660 for a group)
      xenstore  the XenStore control plane (xenclone/xenstore/plane.py)

Once the control socket answers, systemd is told (READY=1, Type=notify).
When the tree stops, the helpers stop too if no domain needs them
(``control/lifecycle.py``).

The reactor is passed in, never imported here.
"""

import grp
import os
import secrets

from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from xenclone import hostmem
from xenclone.control.balloons import BalloonService
from xenclone.control.controller import Controller
from xenclone.control.hostmemory import HostMemoryService
from xenclone.control.lifecycle import DaemonOps, Lifecycle
from xenclone.control.operator_state import OperatorState
from xenclone.control.oplog import LoggedHandler, peer
from xenclone.control.progress import WithProgress
from xenclone.control.recovery import recover
from xenclone.helpers import HelperProcess
from xenclone.interfaces import IBalloonBackend, IHypervisorMemory
from xenclone.ledger import Ledger
from xenclone.config import ConfigError
from xenclone.memserver.client import MemoryServerClient, RemotePageSource
from xenclone.memserver.mirror import MirroringMemoryServer
from xenclone.pager import Pager
from xenclone.policy.balloon import Balloons
from xenclone.policy.budget import Bursts, Watermarks
from xenclone.policy.sharing import POLICIES
from xenclone.sd_notify import notify
from xenclone.wire import FrameProtocol, WireError
from xenclone.working_set import WorkingSets
from xenclone.xenstore.plane import (XenStorePlane, guest_socket_dir, xenstore_mode,
                                     xenstore_socket)

log = Logger()


def use_xen(choice):
    """The ``backend`` setting: auto means Xen when this is a Xen dom0."""
    if choice == "auto":
        from xenclone.backends.xen.libxc import host_has_xen
        return host_has_xen()
    return choice == "xen"


def host_budget_pages(settings, read_available=hostmem.available_pages):
    """The configured budget, or 80% of what is available (the kernel's
    figure, or on Xen the hypervisor's free memory)."""
    mib = settings["host_memory_mib"]
    return mib * 256 if mib else read_available() * 8 // 10


def host_memory_service(reactor, settings, pager, read_available=hostmem.available_pages):
    """The budget under real pressure, and the clones' burst policy."""
    s = settings
    watermarks = Watermarks(ceiling=pager.ledger.budget_pages, low=s["low_watermark_mib"] * 256,
                            high=s["high_watermark_mib"] * 256, floor=4 * s["credit_batch"],
                            psi_limit=float(s["psi_some_max"]))
    bursts = None
    if s["memory_limit_mib"]:
        bursts = Bursts(limit=s["memory_limit_mib"] * 256, burst=s["burst_size_mib"] * 256,
                        burst_ns=s["burst_time_ms"] * 1000000)
    return HostMemoryService(reactor, pager, watermarks, bursts, read_available=read_available)


def balloon_service(reactor, settings, backend):
    """Balloon targets for the clones the hypervisor cannot page, with the
    host's watermarks on its free memory."""
    s = settings
    policy = Balloons(low=s["low_watermark_mib"] * 256, high=s["high_watermark_mib"] * 256,
                      floor_percent=s["balloon_floor_percent"])
    return BalloonService(reactor, backend, policy, backend.free_pages)


def remote_args(settings):
    """The memory server's TLS listener, if configured; its token and
    certificate are made on first start and kept under state_dir."""
    if not settings["memserver_tcp"]:
        return []
    token = settings["memserver_token_file"]
    if not os.path.exists(token):
        os.makedirs(os.path.dirname(token), mode=0o700, exist_ok=True)
        fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
    tls_dir = os.path.join(settings["state_dir"], "tls")
    os.makedirs(tls_dir, mode=0o700, exist_ok=True)
    return ["--tcp", settings["memserver_tcp"], "--token-file", token,
            "--cert", os.path.join(tls_dir, "memserver.pem"),
            "--key", os.path.join(tls_dir, "memserver.key"),
            "--max-links", str(settings["memserver_max_links"]),
            "--max-unauth-links", str(settings["memserver_max_unauth_links"]),
            "--hello-timeout", str(settings["memserver_hello_timeout_s"]),
            "--stall-timeout", str(settings["memserver_stall_timeout_s"])]


def xen_args(settings):
    """On Xen the memory server reads masters itself, and may keep images
    in a memory-server domain (any PVH kernel will do: it never runs)."""
    if not use_xen(settings["backend"]):
        if settings["memserver_domain_mib"]:
            raise ConfigError("memserver_domain_mib", None, "a memory-server domain needs "
                              "the xen backend")
        return []
    from xenclone.backends.xen.backend import GUEST_KERNEL
    return ["--xen", "--server-domain-mib", str(settings["memserver_domain_mib"]),
            "--server-kernel", os.path.abspath(settings["xen_guest_kernel"] or GUEST_KERNEL)]


class _ControlFactory(Factory):
    noisy = False

    def __init__(self, controller, reactor):
        self.controller = controller
        self.reactor = reactor

    def buildProtocol(self, addr):
        # Operations are logged with the peer's uid and pid; long ones
        # report progress on this link to the command that asks.
        proto = FrameProtocol()
        logged = LoggedHandler(self.controller, lambda: peer(proto.transport))
        proto.handler = WithProgress(logged, self.controller, proto, self.reactor)
        return proto


def open_to_group(path, gid):
    """The control socket for ``gid`` (0660), and its directory (run_dir,
    which the daemon makes 0700) traversable by the group, no more: the
    helpers' sockets and secrets in it stay the owner's."""
    os.chown(path, -1, gid)
    directory = os.path.dirname(path)
    st = os.stat(directory)
    if st.st_uid == os.getuid() and (st.st_gid != gid or not st.st_mode & 0o010):
        os.chown(directory, -1, gid)
        os.chmod(directory, (st.st_mode & 0o7777) | 0o010)


class ControlService(Service):
    """Listens on the control socket once the core is up."""

    def __init__(self, reactor, path, group):
        self.reactor = reactor
        self.path = path
        self.group = group
        self.port = None

    def listen(self, handler):
        if os.path.exists(self.path):
            os.unlink(self.path)
        mode = 0o660 if self.group else 0o600
        self.port = self.reactor.listenUNIX(self.path, _ControlFactory(handler, self.reactor),
                                            mode=mode)
        if self.group:
            open_to_group(self.path, grp.getgrnam(self.group).gr_gid)
        log.info("control socket {path} ready", path=self.path)
        notify("READY=1\nSTATUS=control socket %s ready" % self.path)     # Type=notify

    def stopService(self):
        super().stopService()
        if self.port is not None:
            return self.port.stopListening()


class CoreService(Service):
    """Connects the helpers, then builds backend, ledger, pager, controller."""

    def __init__(self, reactor, settings, control, lifecycle):
        self.reactor = reactor
        self.settings = settings
        self.control = control
        self.lifecycle = lifecycle
        self.controller = None
        self.backend = None
        self.source = None
        self.links = []
        self.ready = defer.Deferred()

    def startService(self):
        super().startService()
        d = self._boot()
        d.addCallbacks(self.ready.callback, self._failed)

    def _failed(self, failure):
        if failure.check(ConfigError, WireError):     # the operator's to fix: no traceback
            log.critical("xenclone could not start: {why}", why=str(failure.value))
        else:
            log.failure("xenclone could not start", failure)
        self.ready.errback(failure)
        if self.reactor.running:
            self.reactor.stop()

    @defer.inlineCallbacks
    def _boot(self):
        s = self.settings
        run = s["run_dir"]
        os.makedirs(run, mode=0o700, exist_ok=True)
        os.makedirs(s["memserver_dir"], mode=0o700, exist_ok=True)
        ms_socket = os.path.join(run, "memserver.sock")
        memserver = HelperProcess(self.reactor, "memory server", "xenclone.memserver_process",
                                  ["--dir", s["memserver_dir"]] + remote_args(s) + xen_args(s),
                                  ms_socket, os.path.join(run, "memserver.log"))
        # Up (started if need be); requests go through the client below.
        probe = yield memserver.connect(FrameProtocol)
        yield probe.close()
        # A memory server that died is started again on the next request.
        client = MemoryServerClient(
            self.reactor, UNIXClientEndpoint(self.reactor, ms_socket),
            request_timeout=s["memserver_request_timeout_s"],
            connect=lambda proto: memserver.connect(lambda: proto, timeout=5.0))
        self.links.append(client)
        memory = MirroringMemoryServer(client, self._remote())
        backend = self.backend = yield self._backend(run)
        # On Xen, clones' frames come from the hypervisor's free memory.
        available = (backend.free_pages if IHypervisorMemory.providedBy(backend)
                     else hostmem.available_pages)
        ledger = Ledger(host_budget_pages(s, available), POLICIES[s["eviction_policy"]](),
                        s["credit_batch"])
        self.source = self._fault_source(backend)
        store_dir = os.path.join(s["state_dir"], "pageout")
        os.makedirs(store_dir, mode=0o700, exist_ok=True)
        pager = Pager(self.reactor, ledger, self.source, backend, memory, store_dir,
                      sync=bool(s["pageout_sync"]), fault_around=s["fault_around"])
        host_memory = host_memory_service(self.reactor, s, pager, available)
        host_memory.setServiceParent(self.parent)
        balloons = None
        if IBalloonBackend.providedBy(backend):
            balloons = balloon_service(self.reactor, s, backend)
            balloons.setServiceParent(self.parent)
        self.controller = Controller(self.reactor, backend, memory, pager, host_memory,
                                     hoard_rate=s["hoard_rate"],
                                     share_onfetch=bool(s["share_onfetch"]),
                                     memserver_timeout=s["memserver_timeout_s"],
                                     working_sets=WorkingSets(
                                         pager, os.path.join(s["state_dir"], "working-sets")),
                                     balloons=balloons, kept=OperatorState(s["state_dir"]))
        # What a previous daemon left running is served again before any
        # new request comes in, with what the operator had set for it.
        yield recover(self.controller)
        self.controller.restore_settings()
        self.lifecycle.controller = self.controller
        self.control.listen(DaemonOps(self.controller, self.lifecycle))
        if s["metrics_listen"]:
            from xenclone.metrics import make_metrics_service
            make_metrics_service(self.reactor, self.controller,
                                 s["metrics_listen"]).setServiceParent(self.parent)
        log.info("xenclone ready: backend {backend} ({fill}), budget {pages} pages",
                 backend=backend.name, fill=backend.fill_mode, pages=ledger.budget_pages)
        return self.controller

    def _remote(self):
        """The memory server of another host, if configured (TLS + token)."""
        s = self.settings
        if not s["memserver_remote"]:
            return None
        host, _, port = s["memserver_remote"].rpartition(":")
        try:
            with open(s["memserver_remote_ca"], "rb") as f:
                ca = f.read()
            with open(s["memserver_remote_token_file"], "rb") as f:
                token = f.read().strip().decode()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError("memserver_remote", None, "cannot read the CA or token: %s" % e)
        remote = RemotePageSource(self.reactor, host.strip("[]"), int(port), token, ca,
                                  request_timeout=s["memserver_request_timeout_s"])
        self.links.append(remote)
        return remote

    def _on_event(self, msg):
        if self.controller is not None:
            self.controller.on_backend_event(msg)

    @defer.inlineCallbacks
    def _backend(self, run):
        if use_xen(self.settings["backend"]):
            from xenclone.backends.xen.backend import XenBackend
            # Guests' control nodes are in xenstored, whatever the daemon publishes in.
            xenstored = (xenstore_socket(self.settings)
                         if xenstore_mode(self.settings) == "xenstored" else None)
            return XenBackend(self.reactor, os.path.join(run, "xl"), self._on_event,
                              self.settings["xen_guest_kernel"] or None, self.settings["fill"],
                              grant_cache_pages=self.settings["grant_cache_mib"] * 256,
                              xenstore_path=xenstored,
                              disk_dir=os.path.join(self.settings["state_dir"], "disks"))
        from xenclone.backends.kvm.backend import KvmBackend
        from xenclone.backends.kvm.vmmhost import default_guest_kernel

        args = ["--guest-kernel", self.settings["guest_kernel"] or default_guest_kernel()]
        if guest_socket_dir(self.settings):
            args += ["--xenstore-dir", guest_socket_dir(self.settings)]
        vmm = HelperProcess(self.reactor, "VMM host", "xenclone.backends.kvm.vmmhost_main", args,
                            os.path.join(run, "vmmhost.sock"), os.path.join(run, "vmmhost.log"))
        link = yield vmm.connect(lambda: FrameProtocol(on_event=self._on_event))
        self.links.append(link)
        return KvmBackend(link)

    def _fault_source(self, backend):
        if IHypervisorMemory.providedBy(backend):
            return backend.fault_source()
        from xenclone.backends.kvm.uffd_source import UffdFaultSource
        return UffdFaultSource(self.reactor)

    def stopService(self):
        super().stopService()
        if self.controller is not None:
            self.controller.pager.stop()
        if self.source is not None:
            self.source.stop()
        if IHypervisorMemory.providedBy(self.backend):
            self.backend.close()     # its watcher and libxc handles
        # The helpers keep running: they hold what must outlive the daemon.
        return defer.gatherResults([link.close() for link in self.links])


def helper_sockets(settings):
    """(name, socket) of the helper processes this daemon runs."""
    run = settings["run_dir"]
    helpers = [("memory server", os.path.join(run, "memserver.sock"))]
    if not use_xen(settings["backend"]):
        helpers.append(("VMM host", os.path.join(run, "vmmhost.sock")))
    if xenstore_mode(settings) == "embedded":
        helpers.append(("XenStore", xenstore_socket(settings)))
    return helpers


class DaemonTree(MultiService):
    """The whole daemon; once its services stopped, the helpers follow
    unless domains need them (``control/lifecycle.py``)."""

    def __init__(self, lifecycle):
        super().__init__()
        self.lifecycle = lifecycle

    def stopService(self):
        notify("STOPPING=1")
        d = defer.maybeDeferred(super().stopService)
        return d.addCallback(lambda _: self.lifecycle.stopping())


def make_service(settings, reactor, stop_daemon=None):
    """``stop_daemon``: what ``xenclone shutdown`` calls once it answered
    (default: stop the reactor, so twistd exits)."""
    # "Starting factory"/"Stopping factory" of every connection, ours and
    # the endpoints' wrappers, would be most of the log.
    Factory.noisy = False
    lifecycle = Lifecycle(reactor, helper_sockets(settings),
                          stop_daemon or (lambda: reactor.stop()))
    top = DaemonTree(lifecycle)
    top.setName("xenclone")
    control = ControlService(reactor, settings["control_socket"], settings["control_group"])
    core = CoreService(reactor, settings, control, lifecycle)
    core.setName("core")
    core.setServiceParent(top)
    control.setServiceParent(top)
    plane = XenStorePlane(reactor, settings, _tee(core.ready))
    plane.setName("xenstore")
    plane.setServiceParent(top)
    return top


def _tee(d):
    """A Deferred with ``d``'s result, leaving ``d``'s own chain alone."""
    out = defer.Deferred()

    def both(result):
        out.callback(result)
        return result

    d.addBoth(both)
    return out
