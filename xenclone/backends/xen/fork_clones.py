"""Clones as VM forks: the Xen backend's side of ``IForkBackend``.

The mechanism is in ``fork.py`` (a child built by hand) and the image
domains' life in ``image_domains.py``; this mixin of ``XenBackend`` ties
them to its domain records:

- ``prepare_image`` (bless's last step): the image's domain, a filled copy
  of the master, or for an image blessed from a fork clone a fork of its
  parent image's domain with only the pages that differ written in;
- ``_launch_fork`` (``launch`` with fill = fork): child made and forked,
  tracked, its XenStore home and id written, unpaused;
- ``reset``: channels closed, Xen's fork reset, wired and introduced again;
- ``_destroy_fork``: Xen destroys it and its XenStore traces go.
"""

import errno
import os
import time

from twisted.internet import defer

from xenclone.backends.xen import clone_identity, fork, libxc
from xenclone.backends.xen.errors import xen_errors
from xenclone.backends.xen.filled import ForkRegion
from xenclone.backends.xen.fork_region import ForkPagedRegion
from xenclone.backends.xen.xencall import XenCall
from xenclone.backends.xen.image_state import GUEST, LINUX, unpack_state
from xenclone.interfaces import PAGE_SIZE, DomainState, PageState
from xenclone.runs import runs
from xenclone.wire import WireError

CHUNK = 1024        # pages compared a read (4 MiB from each image)


def _pages(image, first, n):
    """``n`` pages of ``image`` from ``first``, in one read where the image
    is a memfd in dom0."""
    if image.pages is None:
        return os.pread(image.mem_fd, n * PAGE_SIZE, first * PAGE_SIZE).ljust(n * PAGE_SIZE,
                                                                              b"\0")
    return b"".join(image.read_page(p) for p in range(first, first + n))


class _Laps:
    """Milliseconds spent in each named step, one after another."""

    def __init__(self):
        self.ms, self._t = {}, time.monotonic()

    def lap(self, step):
        now = time.monotonic()
        self.ms[step + "_ms"] = round((now - self._t) * 1e3, 1)
        self._t = now


