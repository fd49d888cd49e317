"""Clones filled before they run, and lazy clones: ``XenBackend.launch``.

A mixin of ``XenBackend``.  ``launch`` unpacks the image's vCPU state
(its xl settings, kind and HVM context) and chooses the fill
(``_fill_of``); a fork goes to ``ForkClones._launch_fork``, else:

- filled before it runs (``_launch``): ``xl create -p`` under the clone's
  name, every non-zero image page copied in and the rest zeroed
  (``_fill``, in the thread pool), tracked, its id and input written,
  its HVM context set, unpaused;
- lazy (``_launch_lazy``): ``xl create -p``, a paging ring, every page
  evicted but those the guest needs before it can fault, which are filled;
  then as above, and the pager fills the rest.

An image held by the memory-server domain is read through the grant cache
(``_readable``).
"""

import os

from twisted.internet import defer

from xenclone import workload
from xenclone.backends.xen import libxc, linux
from xenclone.backends.xen.batches import _batches
from xenclone.backends.xen.errors import xen_errors
from xenclone.backends.xen.filled import FilledRegion
from xenclone.backends.xen.grant_cache import GrantCache
from xenclone.backends.xen.image_state import LINUX, unpack_state
from xenclone.backends.xen.masters import ARCH
from xenclone.backends.xen.paging import PagedRegion
from xenclone.interfaces import PAGE_SIZE
from xenclone.runs import runs
from xenclone.wire import WireError


def _zero_runs(batch, zero):
    """``(index, count, is_zero)`` of the runs of consecutive pfns in
    ``batch`` that are all zero pages of the image, or all not."""
    out = []
    for i, n in runs(batch):
        start = i
        for j in range(i + 1, i + n + 1):
            if j == i + n or bool(zero[batch[j]]) != bool(zero[batch[start]]):
                out.append((start, j - start, bool(zero[batch[start]])))
                start = j
    return out



