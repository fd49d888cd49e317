"""The seams of xenclone.

The pager, the ledger and the memory server meet the hypervisors only here.
The KVM backend (embedded) and the Xen backend implement the same
interfaces, so one pager pipeline serves both.  The ledger and the eviction
policies are plain Python with no I/O.
"""

from zope.interface import Attribute, Interface

PAGE_SIZE = 4096


class DomainState:
    """States a domain can be in; the same words on every backend."""

    RUNNING = "running"
    PAUSED = "paused"
    READY = "ready"                    # a master parked at its bless point
    DONE = "done"                      # the guest reported and halted
    WAITING_FOR_MEMSERVER = "waiting-for-memory-server"
    PAUSED_BY_TIMEOUT = "paused-by-timeout"
    CRASHED = "crashed"
    DESTROYED = "destroyed"


class FaultKind:
    """What the fast path did with one fault (matches the C enum)."""

    SERVED = 1      # loaded from the image; the clone already runs on
    HOLD = 2        # the page is not in the image: Python must load it
    NOCREDIT = 3    # no room granted: evict, then load
    FETCH = 4       # image page not cached on this host: fetch, then load
    ERROR = 5       # the load failed in C: Python retries it


class IBackend(Interface):
    """A hypervisor: creates, snapshots and clones domains."""

    name = Attribute("'kvm' or 'xen'")

    def capabilities():
        """Dict of what this host offers (lazy fill, sharing, eviction)."""

    def create_master(spec):
        """Start a master domain from a ``MasterSpec``; Deferred[dict]."""

    def capture(domid):
        """Pause a domain and capture it; Deferred[``Capture``]."""

    def launch(image, clone):
        """Start one clone of ``image`` (an ``OpenImage``).

        ``clone`` is a ``CloneSpec``.  Deferred[``IFaultRegion``] once the
        clone's memory is registered with its fault source; the vCPU runs
        at once unless the spec says paused (faults queue until served).
        """

    def pause(domid):
        """Deferred: the domain's vCPUs are stopped."""

    def unpause(domid):
        """Deferred: the domain runs."""

    def destroy(domid):
        """Deferred: the domain and its private memory are gone."""

    def page_sums(domid, pfns):
        """Deferred[list]: the 64-bit word sum of each guest page."""

    def drop_clean(domid, pfns, blocked=False):
        """Unmap unwritten pages; Deferred[list of pfns really dropped].

        A page the clone wrote is never dropped here: the backend checks
        with the kernel (or hypervisor) at the moment of the drop, with the
        vCPU stopped, or ``blocked`` in a fault the pager has not answered.
        """


class IFaultRegion(Interface):
    """One clone's guest memory as the pager sees it."""

    domid = Attribute("domain id")
    npages = Attribute("nominal pages")
    c_region = Attribute("the C fast path's region struct (cffi)")
    prefilled = Attribute("pages the backend mapped at launch, before the pager")

    def fileno():
        """The pollable handle (userfaultfd, or the event channel)."""

    def load_zero(pfn):
        """Map the zero page at ``pfn`` and wake the vCPU."""

    def load_shared(pfn):
        """Map the image's page at ``pfn`` (shared, copy on write).

        False when this host does not hold the page: fetch it first."""

    def load_copy(pfn, data):
        """Load private bytes at ``pfn`` (paged out earlier) and wake."""

    def forget(pfns):
        """These pages are about to leave the clone: fault on them again."""

    def remember(pfns):
        """These pages stayed after all."""

    def close():
        """The pager is done with this clone: release its fault handle."""


class IMemoryServer(Interface):
    """Holds immutable images and serves their pages."""

    def put(name, capture):
        """Store a ``Capture`` as a new image; Deferred[dict of its info]."""

    def open(image_id):
        """Deferred[``OpenImage``]: the local fast path (shared memory)."""

    def fetch(image_id, pfn, count):
        """Deferred[bytes]: pages over the socket protocol."""

    def discard(image_id):
        """Deferred: the image is gone from RAM and disk."""

    def images():
        """Deferred[list of image info dicts]."""


class IEvictionPolicy(Interface):
    """Chooses victims; mechanism-free, as xenpaging's policy.h."""

    def paged_in(key):
        """``key`` (clone, pfn) became resident."""

    def dropped(key):
        """``key`` left host memory."""

    def choose(count, evictable):
        """Up to ``count`` resident keys for which ``evictable(key)``."""


class ILedger(Interface):
    """Every page on the host, and the budget.  No I/O."""

    def add_clone(domid, image_id, npages):
        """Start accounting for a clone."""

    def remove_clone(domid):
        """The clone is gone; its pages are freed."""

    def loaded(domid, pfns):
        """These pages became resident in the clone."""

    def take_credits():
        """How many more pages the fast path may load now."""

    def victims(count):
        """Pages to evict to make room: list of (domid, pfn)."""

    def evicted(domid, pfns):
        """These pages left host memory."""

    def clone_stats(domid):
        """Per-clone figures (resident, faults, evicted...)."""

    def host_stats():
        """Host totals against the budget."""

    def set_journal(write):
        """Every state change is also passed to ``write(record)``."""

    def replay(records):
        """Rebuild state from journal records."""


class IFaultSource(Interface):
    """Delivers clone page faults to the pager, in batches.

    It may serve faults itself (a C fast path) while it holds credits, and
    reports those as ``FaultKind.SERVED``.
    """

    def start(deliver):
        """Begin; ``deliver(records)`` is called in the reactor thread with
        lists of (domid, FaultKind, pfn)."""

    def add(region):
        """Serve an ``IFaultRegion``."""

    def remove(domid):
        """Stop serving a clone; its pending faults are forgotten."""

    def set_credits(count):
        """How many pages the source may load without asking."""

    def stop():
        """Stop serving (the clones' faults wait, they are not lost)."""
