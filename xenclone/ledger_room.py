"""The ledger's room and victims: how many pages may be mapped, and which to evict.

A mixin of ``Ledger`` (its state is the ledger's): room is the budget (the
host's, a clone's limit or cap) less what is held; credits are room handed
to the fast path ahead of its faults; victims are chosen by the eviction
policy among the pages each eviction class may take.
"""

from xenclone.ledger_accounts import (
    _CODE, _SHARED, DROP_CLEAN, DROP_SHARED, PAGE_OUT, PRIVATE, SHARED, unkey)


class Room:
    @property
    def allocated(self):
        return self._cached + self._private

    def _peak(self):
        self.peak = max(self.peak, self.allocated)

    def host_room(self):
        return self.budget_pages - self.allocated

    def clone_room(self, domid):
        acct = self._clones[domid]
        caps = [c for c in (acct.limit, acct.cap) if c is not None]
        if not caps:
            return acct.npages
        return min(caps) - acct.resident

    def _capped(self, domid):
        acct = self._clones[domid]
        return acct.limit is not None or acct.cap is not None

    def take_credits(self):
        """Credits for the fast path: host pages, and per clone mappings.
        A clone with no limit or cap gets its whole room: mapping an image
        page the host holds costs the host nothing, and a clone whose
        credits ran out between two reactor turns faults one page at a
        time through Python, fault-around stepping back (docs/design.md
        has the fault counts either way)."""
        host = max(0, min(self.credit_batch, self.host_room()))
        clones = {d: max(0, min(self.credit_batch, self.clone_room(d)) if self._capped(d)
                         else self.clone_room(d))
                  for d in self._clones}
        return host, clones

    def clone_victims(self, domid, count, exclude=()):
        """Pages to evict from one clone (over its limit or target): clean
        pages are dropped first, private ones paged out.  Pages in
        ``exclude`` (faults waiting on them) are spared."""
        acct = self._clones[domid]
        codes, classes = acct.kind.codes, acct.classes
        ranks = {_SHARED: 0 if DROP_CLEAN in classes else None,
                 _CODE[PRIVATE]: 2 if PAGE_OUT in classes else None}

        def rank(k):
            d, pfn = unkey(k)
            if d != domid or (d, pfn) in exclude:
                return None
            return ranks.get(codes[pfn])

        return [unkey(k) for k in self.policy.choose(count, rank)]

    def host_victims(self, count, exclude=()):
        """Pages whose eviction frees host memory: private pages (paged out)
        and image pages whose every mapper may drop them (drop-shared)."""
        def rank(k):
            domid, pfn = unkey(k)
            acct = self._clones.get(domid)
            if acct is None or (domid, pfn) in exclude:
                return None
            kind = acct.kind.get(pfn)
            if kind == PRIVATE and PAGE_OUT in acct.classes:
                return 2
            if kind == SHARED:
                img = self.images[acct.image_id]
                if img.held:
                    return None
                mappers = img.mappers(pfn)
                if pfn in img.cached and all(
                        DROP_SHARED in self._clones[m].classes and (m, pfn) not in exclude
                        for m in mappers):
                    return 0 if len(mappers) == 1 else 1
            return None

        return [unkey(k) for k in self.policy.choose(count, rank)]

    def unmapped_cache(self, count, exclude=()):
        """Cached image pages no clone maps: free to drop at once."""
        out = []
        for image_id, img in self.images.items():
            if img.held:
                continue        # frees nothing of the budget
            for pfn in img.cached:
                if not img.mapcount[pfn] and (image_id, pfn) not in exclude:
                    out.append((image_id, pfn))
                    if len(out) >= count:
                        return out
        return out
