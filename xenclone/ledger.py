"""The page-sharing ledger: every clone page on the host, against a budget.

Plain Python, no I/O.  The pager tells it what the kernel (or hypervisor)
did; it answers how much room there is and which pages to evict.

Two figures matter, as in GridCentric's VMS:

- a clone's **resident** pages: image pages mapped into it (shared) plus its
  private copies.  Its ``limit`` caps them, its ``target`` is where eviction
  brings it down to.  Zero pages are mapped from the kernel's one zero page
  and cost nothing.
- the host's **allocated** pages: the image pages this host caches (each
  once, however many clones map it) plus every clone's private pages.  The
  host budget caps these.  Dropping a page a clone shares frees nothing
  until no clone maps it and the cache lets it go.

The invariant: the only copy of a written page is never dropped.  A private
page leaves memory only as ``paged_out``, after the backend wrote it to the
clone's page-out store.

A page costs a byte of kind per clone, two bytes of mapper count per image
and 24 bytes in the policy's arrays: a host of 8 clones of 1 GiB that map
all their pages keeps 2 M pages here.
"""

from zope.interface import implementer

from xenclone.ledger_interfaces import ILedger
from xenclone.ledger_room import Room
from xenclone.ledger_accounts import (  # noqa: F401 (the kinds and classes, as ledger.X)
    _CODE, _SHARED, CLASSES, DROP_CLEAN, DROP_SHARED, EVICTED, KINDS, PAGE_OUT, PAGED_OUT,
    PRIVATE, SHARED, ZERO, CloneAccount, ImageAccount, key, unkey)


class LedgerError(Exception):
    pass


