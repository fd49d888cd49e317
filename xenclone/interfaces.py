"""The seams of xenclone.

The pager, the ledger and the memory server meet the hypervisors only here.
The KVM backend (embedded) and the Xen backend implement the same
interfaces, so one pager pipeline serves both; what only some offer is a
capability interface of its own (fault-around, prefetch, fork, balloon...),
asked with ``providedBy``.  The ledger and the eviction policies are plain
Python with no I/O: their seams are in ``ledger_interfaces``.
"""

from zope.interface import Attribute, Interface

PAGE_SIZE = 4096
# Backends that number domains themselves (Xen) get handles from the
# controller above any id they give (Xen's are below 0x7FF0) until the real
# id is adopted.
FIRST_HANDLE = 0x10000


class DomainState:
    """States a domain can be in; the same words on every backend."""

    RUNNING = "running"
    PAUSED = "paused"
    READY = "ready"                    # a master parked at its bless point
    DONE = "done"                      # the guest reported and halted
    WAITING_FOR_MEMSERVER = "waiting-for-memory-server"
    PAUSED_BY_TIMEOUT = "paused-by-timeout"
    IMAGE_GONE = "paused-image-gone"   # its image's memory-server domain was destroyed
    CRASHED = "crashed"
    DESTROYED = "destroyed"


class FaultKind:
    """What a fault source did with one fault, in the pager's words.

    Each backend maps its own events to these: the KVM fast path's C enum
    has the same numbers (its no-credit faults are MISSING and WRITE); Xen's
    paging ring gives MISSING for an absent page, HOLD for a held one."""

    SERVED = 1          # mapped the image's page (shared, write-protected)
    HOLD = 2            # the page is held (evicting, paged out): Python decides
    MISSING = 3         # the page is missing and was not mapped: the pager decides
                        # (room in the clone, zero, shared, fetched or copied)
    FETCH = 4           # image page not cached on this host: fetch, then load
    ERROR = 5           # the load failed in C: Python retries it
    ZERO = 6            # mapped the zero page (write-protected); costs nothing
    WRITTEN = 7         # a write made the page private (copy on write)
    WRITE = 8           # a write needs a host page: the pager decides
    COPY = 9            # the clone does not share: Python loads a private copy
    AROUND = 10         # mapped image pages around a fault it served (fault-around);
                        # its record's pfn is a range of pages
    AROUND_ZERO = 11    # ... or zero pages there (a range too); costs nothing

    RUNS = (AROUND, AROUND_ZERO)    # kinds whose record's pfn is a range


class PageState:
    """Per-page state shared by the pager and the C fast path."""

    ABSENT = 0
    SHARED = 1      # the image's page, mapped read-only
    HOLD = 2        # faults go to Python: being evicted, or paged out
    PRIVATE = 3     # written: the clone's own copy, the only one
    ZERO = 4        # the zero page, mapped read-only


class IBackend(Interface):
    """A hypervisor: creates, snapshots and clones domains."""

    name = Attribute("'kvm' or 'xen'")
    fill_mode = Attribute("how clones get memory: 'lazy' (on fault), 'fork' (the hypervisor "
                          "fills them from an image domain) or 'fill-before-run'")

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
        ``clone.fill`` (lazy, fork, before-run, auto; None = the backend's
        setting) is refused, before anything is built, where not offered.
        """

    def domains():
        """Deferred[list of dict]: every domain this backend runs, with
        domid, name, role, state and the ``meta`` the daemon gave it."""

    def reattach(domid, image):
        """Deferred[(IFaultRegion, kinds)]: a running clone's region again,
        for a daemon that restarted (its state map empty until the pager
        rebuilds it), and each page's ``PageState`` as the kernel shows it;
        a page the clone may write is private."""

    def pause(domid):
        """Deferred: the domain's vCPUs are stopped."""

    def unpause(domid):
        """Deferred: the domain runs."""

    def destroy(domid):
        """Deferred: the domain and its private memory are gone."""

    def page_kinds(domid, pfns):
        """Deferred[list]: the kernel's (or hypervisor's) ``PageState`` of
        each page: absent, shared (the image's), private or zero."""

    def page_sums(domid, pfns):
        """Deferred[list]: the 64-bit word sum of each guest page."""

    def drop_clean(domid, pfns):
        """Unmap unwritten pages; Deferred[list of pfns really dropped].

        The pager holds the pages first (``IFaultRegion.hold``), so a write
        cannot make one private during the drop; the backend still drops
        only pages the kernel (or hypervisor) shows as clean image pages.
        A backend that learns of writes only here (Xen) names the pages it
        kept for that in the list's ``written`` attribute.
        """

    def page_out(domid, pfns, slots, store_path, sync):
        """Write held private pages to slots of a page-out store, then drop
        them; Deferred[list of CRC32s, one a page: None for a page that
        stayed, touched meanwhile where the backend cannot hold it].
        Nothing is dropped that was not written (and flushed out of the
        page cache, fsync'd if ``sync``)."""

    def scan(domid):
        """Deferred[dict]: the kernel's count of the clone's pages by kind:
        shared, private, zero, absent."""


