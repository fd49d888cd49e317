"""The ledger's seams: what its users may ask of it, and what it asks of its policy.

``ILedger`` is all the pager, the controller and the host policies use of
the ledger; ``IEvictionPolicy`` is the order it chooses victims in.  Both
are plain Python with no I/O.
"""

from zope.interface import Attribute, Interface


class IEvictionPolicy(Interface):
    """Chooses victims; mechanism-free, as xenpaging's policy.h."""

    def paged_in(keys):
        """``keys`` (ints, ``domid << 32 | pfn``) became resident, in this
        order: faults."""

    def added(keys):
        """``keys``, none resident before, became resident with no fault of
        theirs (mapped ahead: fault-around, a working set)."""

    def dropped(keys):
        """``keys`` left host memory."""

    def choose(count, evictable):
        """Up to ``count`` resident keys for which ``evictable(key)``."""


class ILedger(Interface):
    """Every page on the host, and the budget.  No I/O.

    Its invariant: the only copy of a written page is never dropped.  This
    is all the pager, the controller and the host policies use of it; the
    accounts behind it are its own."""

    budget_pages = Attribute("the host budget, pages (``set_budget`` changes it)")
    allocated = Attribute("pages the host holds: cached image pages plus private pages")
    credit_batch = Attribute("most pages handed to the fast path at a time")
    policy_name = Attribute("the eviction policy's name")

    # -- images and clones

    def add_image(image_id, npages, cached):
        """An image whose ``cached`` pages this host holds in RAM."""

    def hold_image(image_id):
        """The hypervisor holds the image (an image domain): its cache here
        is outside the budget and no eviction's to drop."""

    def remove_image(image_id):
        """The image is gone (it has no clones left)."""

    def has_image(image_id):
        """Whether the image is accounted."""

    def add_clone(domid, image_id, npages):
        """Start accounting for a clone."""

    def remove_clone(domid):
        """The clone is gone; its pages are freed."""

    def has_clone(domid):
        """Whether the clone is accounted."""

    def clones():
        """The domids accounted."""

    def image_of(domid):
        """The clone's image id."""

    def npages(domid):
        """The clone's nominal pages."""

    def resident(domid):
        """The clone's resident pages: shared plus private."""

    def fill_goal(domid):
        """The resident pages a hoard fills the clone to: its target, or all."""

    def shares(domid):
        """share.onfetch: whether the clone maps image pages, or copies them."""

    def set_knobs(domid, target=None, limit=None, classes=None, share=None):
        """The operator's settings of a clone (``LedgerError`` if out of range)."""

    def set_cap(domid, pages):
        """The host's burst policy caps the clone (None: no cap)."""

    def set_budget(pages):
        """A new host budget."""

    # -- what the kernel (or hypervisor) did

    def mapped_shared(domid, pfns, how="fault"):
        """These image pages are mapped into the clone, shared (``how``:
        fault, around or prefetch)."""

    def mapped_zero(domid, pfns, how="fault"):
        """These pages are mapped to the zero page."""

    def written(domid, pfns):
        """Copy on write: the clone holds the only copy of these pages."""

    def unwritten(domid, pfns):
        """Pages taken as written were dropped unwritten (the write never landed)."""

    def dropped_clean(domid, pfns, cls):
        """Unwritten pages left the clone (they can be fetched again)."""

    def cached(image_id, pfns):
        """These image pages are in this host's cache now."""

    def uncached(image_id, pfns):
        """The cache let these image pages go (no clone maps them)."""

    def take_slots(domid, count):
        """``count`` free slots of the clone's page-out store."""

    def free_slots(domid, slots):
        """Slots a failed page-out took: free again."""

    def reserve_slots(domid, slots):
        """After a restart: the store's used slots, not to be given out."""

    def paged_out(domid, pfns, slots, crcs):
        """Private pages went to the clone's page-out store."""

    def paged_in(domid, pfn):
        """A paged-out page is back."""

    def pause_pageout(domid, why):
        """Page-out stops for a while; the eviction classes left meanwhile."""

    def resume_pageout(domid, left):
        """Page-out may go on, unless the classes changed from ``left``."""

    def pageout_works(domid, paused_why):
        """A page-out worked: a pause's reason (starting ``paused_why``) goes."""

    def pageout_failed(domid, why):
        """The store failed: no more page-out for this clone; ``why`` is shown."""

    # -- pages

    def kind(domid, pfn):
        """The page's kind (shared, private, zero, evicted, paged-out, None)."""

    def kinds(domid):
        """Every page's kind, read only (``get(pfn)``)."""

    def slot(domid, pfn):
        """(slot, crc) of a paged-out page."""

    def mappers(image_id, pfn):
        """The clones that map an image page shared."""

    def mapped(image_id, pfn):
        """Whether some clone maps the image page."""

    def is_cached(image_id, pfn):
        """Whether this host's cache holds the image page."""

    # -- room and victims

    def host_room():
        """Pages the host may still take."""

    def clone_room(domid):
        """Pages the clone may still map."""

    def take_credits():
        """(host pages, {domid: pages}) the fast path may use now."""

    def clone_victims(domid, count, exclude=()):
        """Pages to evict from one clone, by policy; none in ``exclude``."""

    def host_victims(count, exclude=()):
        """Pages whose eviction frees host memory, by policy."""

    def unmapped_cache(count, exclude=()):
        """Cached image pages no clone maps: free to drop at once."""

    # -- figures and journal

    def clone_stats(domid):
        """Per-clone figures (shared, private, zero, paged out...)."""

    def host_stats():
        """Host totals against the budget."""

    def set_journal(write):
        """Every state change is also passed to ``write(record)``."""

    def replay(records):
        """Rebuild state from journal records."""
