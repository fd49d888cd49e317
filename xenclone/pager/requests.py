"""Waiting faults: one request per clone and page, queued by what it waits for.

A fault the fast path could not serve becomes a ``FaultRequest`` (clone,
page, what it waits for) in one of these queues:

    room in its clone      per clone, oldest first      -> map it
    room on the host       one queue, oldest first      -> write, fetch, copy, page in
    an eviction to end     per clone (held pages)       -> page in, or faults again
    the memory server      per clone (failed fetches)   -> fetched again after a backoff

A page is in a queue at most once; asking again keeps its place (and, on
the host queue, takes the newer want, but a page-in stays: it gives the
page its frame, which is what a write waits for too).  Every operation is O(1) per fault,
and so is every count: the counts are kept, never summed.  The queues are
``OrderedDict``s: taking the oldest of a plain dict again and again walks
the slots its earlier pops left, quadratic over a drain.
"""

from collections import Counter, OrderedDict

import attr


class Waits:
    """What a waiting fault waits for (the names ``Pager.waiting`` counts)."""

    ROOM = "map"              # room in its clone: evict from that clone
    WRITE = "write"           # a host page for a write
    FETCH = "fetch"           # a host page to fetch an image page into
    COPY = "copy"             # a host page for a private copy (share.onfetch off)
    PAGE_IN = "pagein"        # a host page to load a paged-out page into
    EVICTION = "evicting"     # an eviction holding its page to end
    MEMSERVER = "memserver"   # the memory server, whose fetch failed

    HOST = (WRITE, FETCH, COPY, PAGE_IN)


@attr.s(slots=True, frozen=True)
class FaultRequest:
    domid = attr.ib()
    pfn = attr.ib()
    waits = attr.ib()

    @property
    def key(self):
        return self.domid, self.pfn


class WaitingFaults:
    def __init__(self):
        self._host = OrderedDict()   # (domid, pfn) -> FaultRequest, oldest first
        self._room = {}         # domid -> OrderedDict {pfn: FaultRequest}, oldest first
        self._parked = {Waits.EVICTION: {}, Waits.MEMSERVER: {}}   # waits -> domid -> {pfn}
        self._host_of = {}      # domid -> {pfn} of its requests on the host queue
        self._copies = set()    # (domid, pfn) on the host queue for a private copy
        self._counts = Counter()      # waits -> requests

    # -- room in the clone

    def wait_room(self, domid, pfn):
        queue = self._room.get(domid)
        if queue is None:
            queue = self._room[domid] = OrderedDict()
        if pfn not in queue:
            queue[pfn] = FaultRequest(domid, pfn, Waits.ROOM)
            self._counts[Waits.ROOM] += 1

    def served(self, domid, pfns):
        """The fast path mapped these pages: faults on them wait no more."""
        queue = self._room.get(domid)
        if queue:
            for pfn in pfns:
                if queue.pop(pfn, None) is not None:
                    self._counts[Waits.ROOM] -= 1
            self._drop_empty(domid)

    def clones_waiting_room(self):
        return list(self._room)

    def room_waiting(self, domid):
        """How many of the clone's faults wait for room in it."""
        return len(self._room.get(domid, ()))

    def take_room(self, domid):
        """The clone's oldest request for room, out of its queue."""
        _, request = self._room[domid].popitem(last=False)
        self._counts[Waits.ROOM] -= 1
        self._drop_empty(domid)
        return request

    def _drop_empty(self, domid):
        if not self._room.get(domid, True):
            del self._room[domid]

    # -- room on the host

    def wait_host(self, domid, pfn, waits):
        key = domid, pfn
        old = self._host.get(key)
        if old is not None and old.waits == Waits.PAGE_IN and waits == Waits.WRITE:
            return
        if old is None:
            self._host_of.setdefault(domid, set()).add(pfn)
        else:
            self._counts[old.waits] -= 1
            self._copies.discard(key)
        self._host[key] = FaultRequest(domid, pfn, waits)
        self._counts[waits] += 1
        if waits == Waits.COPY:
            self._copies.add(key)

    def host_waiting(self):
        return len(self._host)

    def take_host(self):
        """The oldest request for host room, out of the queue."""
        _, request = self._host.popitem(last=False)
        self._counts[request.waits] -= 1
        self._copies.discard(request.key)
        pfns = self._host_of[request.domid]
        pfns.discard(request.pfn)
        if not pfns:
            del self._host_of[request.domid]
        return request

    def copying(self):
        """(domid, pfn) of the requests for a private copy."""
        return self._copies

    # -- parked: an eviction's end, the memory server

    def park(self, domid, pfn, waits):
        pfns = self._parked[waits].setdefault(domid, set())
        if pfn not in pfns:
            pfns.add(pfn)
            self._counts[waits] += 1

    def unpark(self, domid, pfns, waits):
        """These pages wait no more for ``waits``; those that did."""
        parked = self._parked[waits].get(domid)
        if not parked:
            return []
        out = [p for p in pfns if p in parked]
        parked.difference_update(out)
        self._counts[waits] -= len(out)
        if not parked:
            del self._parked[waits][domid]
        return out

    def parked(self, domid, waits):
        return len(self._parked[waits].get(domid, ()))

    def unpark_all(self, waits):
        """Every request parked for ``waits``, out of the queue."""
        parked, self._parked[waits] = self._parked[waits], {}
        self._counts[waits] = 0
        return [FaultRequest(d, p, waits) for d, pfns in parked.items() for p in pfns]

    # -- a clone, and the whole

    def forget(self, domid):
        """The clone is gone: its requests go too."""
        self._counts[Waits.ROOM] -= len(self._room.pop(domid, ()))
        for waits, by_clone in self._parked.items():
            self._counts[waits] -= len(by_clone.pop(domid, ()))
        for pfn in self._host_of.pop(domid, ()):
            self._counts[self._host.pop((domid, pfn)).waits] -= 1
            self._copies.discard((domid, pfn))

    def waiting(self, domid):
        """How many of the clone's faults wait, for anything."""
        return (len(self._room.get(domid, ())) + len(self._host_of.get(domid, ()))
                + sum(len(p.get(domid, ())) for p in self._parked.values()))

    def count(self, waits):
        """How many faults wait for ``waits``, over every clone."""
        return self._counts[waits]

    def counts(self):
        """Waiting faults by what they wait for (host wants only where some wait)."""
        return {w: self._counts[w] for w in (Waits.ROOM, Waits.EVICTION, Waits.MEMSERVER)} | {
            w: n for w, n in self._counts.items() if w in Waits.HOST and n}

    def __contains__(self, key):
        """Whether a fault on (domid, pfn) waits for room (a page never to evict)."""
        domid, pfn = key
        return key in self._host or pfn in self._room.get(domid, ())