class ILinuxBackend(Interface):
    """A backend (Xen) that also runs Linux masters: ``create_master`` of
    a ``MasterSpec`` with ``boot`` (a kernel), and domains another
    toolstack made (a Linux PVH domU of xl's) taken over to be blessed."""

    def adopt(ref):
        """Make the domain (a name or an id of the hypervisor's) a master
        of this backend; Deferred[dict] as ``domains()`` lists it."""

    def release(domid):
        """Stop managing an adopted domain, which runs on; Deferred."""

    def identity(domid, wait=0):
        """A Linux clone's identity handshake with its guest agent:
        Deferred[dict] ``identity`` (renewed, failed or not renewed),
        ``detail`` (what the agent did), ``seconds``; waits up to ``wait``
        seconds for an answer.  Its ``destroy(domid, keep_disks=True)``
        keeps a clone's disk overlays."""


class IForkBackend(Interface):
    """A backend (Xen with MEM_SHARING) whose clones can be forks of an
    image domain: a paused domain per image, made at bless, that the
    hypervisor fills forks from on their first touch."""

    def prepare_image(image):
        """Bless's last step: the image domain of ``image`` (an
        ``OpenImage``), where the hypervisor forks; Deferred."""

    def drop_image(image_id):
        """The image is discarded (its clones are gone): its image domain
        goes too; Deferred."""

    def reset(domid, region, image):
        """Return a fork clone to its image's state (its own pages
        dropped, what it paged out too); ``region``: its region, which the
        pager has let go.  Deferred[(dict of the clone, its new region)].
        A master is refused."""

    def image_domains():
        """{image id: {domid, name, pages, shared_pages}}: each image
        domain with its memory as the hypervisor counts it."""

    def frames(domid):
        """Deferred[dict]: a fork clone's memory as the hypervisor counts
        it: ``own`` frames (written, or copied), entries ``shared`` with
        its image domain, pages ``paged_out``, and its ``max`` frames."""


class IBalloonBackend(Interface):
    """A backend whose clones' frames only the guest can give back (Xen
    without MEM_PAGING): a guest's balloon driver follows its target."""

    def balloonable():
        """{domid: (nominal pages, target pages)} of the running clones
        that can balloon and whose pages the pager cannot evict."""

    def balloon(domid, pages):
        """Ask the clone to hold ``pages`` (its balloon target); Deferred.
        Fails ``no-balloon`` for a guest without a balloon driver."""


class IFaultRegion(Interface):
    """One clone's guest memory as the pager sees it."""

    domid = Attribute("domain id")
    npages = Attribute("nominal pages")
    prefilled = Attribute("pages the backend mapped at launch, before the pager")
    fill_mode = Attribute("how this clone gets its memory: 'lazy', 'fork' or 'fill-before-run'")

    def fileno():
        """The pollable handle (userfaultfd, or the event channel)."""

    def load_zero(pfn):
        """Map the zero page at ``pfn``, write-protected, and wake."""

    def load_shared(pfn):
        """Map the image's page at ``pfn``, write-protected, and wake.

        False when this host does not hold the page: fetch it first."""

    def unprotect(pfn):
        """Let a held write to ``pfn`` proceed: the page becomes private."""

    def share(on):
        """Whether the fast path maps image pages shared (``share.onfetch``);
        off, every image page fault comes to Python for a private copy."""

    def load_copy(pfn, data):
        """Load private bytes at ``pfn`` (paged out earlier) and wake."""

    def hold(pfns):
        """Faults on these pages come to Python (kind HOLD) from now on;
        returns the states the pages had."""

    def wake_all():
        """Wake every thread waiting on a fault here: after a restart, a
        fault whose message the dead daemon had read would wait forever;
        woken, it faults again (or finds its page)."""

    def release(pfns):
        """These pages left the clone: mark them absent and wake whoever
        waits on them, to fault again through the fast path."""

    def remember(pfns, state):
        """These pages stayed (a drop refused them): back to ``state``."""

    def states():
        """A read-only view of every page's ``PageState``."""

    def close():
        """The pager is done with this clone: release its fault handle."""


