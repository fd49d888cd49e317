"""The daemon's control API: what ``xenclone <command>`` asks for.

Backend-neutral: it drives an ``IBackend``, an ``IMemoryServer`` and the
``Pager``.  Every op checks its input and fails with a ``WireError`` whose
text is meant for the operator.
"""

from twisted.internet import defer
from twisted.logger import Logger

from xenclone import workload
from xenclone.control.diagnostics import Diagnostics
from xenclone.control.domain_ops import DomainOps
from xenclone.control.image_ops import ImageOps
from xenclone.control.master_ops import MasterOps
from xenclone.control.memory_ops import MemoryOps
from xenclone.control.records import _RUNS, unknown_identity
from xenclone.control.settings_ops import SettingsOps
from xenclone.interfaces import FIRST_HANDLE, DomainState, IDomainNumbering, ILinuxBackend
from xenclone.wire import WireError

# The daemon's state -> the backend's word for it, which does not override it.
_REFINES = {DomainState.WAITING_FOR_MEMSERVER: DomainState.RUNNING,
            DomainState.PAUSED_BY_TIMEOUT: DomainState.PAUSED,
            DomainState.IMAGE_GONE: DomainState.PAUSED}


class Controller(MasterOps, DomainOps, ImageOps, MemoryOps, Diagnostics, SettingsOps):
    """The domains the daemon knows, and what every op shares: finding a
    domain, numbering, state changes and the events that bring them; the
    ops by area are mixins (``master_ops.py``, ``domain_ops.py``,
    ``image_ops.py``, ``memory_ops.py``, ``settings_ops.py``,
    ``diagnostics.py``)."""

    log = Logger()

    def __init__(self, reactor, backend, memserver, pager, host_memory, hoard_rate=5000,
                 share_onfetch=True, memserver_timeout=0, working_sets=None, balloons=None,
                 kept=None):
        self.reactor = reactor
        self.kept = kept                      # OperatorState: settings kept across restarts
        self.working_sets = working_sets      # REAP: record, then prefetch (or None)
        self.memserver_timeout = memserver_timeout    # s; 0: wait for ever
        self._wait_timers = {}        # domid -> pause after the timeout
        pager.on_waiting = self._memserver_waiting
        self.backend = backend
        self.host_memory = host_memory
        self.balloons = balloons              # BalloonService where only guests give frames back
        self.hoard_rate = hoard_rate
        self.share_onfetch = share_onfetch
        self.memserver = memserver
        self.pager = pager
        self.domains = {}
        self._images = {}         # image id -> OpenImage (this host's mapping)
        self._next_domid = FIRST_HANDLE if IDomainNumbering.providedBy(backend) else 1
        self._next_clone_id = {}
        self.on_change = []       # called with no arguments when domains or images change

    @property
    def ledger(self):
        """The host's ``ILedger`` (the pager's): its pages and budget."""
        return self.pager.ledger

    def _changed(self):
        for listener in self.on_change:
            listener()

    def _domain(self, ref):
        # Not a bool (JSON true is no domid), not a non-ASCII digit ("²").
        if type(ref) is int or (isinstance(ref, str) and ref.isascii() and ref.isdigit()):
            dom = self.domains.get(int(ref))
        else:
            dom = next((d for d in self.domains.values() if d.name == ref), None)
        if dom is None:
            raise WireError("no-domain", "unknown domain %r" % (ref,))
        return dom

    def _allocate(self):
        domid = self._next_domid
        self._next_domid += 1
        return domid

    def reserve_domid(self, domid):
        """A domain taken back after a restart keeps its id."""
        self._next_domid = max(self._next_domid, domid + 1)

    def note_clone_id(self, image_id, clone_id):
        if clone_id is not None:
            self._next_clone_id[image_id] = max(self._next_clone_id.get(image_id, 0), clone_id)

    def _adopt(self, dom, domid):
        """The backend's id for the domain, where it numbers them itself."""
        if domid != dom.domid:
            self.domains.pop(dom.domid, None)
            dom.domid = domid
            self.domains[domid] = dom

    def _set_state(self, dom, state):
        dom.state = state
        self._changed()
        if state not in _RUNS and self.working_sets is not None:
            self.working_sets.finished(dom.domid)
        if state not in _RUNS:
            waiters, dom.waiters = dom.waiters, []
            for d in waiters:
                d.callback(dom)

    def on_backend_event(self, msg):
        """State reports from the backend (vCPU exits, halts, crashes)."""
        dom = self.domains.get(msg.get("domid"))
        if dom is None or msg["event"] != "state":
            return
        if msg.get("result") is not None:
            dom.result = msg["result"]
        if msg.get("t_first_ns") and dom.t0_ns and dom.launch_ms is None:
            dom.launch_ms = (msg["t_first_ns"] - dom.t0_ns) / 1e6
        if msg["state"] == DomainState.DESTROYED:
            self._forget(dom)
        elif _REFINES.get(dom.state) != msg["state"]:
            self._set_state(dom, msg["state"])

    def _memserver_waiting(self, domid, waiting):
        """A clone's fault waits on the memory server (or no longer does).
        After the timeout it is paused, so it does not hang with no trace;
        it runs on by itself once its fault is served."""
        dom = self.domains.get(domid)
        if dom is None:
            return
        timer = self._wait_timers.pop(domid, None)
        if timer is not None and timer.active():
            timer.cancel()
        if waiting and dom.state == DomainState.RUNNING:
            self._set_state(dom, DomainState.WAITING_FOR_MEMSERVER)
            if self.memserver_timeout:
                self._wait_timers[domid] = self.reactor.callLater(
                    self.memserver_timeout, self._pause_waiting, dom)
        elif not waiting and dom.state == DomainState.WAITING_FOR_MEMSERVER:
            self._set_state(dom, DomainState.RUNNING)
        elif not waiting and dom.state == DomainState.PAUSED_BY_TIMEOUT:
            self.log.info("{name}: the memory server answers again; resumed", name=dom.name)
            self.backend.unpause(domid).addCallbacks(
                lambda _: self._set_state(dom, DomainState.RUNNING),
                lambda f: self.log.failure("{name}: could not resume", f, name=dom.name))

    def _pause_waiting(self, dom):
        self._wait_timers.pop(dom.domid, None)
        if dom.state != DomainState.WAITING_FOR_MEMSERVER:
            return
        self.log.warn("{name}: waited {s} s for the memory server; paused", name=dom.name,
                      s=self.memserver_timeout)
        self.backend.pause(dom.domid).addCallbacks(
            lambda _: self._set_state(dom, DomainState.PAUSED_BY_TIMEOUT),
            lambda f: self.log.failure("{name}: could not pause", f, name=dom.name))

    def _forget(self, dom):
        self.domains.pop(dom.domid, None)
        if self.kept is not None:
            self.kept.forget_clone(dom.domid)
        if self.working_sets is not None:
            self.working_sets.gone(dom.domid)
        self.pager.detach(dom.domid)
        self._set_state(dom, DomainState.DESTROYED)

    def open_image(self, image_id):
        if image_id in self._images:
            return defer.succeed(self._images[image_id])
        d = self.memserver.open(image_id)

        def keep(image):
            self._images[image_id] = image
            self.pager.track_image(image)
            return image

        return d.addCallback(keep)

    def op_list(self, msg):
        return {"domains": [d.summary() for d in sorted(self.domains.values(), key=lambda d: d.domid)]}

    def op_info(self, msg):
        dom = self._domain(msg.get("domain"))
        info = dict(dom.summary(), clone_id=dom.clone_id, input=dom.input, result=dom.result,
                    launch_ms=dom.launch_ms, backend=self.backend.name,
                    fill_mode=dom.fill_mode or self.backend.fill_mode)
        stats = self.pager.stats(dom.domid)
        if stats is None:    # a master: its memory is all its own
            stats = {"nominal_pages": (dom.memory_mib or 0) * 256, "faults": 0}
        stats.pop("image", None)
        info.update(stats)
        info["fetched_pages"] = stats["faults"]
        requests = self.pager.requests(dom.domid)
        if requests is not None:
            info["requests"] = requests
        info.update(self._expected(dom))
        linux_clone = (dom.role == "clone" and dom.params is None
                       and ILinuxBackend.providedBy(self.backend))
        if dom.fill_mode != "fork" and not linux_clone:
            return info
        d = defer.succeed(info)
        if dom.fill_mode == "fork":
            # Xen fills a fork itself: its pages as the hypervisor counts them.
            d.addCallback(lambda info: self.backend.frames(dom.domid).addCallback(
                lambda hv: dict(info, hypervisor=hv)))
        if linux_clone:
            # Whether its guest agent renewed its identity, and what it did.
            d.addCallback(lambda info: self.backend.identity(dom.domid).addErrback(
                unknown_identity).addCallback(
                lambda i: dict(info, identity=i["identity"], identity_detail=i.get("detail"))))
        return d

    @staticmethod
    def _expected(dom):
        if dom.role == "clone" and dom.params:
            return {"expected": workload.expected_result(workload.Params(**dom.params),
                                                         dom.clone_id, dom.input)}
        return {}

    def _clone(self, msg):
        dom = self._domain(msg.get("domain"))
        if dom.role != "clone":
            raise WireError("not-clone", "%s is a master; this applies to clones" % dom.name)
        return dom
