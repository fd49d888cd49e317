"""Images in the memory-server domain, read through grant maps in dom0.

Mapping grants costs a hypercall batch and a slot of dom0's maptrack, so
batches of an image's refs are mapped on first use and kept, least
recently used first out, up to ``limit`` pages.  A mapped grant is the
server domain's frame, not dom0 memory: the limit bounds address space
and maptrack entries, not the host budget.  Fills run in the reactor's
thread pool, so every use of a mapping holds the cache's lock.
"""

import collections
import threading

import attr

from xenclone.interfaces import PAGE_SIZE

BATCH = 512                 # refs per grant map (2 MiB)
DEFAULT_LIMIT = 16384       # pages mapped at most (64 MiB of address space; grant_cache_mib)
_ZERO_PAGE = bytes(PAGE_SIZE)


class GrantCache:
    def __init__(self, gnttab, limit=DEFAULT_LIMIT):
        self._gnttab = gnttab
        self.limit = max(limit, BATCH)
        self._maps = collections.OrderedDict()  # (image key, batch) -> Mapping
        self._lock = threading.Lock()
        self.maps = self.unmaps = 0

    def pages(self, image):
        """``image`` with ``pages`` set to read it through this cache."""
        return attr.evolve(image, pages=_ImagePages(self, image))

    def _mapping(self, image, batch):
        key = ((image.image_id, image.generation), batch)
        m = self._maps.get(key)
        if m is not None:
            self._maps.move_to_end(key)
            return m
        where = image.server_domain
        first = batch * BATCH
        n = min(BATCH, image.npages - first)
        m = self._gnttab.map(where["domid"], range(where["first_ref"] + first,
                                                   where["first_ref"] + first + n),
                             writable=False)
        self.maps += 1
        self._maps[key] = m
        while len(self._maps) * BATCH > self.limit:     # the newest always stays
            _, old = self._maps.popitem(last=False)
            old.close()
            self.unmaps += 1
        return m

    def read(self, image, pfn, count):
        """Pages pfn..pfn+count-1 of the image as the server holds them."""
        out = []
        with self._lock:
            while count:
                batch, off = divmod(pfn, BATCH)
                n = min(count, BATCH - off)
                buf = self._mapping(image, batch).buffer
                out.append(buf[off * PAGE_SIZE:(off + n) * PAGE_SIZE])
                pfn, count = pfn + n, count - n
        return b"".join(out)

    def forget(self, image):
        """Unmap every batch of ``image`` (before its grants end)."""
        key = (image.image_id, image.generation)
        with self._lock:
            for k in [k for k in self._maps if k[0] == key]:
                self._maps.pop(k).close()
                self.unmaps += 1

    def stats(self):
        return {"mapped_pages": sum(m.pages for m in self._maps.values()),
                "limit_pages": self.limit,
                "maps": self.maps, "unmaps": self.unmaps}

    def close(self):
        with self._lock:
            while self._maps:
                self._maps.popitem()[1].close()


class _ImagePages:
    """``OpenImage.pages`` of an image in the server domain."""

    def __init__(self, cache, image):
        self._cache, self._image = cache, image

    def read(self, pfn, count):
        return self._cache.read(self._image, pfn, count)

    def read_page(self, pfn):
        # A zero page was never copied into the server: its frame is junk.
        if self._image.zero[pfn]:
            return _ZERO_PAGE
        return self.read(pfn, 1)
