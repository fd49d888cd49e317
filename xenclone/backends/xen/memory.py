"""The Xen backend's view of its domains' memory, and what frees some.

A mixin of ``XenBackend``:

- reading: ``page_sums`` (foreign mappings in the thread pool, a lazy
  clone's evicted pages paged in by the attempt), ``page_kinds`` and
  ``scan`` (the pages Xen counts);
- freeing, where the domain pages (a lazy clone, or a fork on a Xen with
  MEM_PAGING): ``drop_clean`` (nominate + evict) and ``page_out``;
  ``lazy_stats`` are the figures of both;
- balloon targets (``IBalloonBackend``): a filled clone's frames are its
  own, only its guest can give some back.
"""

import errno
import time

from twisted.internet import defer

from xenclone.backends.xen import libxc, linux
from xenclone.backends.xen.batches import _batches
from xenclone.backends.xen.errors import xen_errors
from xenclone.backends.xen.image_state import LINUX
from xenclone.backends.xen.paging import PagingSource
from xenclone.interfaces import DomainState, PageState
from xenclone.pageout_retry import failure_code
from xenclone.wire import WireError

PAGE_IN_TIMEOUT = 60.0  # a read of evicted pages waits this long for the pager
PAGE_IN_RETRY = 0.02


def _spread(times):
    """Median and 90th percentile of fault service times (µs)."""
    times = sorted(times)

    def pct(p):
        return round(times[min(len(times) - 1, int(p * len(times)))], 1) if times else None

    return {"faults_served": len(times), "service_us_median": pct(0.5),
            "service_us_p90": pct(0.9)}



class Memory:
    """Memory figures, eviction and balloons; needs ``XenBackend``'s
    ``xc``, ``fm``, ``mem_paging``, ``_source``, ``_evictor``,
    ``setup_us_per_page``, ``log``, its domain records (``Domains``) and
    its helpers (``_thread``, ``_xenstore``)."""

    def _sums(self, domid, pfns):
        sums = []
        for batch in _batches(pfns):
            with self._map_paged(domid, batch) as m:
                sums += m.page_sums()
        return sums

    def _map_paged(self, domid, pfns):
        """Map pages of a domain for reading, in a thread: a lazy clone's
        evicted pages fail with ENOENT, and the attempt itself asks the
        pager for them (a paging request), so the map is tried again until
        the reactor has paged them in."""
        deadline = time.monotonic() + PAGE_IN_TIMEOUT
        while True:
            try:
                return self.fm.map(domid, pfns, writable=False)
            except libxc.XenError as e:
                paged = e.failures and all(err == errno.ENOENT for _, err in e.failures)
                if not paged or time.monotonic() > deadline:
                    raise
            time.sleep(PAGE_IN_RETRY)

    def _checked(self, domid, pfns):
        dom = self._get(domid)
        pfns = list(pfns)
        if not all(isinstance(p, int) and 0 <= p < dom.npages for p in pfns):
            raise WireError("out-of-range", "page numbers within 0..%d" % (dom.npages - 1))
        return pfns

    def page_sums(self, domid, pfns):
        d = defer.maybeDeferred(self._checked, domid, pfns)
        return d.addCallback(lambda pfns: self._thread(self._sums, domid, pfns))

    def page_kinds(self, domid, pfns):
        """Every page of a clone that Xen holds is a frame of its own."""
        return defer.maybeDeferred(lambda: [PageState.PRIVATE] * len(self._checked(domid, pfns)))

    def scan(self, domid):
        """The pages Xen counts for the domain: its own frames, and a
        fork's entries shared with its image domain."""
        def scan():
            dom = self._get(domid)
            info = self.xc.domain_info(domid)
            shared = info.shr_pages if dom.fill == "fork" else 0
            return {"shared": shared, "private": info.tot_pages, "zero": 0,
                    "absent": max(0, dom.npages - info.tot_pages - shared)}

        return xen_errors(defer.maybeDeferred(scan))

    def _pages(self, dom):
        """Whether the domain has a paging ring: a lazy clone, or a fork
        on a Xen that also pages."""
        return dom.fill == "lazy" or (dom.fill == "fork" and self.mem_paging)

    def _pageable(self, domid):
        dom = self._get(domid)
        if self._pages(dom):
            return dom
        raise WireError("unsupported", "domain %s was filled before it ran: no page of "
                        "it can be evicted (only lazy clones and forks page, on a Xen with "
                        "MEM_PAGING)" % dom.name)

    def drop_clean(self, domid, pfns):
        """Nominate + evict the pages that still hold the image's contents."""
        def drop():
            dom = self._pageable(domid)
            return self._thread(self._evictor.drop_clean, domid, list(pfns), dom.image)

        return defer.maybeDeferred(drop)

    def page_out(self, domid, pfns, slots, store_path, sync):
        def page_out():
            self._pageable(domid)
            d = self._thread(self._evictor.page_out, domid, list(pfns), list(slots),
                             store_path, sync)

            def failed(f):
                f.trap(OSError)
                raise WireError(failure_code(f.value), "page-out of domain %d to %s failed: %s"
                                % (domid, store_path, f.value))

            return d.addErrback(failed)

        return defer.maybeDeferred(page_out)

    def lazy_stats(self):
        """Lazy fill figures: nominate+evict at launch (µs a page, C) and
        fault service (µs a page, request to answer), over every clone kept
        and by clone."""
        by_clone = self._source.service_times() if isinstance(self._source, PagingSource) else {}
        setup = sorted(self.setup_us_per_page)
        return dict(_spread([t for times in by_clone.values() for t in times]),
                    by_clone={str(d): _spread(times) for d, times in by_clone.items()},
                    setup_us_per_page=round(setup[len(setup) // 2], 2) if setup else None,
                    evict_failed=self._evictor.evict_failed if self._evictor else 0)

    def balloonable(self):
        return xen_errors(self._balloonable())

    @defer.inlineCallbacks
    def _balloonable(self):
        out = {}
        for dom in list(self._domains.values()):
            if not (dom.kind == LINUX and dom.role == "clone" and not self._pages(dom)
                    and dom.state == DomainState.RUNNING):
                continue
            xs = yield self._xenstore()
            target = yield linux.balloon_target(xs, dom.domid)
            if target is not None:
                ceiling = dom.meta.get("balloon_ceiling_pages", dom.npages)
                out[dom.domid] = (dom.npages, ceiling, target)
        return out

    def balloon(self, domid, pages, operator=False):
        """Set the clone's balloon target; the operator's target is also
        the most that memory pressure's end gives back."""
        return xen_errors(self._balloon(domid, pages, operator))

    @defer.inlineCallbacks
    def _balloon(self, domid, pages, operator):
        dom = self._get(domid)
        if dom.role != "clone" or dom.kind != LINUX or dom.fill == "lazy":
            raise WireError("no-balloon", "%s has no balloon driver to give frames back: only "
                            "Linux clones filled before run are ballooned (a lazy clone's "
                            "pages are evicted)" % dom.name)
        if not 1 <= pages <= dom.npages:
            raise WireError("bad-argument", "a target of %s must be 1 to %d pages"
                            % (dom.name, dom.npages))
        xs = yield self._xenstore()
        yield linux.set_balloon_target(xs, domid, pages)
        if operator:
            dom.meta["balloon_ceiling_pages"] = pages
            self._write_record(dom)
        self.log.info("{name}: balloon target {pages} pages", name=dom.name, pages=pages)