@implementer(ILedger)
class Ledger(Room):
    def __init__(self, budget_pages, policy, credit_batch=256):
        if budget_pages <= 0:
            raise LedgerError("the host budget must be positive")
        self.budget_pages = budget_pages
        self.credit_batch = credit_batch
        self.policy = policy
        self.images = {}
        self._clones = {}
        self._private = 0
        self._cached = 0
        self._evictions_gone = dict.fromkeys(CLASSES, 0)   # of clones since destroyed
        self.peak = 0
        self._journal = None

    # -- journal: every change is a record; replay rebuilds the state

    def set_journal(self, write):
        self._journal = write

    def _log(self, *record):
        if self._journal is not None:
            self._journal(record)

    def replay(self, records):
        journal, self._journal = self._journal, None
        try:
            for op, *args in records:
                getattr(self, _REPLAYABLE[op])(*args)
        finally:
            self._journal = journal

    # -- images and clones

    def add_image(self, image_id, npages, cached):
        if image_id in self.images:
            return
        self.images[image_id] = ImageAccount(npages, set(cached))
        self._cached += len(cached)
        self._log("image", image_id, npages, sorted(cached))
        self._peak()

    def hold_image(self, image_id):
        """The hypervisor holds the image's pages (its image domain, which
        fork clones share): this host's cache of it is dom0's memory, not
        the budget's (the hypervisor's), and dropping it frees nothing
        there."""
        img = self.images[image_id]
        if not img.held:
            img.held = True
            self._cached -= len(img.cached)
            self._log("held", image_id)

    def remove_image(self, image_id):
        if any(c.image_id == image_id for c in self._clones.values()):
            raise LedgerError("image %s still has clones" % image_id)
        img = self.images.pop(image_id, None)
        if img is None:
            return
        if not img.held:
            self._cached -= len(img.cached)
        self._log("unimage", image_id)

    def add_clone(self, domid, image_id, npages):
        if domid in self._clones:
            raise LedgerError("clone %d is already accounted" % domid)
        if image_id not in self.images:
            raise LedgerError("clone %d: unknown image %s" % (domid, image_id))
        self._clones[domid] = self.images[image_id].clones[domid] = CloneAccount(image_id, npages)
        self._log("add", domid, image_id, npages)

    def remove_clone(self, domid):
        acct = self._clones.pop(domid, None)
        if acct is None:
            return
        img = self.images[acct.image_id]
        del img.clones[domid]
        codes, mapcount, private = acct.kind.codes, img.mapcount, _CODE[PRIVATE]
        resident = []
        for pfn, code in enumerate(codes):
            if code == _SHARED:
                mapcount[pfn] -= 1
                resident.append(pfn)
            elif code == private:
                resident.append(pfn)
        base = key(domid, 0)
        self.policy.dropped([base | pfn for pfn in resident])
        self._private -= acct.counts[PRIVATE]
        for cls, n in acct.evictions.items():
            self._evictions_gone[cls] += n
        self._log("remove", domid)

    def has_image(self, image_id):
        return image_id in self.images

    def has_clone(self, domid):
        return domid in self._clones

    def clones(self):
        return list(self._clones)

    def image_of(self, domid):
        return self._clones[domid].image_id

    def npages(self, domid):
        return self._clones[domid].npages

    def resident(self, domid):
        return self._clones[domid].resident

    def fill_goal(self, domid):
        """The resident pages a hoard fills the clone to: its target, or all."""
        acct = self._clones[domid]
        return acct.target if acct.target is not None else acct.npages

    def shares(self, domid):
        """share.onfetch: whether the clone maps image pages, or copies them."""
        return self._clones[domid].share

    def kinds(self, domid):
        """The clone's ``Kinds`` (read only)."""
        return self._clones[domid].kind

    @property
    def policy_name(self):
        return self.policy.name

    def set_budget(self, pages):
        self.budget_pages = pages

    def set_cap(self, domid, pages):
        """The host's burst policy caps the clone (beside its own limit)."""
        acct = self._clones.get(domid)
        if acct is not None and acct.cap != pages:
            acct.cap = pages
            self._log("cap", domid, pages)

    def set_knobs(self, domid, target=None, limit=None, classes=None, share=None):
        acct = self._clones[domid]
        for name, value in (("target", target), ("limit", limit)):
            if value is not None:
                if value < 0 or value > acct.npages:
                    raise LedgerError("%s must be 0..%d pages" % (name, acct.npages))
                setattr(acct, name, value or None)
        if classes is not None:
            unknown = set(classes) - set(CLASSES)
            if unknown:
                raise LedgerError("unknown eviction class(es): %s" % ", ".join(sorted(unknown)))
            acct.classes = set(classes)
        if share is not None:
            acct.share = bool(share)
        self._log("knobs", domid, target, limit,
                  sorted(classes) if classes is not None else None, share)

    # -- what the kernel did

    def _set(self, domid, pfn, new):
        acct, changed, olds = self._set_all(domid, [pfn], new)
        return acct, KINDS[olds[0]] if olds else new

    def _set_all(self, domid, pfns, new, refuse=None):
        """Set the kind of a batch of pages (a fault storm's), whole or not
        at all: the pages whose kind changed, and their old kinds' codes
        (bytes).  A page of kind ``refuse`` is an error.  Keeps the image's
        mapper counts.  A storm brings thousands a turn: the loops are the
        builtins' own."""
        acct = self._clones[domid]
        codes, counts, npages = acct.kind.codes, acct.counts, acct.npages
        if pfns and (min(pfns) < 0 or max(pfns) >= npages):
            pfn = next(p for p in pfns if not 0 <= p < npages)
            raise LedgerError("clone %d: page %d out of range" % (domid, pfn))
        code = _CODE[new]
        if refuse is not None and _CODE[refuse] in bytes(map(codes.__getitem__, pfns)):
            pfn = next(p for p in pfns if codes[p] == _CODE[refuse])
            raise LedgerError("clone %d: page %d is %s, not %s" % (domid, pfn, refuse, new))
        changed = list(dict.fromkeys([p for p in pfns if codes[p] != code]))
        olds = bytes(map(codes.__getitem__, changed))
        for pfn in changed:
            codes[pfn] = code
        mapcount = self.images[acct.image_id].mapcount
        if code == _SHARED:
            for pfn in changed:
                mapcount[pfn] += 1
        elif _SHARED in olds:
            for pfn, old in zip(changed, olds):
                if old == _SHARED:
                    mapcount[pfn] -= 1
        for old in set(olds):
            if old:
                counts[KINDS[old]] -= olds.count(old)
        counts[new] += len(changed)
        return acct, changed, olds

    def _set_run(self, domid, run):
        """Map a run of pages none of which is resident (fault-around's):
        ``_set_all`` to SHARED in slices, or None if some page is resident."""
        acct = self._clones[domid]
        codes, counts = acct.kind.codes, acct.counts
        if run.start < 0 or run.stop > acct.npages:
            raise LedgerError("clone %d: pages %d..%d out of range"
                              % (domid, run.start, run.stop - 1))
        seg = codes[run.start:run.stop]
        evicted = seg.count(_CODE[EVICTED])
        if seg.count(0) + evicted != len(seg):
            return None
        codes[run.start:run.stop] = bytes([_SHARED]) * len(seg)
        counts[EVICTED] -= evicted
        counts[SHARED] += len(seg)
        mapcount = self.images[acct.image_id].mapcount
        for pfn in run:
            mapcount[pfn] += 1
        return acct

    def mapped_shared(self, domid, pfns, how="fault"):
        """Image pages now mapped: on a fault each (``how`` "fault"), or
        ahead of any ("prefetch": a working set; "around": fault-around,
        whose ``pfns`` is a range)."""
        if domid not in self._clones:
            return
        acct = self._set_run(domid, pfns) if isinstance(pfns, range) and pfns.step == 1 else None
        if acct is not None:
            changed = pfns
        else:
            pfns = list(pfns)
            acct, changed, _ = self._set_all(domid, pfns, SHARED, refuse=PRIVATE)
        base = key(domid, 0)
        if isinstance(changed, range):
            keys = range(base + changed.start, base + changed.stop)
        else:
            keys = [base | pfn for pfn in changed]
        if how == "fault":
            self.policy.paged_in(keys)
        else:
            self.policy.added(keys)
        self._count(acct, len(pfns), how)
        self._log("shared", domid, list(pfns))

    def mapped_zero(self, domid, pfns, how="fault"):
        if domid not in self._clones:
            return
        pfns = list(pfns)
        acct, _, _ = self._set_all(domid, pfns, ZERO)
        self._count(acct, len(pfns), how)
        self._log("zero", domid, pfns)

    @staticmethod
    def _count(acct, n, how):
        """Pages mapped: on a fault each, ahead of their faults (a working
        set, "prefetch"), or beside one (fault-around, "around")."""
        if how == "fault":
            acct.faults += n
        elif how == "prefetch":
            acct.prefetched += n
        else:
            acct.around += n

    def written(self, domid, pfns):
        """Copy on write: the clone now holds the only copy of these pages."""
        if domid not in self._clones:
            return
        pfns = list(pfns)
        acct, changed, olds = self._set_all(domid, pfns, PRIVATE)
        self._private += len(changed)
        base = key(domid, 0)
        self.policy.paged_in([base | pfn for pfn, old in zip(changed, olds) if old != _SHARED])
        self._log("written", domid, pfns)
        self._peak()

    def unwritten(self, domid, pfns):
        """Pages made writable whose write never landed, then dropped: the
        kernel showed them clean, so they were never the only copy."""
        acct = self._clones.get(domid)
        if acct is None:
            return
        for pfn in pfns:
            if acct.kind.get(pfn) == PRIVATE:
                self._set(domid, pfn, EVICTED)
                self._private -= 1
                self.policy.dropped([key(domid, pfn)])
        self._log("unwritten", domid, list(pfns))

    def cached(self, image_id, pfns):
        """Fetched image pages are now in this host's cache."""
        img = self.images[image_id]
        new = set(pfns) - img.cached
        img.cached |= new
        if not img.held:
            self._cached += len(new)
        self._log("cached", image_id, sorted(new))
        self._peak()

    def dropped_clean(self, domid, pfns, cls=DROP_CLEAN):
        acct = self._clones.get(domid)
        if acct is None:
            return
        for pfn in pfns:
            if acct.kind.get(pfn) == PRIVATE:
                raise LedgerError("clone %d: page %d is private and cannot be dropped" % (domid, pfn))
            if acct.kind.get(pfn) != SHARED:
                continue
            self._set(domid, pfn, EVICTED)
            acct.evictions[cls] += 1
            self.policy.dropped([key(domid, pfn)])
        self._log("dropped", domid, list(pfns), cls)

    def uncached(self, image_id, pfns):
        """Image pages left the host cache; no clone may still map them."""
        img = self.images[image_id]
        for pfn in pfns:
            if img.mapcount[pfn]:
                raise LedgerError("image %s page %d is still mapped by clones %s"
                                  % (image_id, pfn, sorted(img.mappers(pfn))))
            if pfn in img.cached:
                img.cached.discard(pfn)
                if not img.held:
                    self._cached -= 1
        self._log("uncached", image_id, list(pfns))

    def take_slots(self, domid, count):
        """``count`` free slots in the clone's page-out store."""
        acct = self._clones[domid]
        slots = [acct.free_slots.pop() for _ in range(min(count, len(acct.free_slots)))]
        fresh = count - len(slots)
        slots += range(acct.next_slot, acct.next_slot + fresh)
        acct.next_slot += fresh
        return slots

    def free_slots(self, domid, slots):
        """Slots a page-out took but did not fill (it failed): free again."""
        self._clones[domid].free_slots.extend(slots)

    def reserve_slots(self, domid, slots):
        """After a restart: slots in the store that hold pages (paged out,
        or stale records of pages since loaded back) come after these."""
        acct = self._clones[domid]
        used = {s for s, _ in acct.slots.values()}
        top = max(list(slots) + [acct.next_slot - 1], default=-1) + 1
        acct.next_slot = top
        acct.free_slots = sorted(set(range(top)) - used, reverse=True)

    def paged_out(self, domid, pfns, slots, crcs):
        acct = self._clones[domid]
        for pfn, slot, crc in zip(pfns, slots, crcs):
            if acct.kind.get(pfn) != PRIVATE:
                raise LedgerError("clone %d: page %d is not private" % (domid, pfn))
            self._set(domid, pfn, PAGED_OUT)
            acct.slots[pfn] = (slot, crc)
            acct.evictions[PAGE_OUT] += 1
            self._private -= 1
            self.policy.dropped([key(domid, pfn)])
        self._log("paged_out", domid, list(pfns), list(slots), list(crcs))

    def paged_in(self, domid, pfn):
        """A paged-out page is back in memory, private again; its slot frees."""
        acct = self._clones[domid]
        if acct.kind.get(pfn) != PAGED_OUT:
            raise LedgerError("clone %d: page %d was not paged out" % (domid, pfn))
        slot, _ = acct.slots.pop(pfn)
        acct.free_slots.append(slot)
        self._set(domid, pfn, PRIVATE)
        acct.faults += 1
        self._private += 1
        self.policy.paged_in([key(domid, pfn)])
        self._log("paged_in", domid, pfn)
        self._peak()

    def pause_pageout(self, domid, why):
        """Page-out stops for a while (a full disk); the classes left meanwhile."""
        acct = self._clones[domid]
        acct.classes.discard(PAGE_OUT)
        acct.pageout_error = why
        return set(acct.classes)

    def resume_pageout(self, domid, left):
        """Page-out may go on, unless the operator changed the classes since."""
        acct = self._clones[domid]
        if acct.classes == left:
            acct.classes.add(PAGE_OUT)

    def pageout_works(self, domid, paused_why):
        """A page-out worked: a pause's reason (it starts ``paused_why``) goes."""
        acct = self._clones[domid]
        if (acct.pageout_error or "").startswith(paused_why):
            acct.pageout_error = None

    def pageout_failed(self, domid, why):
        """The store failed: stop paging this clone out; nothing is lost."""
        acct = self._clones.get(domid)
        if acct is not None:
            acct.pageout_error = why
            acct.classes.discard(PAGE_OUT)

    def slot(self, domid, pfn):
        return self._clones[domid].slots.get(pfn)

    def kind(self, domid, pfn):
        return self._clones[domid].kind.get(pfn)

    def mappers(self, image_id, pfn):
        """The clones that map an image page shared."""
        return self.images[image_id].mappers(pfn)

    def mapped(self, image_id, pfn):
        """Whether some clone maps the image page."""
        return bool(self.images[image_id].mapcount[pfn])

    def is_cached(self, image_id, pfn):
        return pfn in self.images[image_id].cached

    # -- figures

    def clone_stats(self, domid):
        acct = self._clones[domid]
        return {
            "image": acct.image_id,
            "nominal_pages": acct.npages,
            "resident_pages": acct.resident,
            "shared_pages": acct.counts[SHARED],
            "private_pages": acct.counts[PRIVATE],
            "zero_pages": acct.counts[ZERO],
            "paged_out_pages": acct.counts[PAGED_OUT],
            "evicted_pages": sum(acct.evictions.values()),
            "evictions": dict(acct.evictions),
            "faults": acct.faults,
            "prefetched_pages": acct.prefetched,
            "around_pages": acct.around,
            "target_pages": acct.target,
            "limit_pages": acct.limit,
            "burst_cap_pages": acct.cap,
            "flags": {"evict": sorted(acct.classes), "share.onfetch": acct.share},
            "pageout_error": acct.pageout_error,
        }

    def host_stats(self):
        evictions = dict(self._evictions_gone)   # a counter never goes down
        for acct in self._clones.values():
            for cls, n in acct.evictions.items():
                evictions[cls] += n
        return {
            "budget_pages": self.budget_pages,
            "allocated_pages": self.allocated,
            "cached_image_pages": self._cached,
            "private_pages": self._private,
            "resident_pages": sum(a.resident for a in self._clones.values()),
            "peak_pages": self.peak,
            "clones": len(self._clones),
            "evictions": evictions,
        }


_REPLAYABLE = {
    "image": "add_image", "held": "hold_image", "unimage": "remove_image", "add": "add_clone",
    "remove": "remove_clone", "knobs": "set_knobs", "shared": "mapped_shared",
    "zero": "mapped_zero", "written": "written", "cached": "cached",
    "dropped": "dropped_clean", "uncached": "uncached", "paged_out": "paged_out",
    "paged_in": "paged_in", "unwritten": "unwritten", "cap": "set_cap",
}
