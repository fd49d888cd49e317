"""Lazy clones on a Xen with MEM_PAGING: guest faults through the pager.

Every page of a lazy clone is evicted before it first runs.  A guest touch
of an evicted page pauses the vCPU and puts a paging request on the clone's
vm_event ring; the ring's event channel is a reader in the reactor.  The
request becomes a fault record for the pager, which decides as on KVM (zero
page, cached, fetch, room, evict) and loads the page through the region
(``xc_mem_paging_load``); loading answers every request that waits on the
page, which resumes the vCPUs.

Each page loaded is a frame of the clone's own; an image page loaded is
accounted as the image's (clean) until an eviction finds it written: Xen
cannot write-protect it for us, so the drop compares (``evict.py``).
Evicted pages are never foreign-mapped here: that blocks until they are
back, and this runs in the reactor.
"""

import errno
import time
from collections import OrderedDict, defaultdict, deque

from twisted.logger import Logger
from zope.interface import implementer
from twisted.internet.interfaces import IReadDescriptor

from xenclone.backends.xen import libxc
from xenclone.interfaces import (
    PAGE_SIZE, FaultKind, IFaultCounters, IFaultRegion, IFaultSource, IForkRegion, PageState)

ZERO_PAGE = bytes(PAGE_SIZE)
SAMPLES = 100000        # fault service times kept per clone (µs)
CLONES_KEPT = 16        # clones whose times are kept, the latest


@implementer(IFaultRegion, IFaultCounters)
class PagedRegion:
    """One lazy clone: its paging ring, bound event channel and page states."""

    fill_mode = "lazy"
    log = Logger()

    def __init__(self, xc, evtchn, ring, domid, image):
        self.domid = domid
        self.npages = image.npages
        self._image = image
        # Pages Xen kept stay out of the ledger: they never fault and are
        # never chosen to be evicted.
        self.prefilled = []
        self._xc = xc
        self._evtchn = evtchn
        self._ring = ring
        self.port = evtchn.bind_interdomain(domid, ring.port)
        self._state = bytearray(self.npages)
        self._pending = defaultdict(list)   # pfn -> requests waiting for it
        self._since = {}                    # pfn -> monotonic ns of its first request
        self.deliver = None                 # the source's: redeliver a fault
        self.service_us = deque()           # the source's, once added
        self._counts = {"requests": 0, "faults": 0, "answered_present": 0,
                        "load_kept": 0, "dropped_by_guest": 0, "touched_while_evicted": 0}

    def fileno(self):
        return self._evtchn.fileno()

    @property
    def ports(self):
        """The event channel ports whose events are this clone's."""
        return (self.port,)

    def counters(self):
        """The paging requests this clone made, as the KVM region's
        ``counters()`` reports its faults; the pages whose requests wait
        for the pager, and where the ring stands (a vCPU that waits on
        nothing the pager holds shows there)."""
        return dict(self._counts, pending_pages=len(self._pending), ring=self._ring.indices())

    def keep(self, pfns):
        """Pages Xen kept at launch: they are the clone's already."""
        for pfn in pfns:
            self._state[pfn] = PageState.PRIVATE

    # -- requests off the ring

    def take(self):
        """Every request on the ring as fault records for the pager; those
        the pager need not see are answered at once."""
        records, answer = [], []
        while True:
            reqs = self._ring.take()
            if not reqs:
                break
            for req in reqs:
                self._counts["requests"] += 1
                pfn = req.gfn
                if req.dropped or pfn >= self.npages:
                    # A page the guest gave back, or not RAM we manage:
                    # nothing to load, but the vCPU waits for the answer.
                    self._counts["dropped_by_guest"] += 1
                    answer.append(req)
                    continue
                if req.evict_fails:
                    # Touched while an eviction holds it, before its evict:
                    # the page is still there, and the answer gives it back
                    # to the guest now.  Waiting for the eviction's end
                    # instead would deadlock: its foreign map of the page
                    # waits for this answer.  Its evict fails; the eviction
                    # keeps it.
                    self._counts["touched_while_evicted"] += 1
                    answer.append(req)
                    continue
                first = not self._pending[pfn]
                self._pending[pfn].append(req)
                if not first:
                    continue        # Xen asks again for one page: answered together
                self._since[pfn] = time.monotonic_ns()
                kind = self._fault_kind(pfn)
                if kind is None:
                    self._counts["answered_present"] += 1
                    self._answer(pfn)
                else:
                    self._counts["faults"] += 1
                    records.append((self.domid, kind, pfn))
        if answer:
            self._respond(answer)
        return records

    def _fault_kind(self, pfn):
        state = self._state[pfn]
        if state == PageState.ABSENT:
            return FaultKind.MISSING    # no fast path on Xen: the pager decides
        if state == PageState.HOLD:
            return FaultKind.HOLD       # paged out, or being evicted
        return None                     # Xen still has it: a touch during a nominate

    def _respond(self, reqs):
        self._ring.respond(reqs)
        self._evtchn.notify(self.port)

    def _answer(self, pfn):
        reqs = self._pending.pop(pfn, None)
        if reqs:
            self._respond(reqs)
            t = self._since.pop(pfn, None)
            if t is not None:
                self.service_us.append((time.monotonic_ns() - t) / 1000)

    def _redeliver(self, pfns):
        """Faults that waited on pages whose state changed: they go to the
        pager again as what they are now (as a woken KVM fault re-faults)."""
        records = []
        for pfn in pfns:
            if not self._pending.get(pfn):
                continue
            kind = self._fault_kind(pfn)
            if kind is None:
                self._answer(pfn)
            else:
                records.append((self.domid, kind, pfn))
        if records and self.deliver is not None:
            self.deliver(records)

    # -- loads

    def _load(self, pfn, data, state):
        try:
            self._xc.paging_load(self.domid, pfn, data)
        except libxc.XenError as e:
            if e.errno != errno.ENOENT:
                raise
            # Not paged out: a nominated page the guest touched before its
            # evict keeps its frame and contents; resuming is all it needs.
            self._counts["load_kept"] += 1
        self._state[pfn] = state
        self._answer(pfn)

    def load_zero(self, pfn):
        self._load(pfn, ZERO_PAGE, PageState.ZERO)

    def load_shared(self, pfn):
        """The image's page from this host's copy; False if it has none."""
        if not self._image.has_page(pfn):
            return False
        self._load(pfn, self._image.read_page(pfn), PageState.SHARED)
        return True

    def load_copy(self, pfn, data):
        self._load(pfn, bytes(data), PageState.PRIVATE)

    def unprotect(self, pfn):
        raise NotImplementedError("Xen write-protects no loaded page of a lazy clone")

    def share(self, on):
        """Nothing to switch: every loaded page is a frame of the clone's;
        the pager loads image pages as copies when sharing is off."""

    # -- states

    def hold(self, pfns):
        before = [self._state[pfn] for pfn in pfns]
        for pfn in pfns:
            self._state[pfn] = PageState.HOLD
        return before

    def release(self, pfns):
        for pfn in pfns:
            self._state[pfn] = PageState.ABSENT
        self._redeliver(pfns)

    def remember(self, pfns, state):
        for pfn in pfns:
            self._state[pfn] = state
        self._redeliver(pfns)

    def wake_all(self):
        self._redeliver(list(self._pending))

    def states(self):
        return memoryview(self._state).toreadonly()

    def close(self):
        """Unbind and disable the ring (its mapping alone would keep a
        destroyed domain dying)."""
        try:
            self._evtchn.unbind(self.port)
        except libxc.XenError as e:
            self.log.debug("clone {domid}: unbind: {why}", domid=self.domid, why=e)
        try:
            self._ring.close()
        except libxc.XenError as e:
            self.log.debug("clone {domid}: ring disable: {why}", domid=self.domid, why=e)