class Launches:
    """Filled and lazy launches; needs ``XenBackend``'s ``xc``, ``fm``,
    ``fill``, ``_grants``, ``grant_cache_pages``, ``_evictor``,
    ``setup_us_per_page``, ``log``, its domain records (``Domains``), its
    helpers (``_fill_of``, ``fault_source``, ``_thread``, ``_xenstore``,
    ``_create``, ``_undo``) and ``ForkClones._launch_fork``."""

    def _fill(self, domid, image):
        """Copy every non-zero image page into the clone and zero the rest:
        what libxl loaded into the fresh domain (kernel, ramdisk, start
        info) is not where the master has it.  Returns the pfns copied."""
        pfns = [p for p in range(image.npages) if not image.zero[p]]
        if image.origin is not None and set(pfns) - set(image.cached_pages()):
            raise WireError("not-here", "mirrored image %s lacks pages on this host (the "
                            "cache let them go before the fill): launch again"
                            % image.image_id)
        for batch in _batches(range(image.npages)):
            with self.fm.map(domid, batch) as m:
                view = memoryview(m.buffer)
                for i, n, zero in _zero_runs(batch, image.zero):
                    pfn, want = batch[i], n * PAGE_SIZE
                    dst = view[i * PAGE_SIZE:i * PAGE_SIZE + want]
                    if zero:
                        dst[:] = bytes(want)
                    elif image.pages is not None:       # granted by the server domain
                        dst[:] = image.pages.read(pfn, n)
                    else:
                        got = os.preadv(image.mem_fd, [dst], pfn * PAGE_SIZE)
                        if got != want:
                            raise WireError("short-image", "image ends at page %d"
                                            % (pfn + got // PAGE_SIZE))
        return pfns

    def _readable(self, image):
        """``image`` as this backend reads it: an image in the server
        domain gets its pages through the grant cache."""
        if image.server_domain is None or image.pages is not None:
            return image
        if self._grants is None:
            self._grants = GrantCache(libxc.GntTab(), self.grant_cache_pages)
        return self._grants.pages(image)

    def launch(self, image, clone):
        return xen_errors(self._launch(image, clone))

    @defer.inlineCallbacks
    def _launch(self, image, clone):
        if image.arch != ARCH:
            raise WireError("wrong-arch", "image is %s, the xen backend launches %s"
                            % (image.arch, ARCH))
        config, kind, record = unpack_state(image.vcpu_state)
        config = dict(config, name=clone.name)
        if kind == LINUX:
            # Kept for a look if it stops: xl would boot a rebooted clone
            # afresh from the kernel, as no clone of the image.
            config.update(on_reboot="preserve", on_crash="preserve")
        fill = self._fill_of(clone.fill or self.fill, image.image_id)   # refused before
        config = yield self._clone_config(image, clone, config, fill)     # anything is built
        if fill == "fork":
            region = yield self._launch_fork(image, clone, config, kind)
            return region
        try:
            region = yield self._launch_domain(image, clone, config, record, kind, fill)
        except Exception:
            self._drop_disks(clone.meta)
            raise
        return region

    @defer.inlineCallbacks
    def _launch_domain(self, image, clone, config, record, kind, fill):
        """A clone libxl makes (``xl create -p``), with its devices: filled
        before it runs, or lazily."""
        xs = (yield self._xenstore()) if kind == LINUX else None
        image = self._readable(image)
        if fill == "lazy":
            region = yield self._launch_lazy(image, clone, config, record, kind, xs)
            return region
        domid = yield self._create(config)
        try:
            filled = yield self._thread(self._fill, domid, image)
            dom = self._track(domid, clone.name, "clone", image.npages, config, clone.meta,
                              kind=kind)
            if kind == LINUX:
                yield self._tell_linux_clone(xs, domid, clone.clone_id)
            else:
                dom.mailbox.write(clone_id=clone.clone_id, input=clone.input, go=1)
            self.xc.hvm_setcontext(domid, record)
            if not clone.paused:
                self._unpause(dom)
        except Exception:
            yield self._undo(domid)
            raise
        return FilledRegion(domid, image.npages, image, self.fm, filled)

    @defer.inlineCallbacks
    def _launch_lazy(self, image, clone, config, record, kind, xs):
        """Paging ring, every page evicted but those the guest needs before
        it can fault (the project's guest's params page, kept mapped for its
        mailbox; a Linux kernel's per-CPU areas), HVM context, unpause: the
        pager fills the rest.  A page Xen itself replaces on a Linux resume
        (the shared info frame's gfn) comes back to the pager as a drop."""
        source = self.fault_source()
        # Refused before anything is built.
        resident = (linux.resume_pages(libxc.hvm_cpus(record), image.read_page, image.npages)
                    if kind == LINUX else [workload.PARAMS_PFN])
        domid = yield self._create(config)
        region = None
        try:
            ring = self.xc.paging_enable(domid)
            try:
                region = PagedRegion(self.xc, source.evtchn, ring, domid, image)
            except Exception:
                ring.close()
                raise
            dom = self._track(domid, clone.name, "clone", image.npages, config, clone.meta,
                              fill="lazy", kind=kind)
            dom.image = image
            if kind == LINUX:
                yield self._tell_linux_clone(xs, domid, clone.clone_id)
            else:
                dom.mailbox.load(image.read_page(workload.PARAMS_PFN))
                dom.mailbox.write(clone_id=clone.clone_id, input=clone.input, go=1)
            stay = set(resident)
            kept, us = yield self._thread(self._evictor.evict_all, domid,
                                          [p for p in range(image.npages) if p not in stay])
            self.setup_us_per_page.append(us)
            if kept:
                # Xen kept these (an extra reference): they get the image's
                # contents now, as a filled clone's would, and never fault.
                self.log.info("clone {name}: {n} pages not evicted (first errno {err})",
                              name=clone.name, n=len(kept), err=next(iter(kept.values())))
            fill = sorted(kept) + (resident if kind == LINUX else [])
            if fill:
                yield self._thread(self._fill_pages, domid, image, fill)
            region.keep(sorted(kept) + resident)
            self.xc.hvm_setcontext(domid, record)
            if not clone.paused:
                self._unpause(dom)
        except Exception:
            if region is not None:
                region.close()
            yield self._undo(domid)
            raise
        return region

    def _fill_pages(self, domid, image, pfns):
        for batch in _batches(pfns):
            with self.fm.map(domid, batch) as m:
                for i, pfn in enumerate(batch):
                    m.buffer[i * PAGE_SIZE:(i + 1) * PAGE_SIZE] = image.read_page(pfn)