class ForkClones:
    """Fork clones' operations; needs ``XenBackend``'s records and helpers."""

    _xencall = None

    @property
    def xencall(self):
        """libxencall, for the fork page list (opened on first use)."""
        if self._xencall is None:
            self._xencall = XenCall()
        return self._xencall

    @defer.inlineCallbacks
    def _launch_fork(self, image, clone, config, kind):
        """A fork of the image's image domain (``fork.py``), its XenStore
        home and id written, then unpaused: nothing is copied."""
        parent = self.images.parent(image.image_id)
        xs = yield self._xenstore()
        writer = yield self._xenstore_bulk()
        vcpus = config.get("vcpus", 1)
        laps = _Laps()
        domid, store, console = fork.make_child(self.xc, parent, vcpus)
        laps.lap("child")
        region = None
        try:
            dom = self._track(domid, clone.name, "clone", image.npages, config,
                              dict(clone.meta, parent=parent), fill="fork", kind=kind)
            dom.image = self._readable(image)
            # The home's requests go out while the rings are made.
            told = self._tell(xs, dom, store, console, writer)
            try:
                region = self._fork_region(domid, image)
            except Exception:
                yield told.addErrback(lambda _: None)
                raise
            laps.lap("rings")
            yield told
            laps.lap("xenstore")
            if not clone.paused:
                self._unpause(dom)
        except Exception:
            if region is not None:
                region.close()
            yield self._destroy_fork(domid)
            raise
        # Where a launch's time goes, for the operator (and the rig):
        # "xenstore" is the wait for its home after the rings were made.
        self.log.info("fork {name}: dom {domid}: child {child_ms} ms, rings {rings_ms} ms, "
                      "xenstore {xenstore_ms} ms", name=clone.name, domid=domid, **laps.ms)
        return region

    def _fork_region(self, domid, image, waiting=False):
        """The fork's region, its vCPUs paused: where the hypervisor also
        pages, its paging and sharing rings, so the pager governs its
        memory (``fork_region.py``); elsewhere Xen alone fills it.
        ``waiting``: a dead daemon's rings may have left vCPUs paused for
        room; they resume and ask again on the new ring."""
        readable = self._readable(image)
        if not self.mem_paging:
            return ForkRegion(domid, image.npages, readable, self.fm)
        source = self.fault_source()
        paging = self.xc.paging_enable(domid)
        try:
            sharing = self.xc.sharing_enable(domid)
        except Exception:
            paging.close()
            raise
        try:
            region = ForkPagedRegion(self.xc, source.evtchn, paging, sharing, self.xencall,
                                     self.fm, domid, readable)
        except Exception:
            sharing.close()
            paging.close()
            raise
        if waiting:
            region.resume_all()
        return region

    def _reattach_fork(self, dom, image):
        """A dead daemon's rings end and new ones begin, the fork paused
        between them; every page starts absent to the pager (Xen fills
        them), those paged out come back through the page-out index."""
        running = not dom.paused
        self._pause(dom)
        try:
            if self.mem_paging:
                for disable in (self.xc.sharing_disable, self.xc.paging_disable):
                    try:
                        disable(dom.domid)
                    except libxc.XenError as e:     # never enabled, or gone
                        self.log.debug("fork {name}: {why}", name=dom.name, why=e)
            region = self._fork_region(dom.domid, image, waiting=True)
            dom.image = self._readable(image)
        finally:
            if running:
                self._unpause(dom)
        return region, [PageState.ABSENT] * dom.npages

    def _tell(self, xs, dom, store, console, writer=None):
        """Step 4 for a tracked fork, at launch and after a reset: its
        XenStore home and introduction, and its id where its guest reads it
        (a Linux clone's XenStore node, the project's guest's mailbox)."""
        clone_id = dom.meta.get("clone_id")
        # A Linux clone's fresh identity (entropy, ...) before its id: the
        # guest agent acts on the id.
        extra = (clone_identity.identity_nodes(dom.domid) + fork.clone_id_nodes(dom.domid, clone_id)
                 if dom.kind == LINUX else ())
        d = fork.write_home(xs, dom.domid, dom.name, fork.memory_kib(dom.npages),
                            dom.config.get("vcpus", 1), store, console, extra, writer)
        if dom.kind == GUEST:
            dom.mailbox.write(clone_id=clone_id, input=dom.meta.get("input"), go=1)
        return d

    @defer.inlineCallbacks
    def _destroy_fork(self, domid):
        """A fork has no libxl state: Xen destroys it, and its XenStore
        traces go."""
        self._drop(domid)
        try:
            self.xc.destroy(domid)
        except libxc.XenError as e:
            if e.errno != errno.ESRCH:
                raise
        xs = yield self._xenstore()
        yield fork.unwire(xs, self.xc, domid)

    # -- image domains (IForkBackend)

    def prepare_image(self, image, parent=None):
        """Bless's last step where the hypervisor forks and fork is wanted
        (fill = auto or fork): the image's domain.  An image blessed from a
        fork clone (``parent``: the image it was forked from) gets a fork
        of the parent's image domain holding only the pages that differ,
        so the rest stay shared with the first image."""
        if self.fill not in ("auto", "fork"):
            return defer.succeed(None)
        config, kind, record = unpack_state(image.vcpu_state)
        readable = self._readable(image)
        parent_domid = self.images.domid(parent.image_id) if parent is not None else None
        if parent_domid is not None:
            return xen_errors(self.images.prepare(
                image.image_id, lambda name: self._derived(name, parent_domid, config, record,
                                                          readable, self._readable(parent)),
                lambda domid: defer.succeed(None), parent=parent.image_id))

        def create(name):
            return self._create(dict(config, name=name))

        def fill(domid):
            d = self._thread(self._fill, domid, readable)
            return d.addCallback(lambda _: self.xc.hvm_setcontext(domid, record))

        return xen_errors(self.images.prepare(image.image_id, create, fill))

    @defer.inlineCallbacks
    def _derived(self, name, parent_domid, config, record, image, parent):
        """A fork of ``parent_domid`` (paused, never introduced to
        xenstored; named for ``xl list``) given ``image``'s pages where they
        differ from ``parent``'s and its vCPU state; Deferred[domid]."""
        xs = yield self._xenstore()
        domid, _, _ = fork.make_child(self.xc, parent_domid, config.get("vcpus", 1))
        try:
            yield xs.write("/local/domain/%d/name" % domid, name)
            changed = yield self._thread(self._copy_changed, domid, image, parent)
            self.xc.hvm_setcontext(domid, record)
        except Exception:
            self.xc.destroy(domid)
            raise
        self.log.info("derived image domain {domid}: {changed} of {n} pages differ from its "
                      "parent's", domid=domid, changed=changed, n=image.npages)
        return domid

    def _copy_changed(self, domid, image, parent):
        """Write the pages of ``image`` that differ from ``parent``'s into
        the fork ``domid``; a page mapped writable is unshared, so only
        those are mapped.  Returns how many."""
        changed = 0
        for first in range(0, image.npages, CHUNK):
            n = min(CHUNK, image.npages - first)
            new, old = _pages(image, first, n), _pages(parent, first, n)
            differ = [first + i for i in range(n)
                      if new[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]
                      != old[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]]
            for start, count in runs(differ):
                pfns = differ[start:start + count]
                at = (pfns[0] - first) * PAGE_SIZE
                with self.fm.map(domid, pfns) as m:
                    m.buffer[:] = new[at:at + count * PAGE_SIZE]
            changed += len(differ)
        return changed

    def frames(self, domid):
        def frames():
            info = self.xc.domain_info(self._get(domid).domid)
            return {"own": info.tot_pages, "shared": info.shr_pages,
                    "paged_out": info.paged_pages, "max": info.max_pages}

        return xen_errors(defer.maybeDeferred(frames))

    def image_domains(self):
        return self.images.info()

    def drop_image(self, image_id):
        return xen_errors(self.images.drop(image_id))

    def reset(self, domid, old, image):
        return xen_errors(self._reset(domid, old, image))

    @defer.inlineCallbacks
    def _reset(self, domid, old, image):
        """Back to the image's state (Xen's fork reset: the clone's own
        pages go, vCPU and HVM state are the parent's again), then wired
        and introduced afresh, as at launch."""
        dom = self._get(domid)
        if dom.role != "clone":
            raise WireError("not-clone", "%s is a master: only clones are reset (to their "
                            "image)" % dom.name)
        if dom.fill != "fork":
            raise WireError("unsupported", "%s is not a fork (fill %s): only fork clones are "
                            "reset" % (dom.name, dom.fill))
        xs = yield self._xenstore()
        writer = yield self._xenstore_bulk()
        self._pause(dom)
        # What it paged out is dropped (Xen's reset leaves paged-out
        # entries, which would page the old contents back in), and its
        # rings go with its channels.
        old.drop_paged_out()
        old.close()
        # Its channels closed first: Xen unregisters the guest's vcpu_info
        # on reset (xen/patches) only where no event can reach it.
        self.xc.evtchn_reset(domid)
        self.xc.fork_reset(domid)
        region = self._fork_region(domid, image)
        yield fork.unwire(xs, self.xc, domid)
        store, console = fork.wire(self.xc, domid)
        yield self._tell(xs, dom, store, console, writer)
        dom.t_first_ns, dom.first_told = None, False
        dom.state, dom.result, dom.error = DomainState.PAUSED, None, None
        self._unpause(dom)
        return dom.info(), region