@implementer(IReadDescriptor, IFaultSource)
class PagingSource:
    """Every lazy clone's paging ring, served in the reactor through one
    event channel handle, and governed forks' (``fork_region.py``) too.
    There is no fast path: every fault is the pager's; credits cap forks."""

    log = Logger()

    def __init__(self, reactor, evtchn):
        self.reactor = reactor
        self.evtchn = evtchn
        self._regions = {}      # domid -> PagedRegion
        self._ports = {}        # local port -> domid
        self._deliver = None
        self._service_us = OrderedDict()    # domid -> its times, gone clones' too

    def logPrefix(self):
        return "xen-paging"

    def fileno(self):
        return self.evtchn.fileno()

    def connectionLost(self, reason):
        self.log.error("paging event channel lost: {why}", why=reason.getErrorMessage())

    def start(self, deliver):
        self._deliver = deliver
        self.reactor.addReader(self)

    def doRead(self):
        port = self.evtchn.pending()
        self.evtchn.unmask(port)
        domid = self._ports.get(port)
        if domid is not None and domid in self._regions:
            self._serve(self._regions[domid])
        # else: a clone not added yet; its requests wait on its ring

    def _serve(self, region):
        try:
            records = region.take()
        except libxc.XenError as e:
            self.log.error("clone {domid}: paging ring: {why}", domid=region.domid, why=e)
            return
        if records:
            self._deliver(records)

    def add(self, region):
        if not isinstance(region, PagedRegion):
            return      # filled before it ran: it never faults
        self._regions[region.domid] = region
        for port in region.ports:
            self._ports[port] = region.domid
        region.deliver = lambda records: self.reactor.callLater(0, self._deliver, records)
        region.service_us = self._service_us[region.domid] = deque(maxlen=SAMPLES)
        while len(self._service_us) > CLONES_KEPT:
            self._service_us.popitem(last=False)
        self._serve(region)      # what came before it was added

    def remove(self, domid):
        region = self._regions.pop(domid, None)
        if region is not None:
            for port in region.ports:
                self._ports.pop(port, None)
            region.deliver = None
            region.close()

    def set_credits(self, host, clones):
        """Lazy clones fault on every page, so credits mean nothing to
        them; a governed fork's frames are capped at its credit (its
        max_pages), past which it asks the pager for room."""
        for domid, region in self._regions.items():
            if IForkRegion.providedBy(region):
                region.credit(min(host, clones.get(domid, host)))

    def exclusively(self, fn):
        return fn()      # faults are served in the reactor, never meanwhile

    def stop(self):
        self.reactor.removeReader(self)

    def service_times(self):
        """Fault service times (µs), request to answer, by clone (the
        latest CLONES_KEPT clones served, gone ones too)."""
        return {domid: list(times) for domid, times in self._service_us.items()}
