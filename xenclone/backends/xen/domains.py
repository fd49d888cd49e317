"""The Xen backend's domains: their records, their states, and what a
restarted daemon takes back.

A mixin of ``XenBackend``.  Each domain it makes or takes over is a
``_Domain``, written to ``<work_dir>/domain-<domid>.json`` (``_track``)
and let go with its mailbox mapping (``_drop``):

- ``_take_back`` (at start): the records of domains Xen still runs,
  their state read from the guest's mailbox and Xen's flags;
- ``_watch`` (every ``POLL`` s): guests that finished, crashed or
  vanished are reported (``on_event``), and forks of an image domain that
  is gone are paused;
- ``pause``, ``unpause`` (a master at its bless point runs on as clone 0;
  a suspended Linux master's suspend is cancelled), ``destroy``,
  ``release`` (an adopted domain, not ours any more);
- ``reattach``: a restarted daemon's region for a clone (a lazy clone's
  paging ring is ended and begun again).
"""

import json
import os
import struct
import time

import attr
from twisted.internet import defer

from xenclone import workload
from xenclone.backends.xen import libxc, linux, xl
from xenclone.backends.xen.errors import xen_errors
from xenclone.backends.xen.filled import FilledRegion
from xenclone.backends.xen.image_state import GUEST, LINUX
from xenclone.backends.xen.paging import PagedRegion
from xenclone.domain_record import DomainRecord
from xenclone.interfaces import DomainState, PageState
from xenclone.wire import WireError

POLL = 0.05             # seconds between looks at the guests' mailboxes
SHUTDOWN_POWEROFF, SHUTDOWN_REBOOT, SHUTDOWN_SUSPEND, SHUTDOWN_CRASH = 0, 1, 2, 3


class Mailbox:
    """The guest's mailbox in its params page, kept mapped."""

    def __init__(self, mapping):
        self._mapping = mapping
        self._buf = mapping.buffer

    def read(self):
        values = workload.MAILBOX.unpack_from(self._buf, workload.MAILBOX_OFFSET)
        return dict(zip(workload.MAILBOX_FIELDS, values))

    def write(self, **fields):
        """Word by word, ``go`` last: the guest never sees go before the rest."""
        for name in sorted(fields, key=lambda k: k == "go"):
            struct.pack_into("<I", self._buf, workload.MAILBOX_OFFSET
                             + 4 * workload.MAILBOX_FIELDS.index(name), fields[name])

    def load(self, page):
        """The whole params page (a lazy clone's, from its image)."""
        self._buf[:] = page

    def close(self):
        self._mapping.close()


@attr.s(eq=False)
class _Domain(DomainRecord):
    npages = attr.ib()
    config = attr.ib()
    mailbox = attr.ib()                 # None for a Linux domain
    kind = attr.ib(default=GUEST)
    suspended = attr.ib(default=False)  # a Linux master, suspended to be blessed
    fill = attr.ib(default="before-run")
    image = attr.ib(default=None)       # a lazy clone's: what a clean page holds
    paused = attr.ib(default=True)      # our own pause (xl create -p is one)
    error = attr.ib(default=None)
    t_first_ns = attr.ib(default=None)  # monotonic: first unpaused (a clone's launch ends)
    first_told = attr.ib(default=False)  # a Linux domain's t_first_ns reported
    meta = attr.ib(factory=dict)        # the daemon's record of it
    devices = attr.ib(default=None)     # a Linux master's vifs and disks, xl strings

    def info(self):
        return {"domid": self.domid, "name": self.name, "role": self.role,
                "state": self.state, "npages": self.npages, "result": self.result,
                "error": self.error, "t_first_ns": self.t_first_ns, "meta": self.meta,
                "fill": self.fill, "kind": self.kind}

    def record(self):
        """What a restarted daemon needs to take the domain back."""
        return {"domid": self.domid, "name": self.name, "role": self.role,
                "npages": self.npages, "config": self.config, "meta": self.meta,
                "fill": self.fill, "kind": self.kind, "devices": self.devices}



