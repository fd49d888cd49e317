"""The control ops on clones and running domains: launch, pause, unpause,
wait, reset, destroy.

A mixin of ``Controller``:

- ``launch``: the image opened; each clone gets the next clone id of its
  image and a domain id, the backend launches a ``CloneSpec`` (a mirror's
  pages brought in first where the clone is filled before it runs), and
  the pager takes its region (and the working sets its start);
- ``pause``, ``unpause``, ``wait`` (until it leaves ``_RUNS``, or time
  out), ``reset`` (a fork clone back to its image: its region leaves the
  pager and comes back as at launch), ``destroy``, ``destroy_all``
  (clones first).
"""

import time

from twisted.internet import defer

from xenclone.control.args import _image_arg, _int
from xenclone.control.records import _RUNS, CloneSpec, Domain, unknown_identity
from xenclone.interfaces import DomainState, IForkBackend, ILinuxBackend
from xenclone.wire import WireError

MAX_LAUNCH = 256
MAX_IDENTITY_WAIT = 3600     # s: --wait-identity


def _since_launch(seconds, before_wait):
    """A handshake's time from its clone's launch (the clones launched
    after it made it wait too), not from the start of the wait."""
    return None if seconds is None else round(seconds + before_wait, 3)


class DomainOps:
    """Clones' and domains' ops; needs ``Controller``'s ``backend``,
    ``pager``, ``domains``, ``working_sets``, ``share_onfetch``,
    ``_next_clone_id``, ``reactor`` and its helpers (``_domain``,
    ``_allocate``, ``_adopt``, ``_set_state``, ``_forget``, ``_changed``,
    ``open_image``, ``op_info``)."""

    def op_launch(self, msg):
        image_id = _image_arg(msg)
        count = _int(msg, "count", 1, MAX_LAUNCH, default=1)
        paused = bool(msg.get("paused"))
        share = msg.get("share", self.share_onfetch)
        prefetch = msg.get("prefetch", True)
        if not isinstance(share, bool) or not isinstance(prefetch, bool):
            raise WireError("bad-argument", "share and prefetch must be true or false")
        fill = msg.get("fill")
        if fill not in (None, "fork", "lazy", "before-run", "auto"):
            raise WireError("bad-argument", "fill must be fork, lazy, before-run or auto")
        wait = msg.get("wait_identity")
        if wait is not None:
            wait = _int(msg, "wait_identity", 0, MAX_IDENTITY_WAIT)
            if not ILinuxBackend.providedBy(self.backend):
                raise WireError("unsupported", "wait_identity: clones of the %s backend have "
                                "no identity agent" % self.backend.name)

        @defer.inlineCallbacks
        def launch():
            image = yield self.open_image(image_id)
            launched, ran = [], []
            for _ in range(count):
                launched.append((yield self._launch_one(image, paused, share, prefetch, fill)))
                ran.append(time.monotonic())
            if wait is not None and image.meta.get("params") is None:   # Linux clones
                # Together: a clone without the agent costs the wait once.
                waited = time.monotonic()
                told = yield defer.gatherResults(
                    [self.backend.identity(c["domid"], wait).addErrback(unknown_identity)
                     for c in launched])
                for clone, at, identity in zip(launched, ran, told):
                    clone.update(identity=identity["identity"],
                                 identity_s=_since_launch(identity.get("seconds"), waited - at))
            return {"clones": launched}

        return launch()

    @defer.inlineCallbacks
    def _launch_one(self, image, paused, share, prefetch=True, fill=None):
        t0 = time.monotonic_ns()
        clone_id = self._next_clone_id.get(image.image_id, 0) + 1
        self._next_clone_id[image.image_id] = clone_id
        domid = self._allocate()
        name = "%s.%d" % (image.image_id, clone_id)
        dom = Domain(domid, name, "clone", image.meta.get("memory_mib"), image=image.image_id,
                     clone_id=clone_id, input=domid, params=image.meta.get("params"),
                     state=DomainState.PAUSED if paused else DomainState.RUNNING, t0_ns=t0)
        self.domains[domid] = dom
        since = self.pager.punch_seq
        try:
            if image.origin is not None and self._before_run(fill):
                yield self.pager.bring_in(image)
            meta = dict(dom.record(), generation=image.generation, share=share)
            region = yield self.backend.launch(
                image, CloneSpec(domid, name, clone_id, domid, paused, share, meta, fill))
        except Exception:
            self.domains.pop(domid, None)
            if self._next_clone_id[image.image_id] == clone_id:    # a refusal uses no id
                self._next_clone_id[image.image_id] = clone_id - 1
            raise
        self._adopt(dom, region.domid)
        dom.fill_mode = region.fill_mode
        self.pager.attach(region, image, since, share)
        if self.working_sets is not None and share:
            self.working_sets.launched(dom.domid, image, region.npages, prefetch)
        self._changed()
        return {"domid": dom.domid, "name": name, "clone_id": clone_id}

    def _before_run(self, fill):
        """Whether a launch asking for ``fill`` is filled before it runs."""
        return fill == "before-run" or (fill in (None, "auto")
                                         and self.backend.fill_mode == "fill-before-run")

    def op_pause(self, msg):
        dom = self._domain(msg.get("domain"))
        return self.backend.pause(dom.domid).addCallback(
            lambda info: (self._set_state(dom, DomainState.PAUSED), dom.summary())[1])

    def op_unpause(self, msg):
        dom = self._domain(msg.get("domain"))
        if dom.state not in (DomainState.PAUSED, DomainState.READY, DomainState.PAUSED_BY_TIMEOUT):
            raise WireError("not-paused", "%s is %s" % (dom.name, dom.state))
        return self.backend.unpause(dom.domid).addCallback(
            lambda info: (self._set_state(dom, info["state"]), dom.summary())[1])

    def op_wait(self, msg):
        """Fires when the domain leaves the running state (or timeout)."""
        dom = self._domain(msg.get("domain"))
        timeout = _int(msg, "timeout", 1, 3600, default=60)
        if dom.state not in _RUNS:
            return self.op_info({"domain": dom.domid})
        d = defer.Deferred()
        dom.waiters.append(d)

        def timed_out(f):
            f.trap(defer.TimeoutError)
            if d in dom.waiters:
                dom.waiters.remove(d)
            raise WireError("timeout", "%s is still %s after %d s" % (dom.name, dom.state, timeout))

        d.addTimeout(timeout, self.reactor)
        d.addCallbacks(lambda dom: self.op_info({"domain": dom.domid}), timed_out)
        return d

    def op_reset(self, msg):
        """A fork clone back to its image's state (the backend refuses
        masters and clones that are not forks)."""
        dom = self._domain(msg.get("domain"))
        if not IForkBackend.providedBy(self.backend):
            raise WireError("unsupported", "reset needs a backend with VM fork (Xen with "
                            "MEM_SHARING)")
        if dom.role != "clone":
            raise WireError("not-clone", "%s is a master: only clones are reset (to their "
                            "image)" % dom.name)

        if dom.fill_mode != "fork":
            raise WireError("unsupported", "%s is not a fork (fill %s): only fork clones are "
                            "reset" % (dom.name, dom.fill_mode))
        # Its pages leave the ledger with its old region (what it paged out
        # too); it comes back as at launch.
        region, image = self.pager.clones[dom.domid]
        self.pager.detach(dom.domid)

        def done(result):
            info, region = result
            self.pager.attach(region, image)
            self._set_state(dom, DomainState.RUNNING)
            return {"domid": dom.domid, "name": dom.name, "state": info["state"]}

        return self.backend.reset(dom.domid, region, image).addCallback(done)

    def op_destroy(self, msg):
        dom = self._domain(msg.get("domain"))
        keep = msg.get("keep_disks", False)
        if not isinstance(keep, bool):
            raise WireError("bad-argument", "keep_disks must be true or false")
        if keep and not ILinuxBackend.providedBy(self.backend):
            raise WireError("unsupported", "keep_disks: domains of the %s backend have no "
                            "disks" % self.backend.name)
        self.pager.detach(dom.domid)
        # Only when asked: backends without disks take no such argument.
        d = self.backend.destroy(dom.domid, keep_disks=True) if keep else \
            self.backend.destroy(dom.domid)

        def done(r):
            self._forget(dom)
            kept = r.get("kept_disks") if isinstance(r, dict) else None
            return dict({"domid": dom.domid, "name": dom.name},
                        **({"kept_disks": kept} if kept else {}))

        return d.addCallback(done)

    def op_destroy_all(self, msg):
        doms = sorted(self.domains.values(), key=lambda d: d.role != "clone")
        d = defer.succeed(None)
        for dom in doms:
            d.addCallback(lambda _, domid=dom.domid: self.op_destroy({"domain": domid}))
        return d.addCallback(lambda _: {"destroyed": [dom.domid for dom in doms]})