class IForkRegion(IFaultRegion):
    """A fork whose memory the pager governs though the hypervisor fills
    it: its own frames are listed, capped by credit, and a write that finds
    no frame waits for room as a WRITE fault (``unprotect``
    answers it; the request stands until then, so it is never stale)."""

    def owned():
        """The guest pages the fork owns now, as the hypervisor lists them."""

    def credit(pages):
        """The fork may own ``pages`` more frames than it does now."""


class IFaultCounters(Interface):
    """A region whose fault source counts the faults the guest saw."""

    def counters():
        """Dict of the source's counts; ``faults``: faults the guest saw."""


class INativeFaultRegion(Interface):
    """A region whose faults a C fast path serves (KVM's userfaultfd)."""

    c_region = Attribute("the C fast path's region struct (cffi)")


class IFaultAroundRegion(Interface):
    """A region whose fast path maps pages around a fault it serves."""

    def fault_around(max_pages):
        """The largest window mapped around a fault (0: none)."""


class IPrefetchRegion(Interface):
    """A region that can map a list of pages ahead of their faults."""

    def prefetch(pfns):
        """Map these pages, in order, as the fast path would (runs in a
        thread); (shared pfns, zero pfns) mapped."""


class IUnwatchedWrites(Interface):
    """A backend that cannot write-protect clone pages (Xen): it finds a
    clone's writes only when it drops pages.  ``drop_clean``'s list names
    the pages it kept for that in its ``written`` attribute."""


class IHypervisorMemory(Interface):
    """A backend whose clones' frames the hypervisor gives (Xen), not the
    host kernel: it has its own free memory and its own fault source."""

    def free_pages():
        """The hypervisor's free pages: what clones may take."""

    def fault_source():
        """Its ``IFaultSource`` (its paging rings)."""

    def close():
        """Let go of its handles (the daemon stops; the domains run on)."""


class IDomainNumbering(Interface):
    """A backend that numbers domains itself (Xen): the controller gives
    launches handles from ``FIRST_HANDLE`` until it adopts the real id."""


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

    def domain(action, force=False):
        """Deferred[dict]: the memory-server domain's status after
        ``action`` (status, start, or stop: ``force`` drops its images)."""


class IImageStore(Interface):
    """The memory server's images, on disk and in RAM: in dom0 memfds
    (``memserver/store.py``) or, on Xen, in a memory-server domain
    (``backends/xen/server_domain_store.py``).  Calls are synchronous;
    a bad request raises ``WireError``."""

    dir = Attribute("The directory that holds the images.")

    def put(name, capture):
        """Copy a ``Capture`` into a new image; its info."""

    def mirror(name, info, vcpu_state, zero, server, crcs):
        """Record a remote image (as ``describe`` gave it) of ``server``."""

    def load_all():
        """Open every image on disk; [(name, why)] of those that failed."""

    def images():
        """[info dict] of every image, by name."""

    def info(image_id):
        """The image's info dict."""

    def describe(image_id):
        """(info with its vCPU state, zero map): what a mirror needs."""

    def memfd(image_id):
        """The image's memfd, the store's own (open until discarded)."""

    def zero_map(image_id):
        """bytes, one per page: 1 where the page is all zeros."""

    def vcpu_state(image_id):
        """The image's vCPU state, bytes."""

    def fetch(image_id, pfn, count, generation=None):
        """bytes of ``count`` pages from ``pfn``, checked against their CRCs."""

    def crcs(image_id, first, count):
        """Part of the image's CRC table, bytes."""

    def discard(image_id, close):
        """Forget the image and delete it; ``close`` (``os.close`` unless
        given) receives its memfd."""


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

    def set_credits(host, clones):
        """How many host pages the source may allocate (copy on write)
        without asking, and per clone ({domid: n}) how many more pages it
        may map."""

    def exclusively(fn):
        """Call ``fn()`` while no fault is being served; its result."""

    def stop():
        """Stop serving (the clones' faults wait, they are not lost)."""