class Domains:
    """Domain records and states; needs ``XenBackend``'s ``reactor``, ``xc``, ``fm``,
    ``work_dir``, ``on_event``, ``images``, ``log`` and its helpers
    (``_xenstore``, ``fault_source``, ``_readable``, ``_destroy_fork``,
    ``_reattach_fork``)."""

    def _get(self, domid):
        dom = self._domains.get(domid)
        if dom is None:
            raise WireError("no-domain", "no domain %r under xenclone on this host" % (domid,))
        return dom

    def _event(self, dom):
        self.on_event(dict(dom.info(), event="state"))

    def _track(self, domid, name, role, npages, config, meta, fill="before-run", kind=GUEST,
               devices=None):
        box = Mailbox(self.fm.map(domid, [workload.PARAMS_PFN])) if kind == GUEST else None
        dom = self._domains[domid] = _Domain(domid, name, role, npages, config, box,
                                             kind=kind, fill=fill, meta=meta, devices=devices)
        self._write_record(dom)
        return dom

    def _write_record(self, dom):
        path = self._record_path(dom.domid)
        with open(path + ".tmp", "w") as f:
            json.dump(dom.record(), f)
        os.replace(path + ".tmp", path)

    def _record_path(self, domid):
        return os.path.join(self.work_dir, "domain-%d.json" % domid)

    def _drop(self, domid):
        """Forget a domain: its mapping (which alone would keep a dying
        domain) and its record."""
        dom = self._domains.pop(domid, None)
        if dom is not None and dom.mailbox is not None:
            dom.mailbox.close()
        if os.path.exists(self._record_path(domid)):
            os.unlink(self._record_path(domid))

    def _take_back(self):
        """The domains a previous daemon made that Xen still runs: the
        guest's mailbox and Xen's flags say where each one is."""
        for name in sorted(os.listdir(self.work_dir)):
            if not (name.startswith("domain-") and name.endswith(".json")):
                continue
            with open(os.path.join(self.work_dir, name)) as f:
                rec = json.load(f)
            try:
                info = self.xc.domain_info(rec["domid"])
            except libxc.XenError:
                info = None
            if info is None or info.dying:
                self._drop(rec["domid"])
                self._drop_disks(rec["meta"] if rec["role"] == "clone" else {})
                continue
            dom = self._track(rec["domid"], rec["name"], rec["role"], rec["npages"],
                              rec["config"], rec["meta"], rec.get("fill", "before-run"),
                              rec.get("kind", GUEST), rec.get("devices"))
            dom.paused = info.paused
            if dom.kind == LINUX:
                dom.suspended = info.shutdown_reason == SHUTDOWN_SUSPEND
                dom.state = (DomainState.PAUSED if dom.paused or dom.suspended
                             else DomainState.RUNNING)
                self.log.info("took back {role} {name} (domain {domid}, {state})",
                              role=dom.role, name=dom.name, domid=dom.domid, state=dom.state)
                continue
            box = dom.mailbox.read()
            if box["done"] == workload.DONE_OK:
                dom.state, dom.result = DomainState.DONE, box["result"]
            elif dom.paused:
                dom.state = DomainState.READY if box["ready"] and not box["go"] else DomainState.PAUSED
            else:
                dom.state = DomainState.RUNNING
            self.log.info("took back {role} {name} (domain {domid}, {state})", role=dom.role,
                          name=dom.name, domid=dom.domid, state=dom.state)

    def _pause(self, dom):
        if not dom.paused:
            self.xc.pause(dom.domid)
            dom.paused = True

    def _unpause(self, dom):
        if dom.paused:
            self.xc.unpause(dom.domid)
            dom.paused = False
            if dom.t_first_ns is None:
                dom.t_first_ns = time.monotonic_ns()
        dom.state = DomainState.RUNNING

    def _info(self, dom):
        """Xen's info of the domain, or None once it is gone or going (xl
        destroy or xl save behind our back: our mapping of its params page
        is all that keeps it, so it is let go at once)."""
        try:
            info = self.xc.domain_info(dom.domid)
        except libxc.XenError:
            info = None
        if info is None or info.dying:
            self._drop(dom.domid)
            return None
        return info

    def _watch(self):
        """Report guests that finished, crashed or vanished, and pause the
        forks of an image domain that is gone (their next touch of an
        unfilled page would find nothing to fill it from)."""
        orphaned = {self.images.domid(i) for i in self.images.gone()}
        for dom in list(self._domains.values()):
            if (dom.fill == "fork" and dom.meta.get("parent") in orphaned
                    and dom.state != DomainState.IMAGE_GONE and self._info(dom) is not None):
                self._pause(dom)
                dom.state = DomainState.IMAGE_GONE
                dom.error = "its image domain %d is gone" % dom.meta["parent"]
                self.log.error("{name} paused: its image domain {parent} is gone",
                               name=dom.name, parent=dom.meta["parent"])
                self._event(dom)
        for dom in list(self._domains.values()):
            info = self._info(dom)
            if info is None:    # xl destroy behind our back: its overlays go too
                self._drop_disks(dom.meta if dom.role == "clone" else {})
                dom.state = DomainState.DESTROYED
                self._event(dom)
                continue
            if dom.state != DomainState.RUNNING:
                continue
            if dom.kind == LINUX:
                # It runs on with no result to report: its first unpause is
                # told at once (the controller's launch_ms).
                first = dom.t_first_ns is not None and not dom.first_told
                if self._linux_stopped(dom, info.shutdown_reason) or first:
                    dom.first_told = True
                    self._event(dom)
                continue
            box = dom.mailbox.read()
            if box["done"] == workload.DONE_OK:
                dom.state, dom.result = DomainState.DONE, box["result"]
            elif box["done"] or info.shutdown_reason is not None:
                dom.state = DomainState.CRASHED
                dom.error = "guest stopped: mailbox done=%#x, Xen shutdown reason %s" % (
                    box["done"], info.shutdown_reason)
            else:
                continue
            self._event(dom)

    def _linux_stopped(self, dom, why):
        """A running Linux guest's state from Xen's shutdown reason: whether
        it changed."""
        if why is None:
            return False
        if why == SHUTDOWN_SUSPEND:     # asked by us (bless) or by another toolstack
            dom.suspended, dom.state = True, DomainState.PAUSED
        elif why == SHUTDOWN_POWEROFF:
            dom.state = DomainState.DONE
        else:       # a reboot too (a triple fault is one): a clone does not boot again
            dom.state = DomainState.CRASHED
            dom.error = "guest stopped: Xen shutdown reason %d" % why
        return True

    def pause(self, domid):
        def pause():
            dom = self._get(domid)
            self._pause(dom)
            if dom.state == DomainState.RUNNING:
                dom.state = DomainState.PAUSED
            return dom.info()

        return xen_errors(defer.maybeDeferred(pause))

    def unpause(self, domid):
        return xen_errors(self._unpause_domain(domid))

    @defer.inlineCallbacks
    def _unpause_domain(self, domid):
        dom = self._get(domid)
        if dom.state in (DomainState.DONE, DomainState.CRASHED):
            raise WireError("not-runnable", "domain %d is %s" % (domid, dom.state))
        if dom.kind == LINUX:
            if dom.suspended:
                # A blessed Linux master runs on: its suspend is cancelled.
                xs = yield self._xenstore()
                yield linux.resume(xs, self.xc, domid)
                dom.suspended = False
        else:
            box = dom.mailbox.read()
            if box["ready"] and not box["go"]:
                # A master at its bless point runs on as clone 0, input 0,
                # as it does on KVM.
                dom.mailbox.write(go=1)
        self._unpause(dom)
        return dom.info()

    def release(self, domid):
        """Stop managing an adopted domain (a bless of it failed); it runs on."""
        self._drop(domid)
        return defer.succeed(None)

    def destroy(self, domid, keep_disks=False):
        """The domain gone; a clone's disk overlays too, unless kept
        (``kept_disks``: their paths)."""
        def destroy():
            dom = self._get(domid)
            meta = dom.meta if dom.role == "clone" else {}
            done = {"domid": domid}
            if self._info(dom) is None:
                done["gone"] = True
                d = defer.succeed(None)
            elif dom.fill == "fork":
                d = self._destroy_fork(domid)
            else:
                self._drop(domid)
                d = xl.destroy(self.reactor, domid)
            return d.addCallback(lambda _: dict(done, kept_disks=self._drop_disks(meta,
                                                                                  keep_disks)))

        return defer.maybeDeferred(destroy)

    def domains(self):
        """The domains made through this backend, by this daemon or one
        before it (records in work_dir, kept while Xen runs the domain)."""
        return defer.succeed([d.info() for d in self._domains.values()])

    def reattach(self, domid, image):
        """A filled clone has no fault handle to take back: its region,
        with the pages the fill copied, accounted as at launch.  A lazy
        clone gets a paging ring of its own again."""
        def region():
            dom = self._get(domid)
            if dom.fill == "lazy":
                return self._reattach_lazy(dom, self._readable(image))
            if dom.fill == "fork":
                return self._reattach_fork(dom, image)
            kinds = [PageState.ZERO if image.zero[p] else PageState.SHARED
                     for p in range(image.npages)]
            return FilledRegion(domid, dom.npages, self._readable(image), self.fm, []), kinds

        return defer.maybeDeferred(region)

    def _reattach_lazy(self, dom, image):
        """The dead daemon's paging ring ends and a new one begins, the
        domain paused between them: Xen crashes a guest that touches a
        paged-out page while no ring is there.  Which pages Xen holds is
        not asked (asking pages them in): every page starts absent.  A
        request for one Xen still has is answered as at a nominate race,
        and a page paged out to the store is held by the page-out index."""
        source = self.fault_source()
        running = not dom.paused
        self._pause(dom)
        try:
            self.xc.paging_disable(dom.domid)
            ring = self.xc.paging_enable(dom.domid)
            try:
                region = PagedRegion(self.xc, source.evtchn, ring, dom.domid, image)
            except Exception:
                ring.close()
                raise
        finally:
            if running:
                self._unpause(dom)
        dom.image = image
        self.log.info("lazy clone {name}: paging ring taken back", name=dom.name)
        return region, [PageState.ABSENT] * dom.npages
