"""Clock sweep that spares recently paged-in pages (xenpaging's default)."""

from array import array
from collections import deque

from zope.interface import implementer

from xenclone.ledger_interfaces import IEvictionPolicy

_PFN = 0xFFFFFFFF
_SEQ = "I"                  # 32-bit sequence numbers
_SEQ_MAX = 0xFFFFFFFF


@implementer(IEvictionPolicy)
class ClockPolicy:
    """Oldest resident page first, but never one of the last ``protect``
    pages brought in: a page just faulted is likely touched again soon, and
    evicting it would make the clone fault on it at once.

    Keys are ``domid << 32 | pfn`` (the ledger's).  A host holds millions
    of pages, so the order is kept in arrays, 16 bytes a page: a log of
    keys and the sequence number of each entry, oldest first, and per clone
    the sequence number of each page's latest entry (0: not resident).  An
    entry whose number is not its page's latest is stale (the page left,
    or came in again later); the log is compacted once most of it is.
    Numbers are 32-bit (8 x 1 GiB of clones: 16 MiB less than 64-bit, the
    daemon's PSS then under QEMU template clones'): compaction numbers the
    live entries afresh, and comes early if the numbers would run out."""

    name = "clock"

    def __init__(self, protect=64):
        self._keys = array("Q")
        self._seqs = array(_SEQ)
        self._stamps = {}            # domid -> array(_SEQ): latest seq of each page
        self._live = {}              # domid -> its pages with a stamp
        self._seq = 0
        self._recent = deque(maxlen=protect) if protect else None

    def _stamps_of(self, domid, npages):
        st = self._stamps.get(domid)
        if st is None:
            st = self._stamps[domid] = array(_SEQ)
            self._live[domid] = 0
        if npages > len(st):
            st.frombytes(bytes(st.itemsize * (npages - len(st))))
        return st

    def _log_run(self, keys):
        """_log of a run of one clone's pages (fault-around's), in slices."""
        domid, first = keys.start >> 32, keys.start & _PFN
        st = self._stamps_of(domid, first + len(keys))
        self._live[domid] += st[first:first + len(keys)].count(0)
        seqs = range(self._seq + 1, self._seq + 1 + len(keys))
        st[first:first + len(keys)] = array(_SEQ, seqs)
        self._seq += len(keys)
        self._keys.extend(keys)
        self._seqs.extend(seqs)

    def _log_clone(self, keys):
        """_log of one clone's pages (a fault storm's batch): the loops are
        the builtins' own but the one that stamps."""
        domid = keys[0] >> 32
        base = domid << 32
        pfns = [k - base for k in keys]
        st = self._stamps_of(domid, max(pfns) + 1)
        self._live[domid] += len(dict.fromkeys([p for p in pfns if not st[p]]))
        seqs = range(self._seq + 1, self._seq + 1 + len(keys))
        for pfn, seq in zip(pfns, seqs):
            st[pfn] = seq
        self._seq += len(keys)
        self._keys.extend(keys)
        self._seqs.extend(seqs)

    def _log(self, keys):
        if not isinstance(keys, range):
            keys = list(keys)
        if self._seq + len(keys) > _SEQ_MAX:
            self._compact()
        if isinstance(keys, range):
            if keys.step == 1 and keys and keys.start >> 32 == (keys.stop - 1) >> 32:
                return self._log_run(keys)
            keys = list(keys)
        if keys and min(keys) >> 32 == max(keys) >> 32:
            return self._log_clone(keys)
        live, seq, st, at = self._live, self._seq, (), None
        for k in keys:
            domid, pfn = k >> 32, k & _PFN
            if domid != at or pfn >= len(st):     # a batch is mostly one clone's
                st, at = self._stamps_of(domid, pfn + 1), domid
            if not st[pfn]:
                live[domid] += 1
            seq += 1
            st[pfn] = seq
        self._keys.extend(keys)
        self._seqs.extend(range(self._seq + 1, seq + 1))
        self._seq = seq

    def paged_in(self, keys):
        keys = list(keys)
        self._log(keys)
        if self._recent is not None:
            self._recent.extend(keys)

    def added(self, keys):
        """Pages resident with no fault of theirs (fault-around, a working
        set): newest, but not spared, as nothing touched them yet."""
        self._log(keys)

    def dropped(self, keys):
        stamps, live = self._stamps, self._live
        for k in keys:
            domid, pfn = k >> 32, k & _PFN
            st = stamps.get(domid)
            if st is not None and pfn < len(st) and st[pfn]:
                st[pfn] = 0
                live[domid] -= 1
                if not live[domid]:          # the clone holds nothing: its array goes
                    del stamps[domid], live[domid]
        if len(self._keys) > 1024 and len(self._keys) > 2 * sum(self._live.values()):
            self._compact()

    def _compact(self):
        """The live entries alone, numbered 1, 2, ... afresh."""
        keys = array("Q", (k for k, _ in self._entries()))
        stamps = self._stamps
        for seq, k in enumerate(keys, 1):
            stamps[k >> 32][k & _PFN] = seq
        self._keys, self._seqs, self._seq = keys, array(_SEQ, range(1, len(keys) + 1)), len(keys)

    def _entries(self):
        """(key, seq) of the live entries, oldest first."""
        stamps = self._stamps
        for k, seq in zip(self._keys, self._seqs):
            st = stamps.get(k >> 32)
            pfn = k & _PFN
            if st is not None and pfn < len(st) and st[pfn] == seq:
                yield k, seq

    def _spared(self):
        """Each recent page once, by its latest fault, least recent first."""
        return list(dict.fromkeys(reversed(self._recent or ())))[::-1]

    def _resident(self, k):
        st = self._stamps.get(k >> 32)
        pfn = k & _PFN
        return st is not None and pfn < len(st) and st[pfn] != 0

    def _old(self, rank, spared):
        """(rank, key) of evictable pages outside the recent window, oldest first."""
        for k, _ in self._entries():
            if k not in spared:
                r = rank(k)
                if r is not None:
                    yield r, k

    def _new(self, rank, recent):
        return [(r, k) for k in recent if self._resident(k) for r in (rank(k),) if r is not None]

    def choose(self, count, rank):
        if count <= 0:
            return []
        recent = self._spared()
        out = []
        for _, k in self._old(rank, set(recent)):
            out.append(k)
            if len(out) == count:
                return out
        # Under real pressure the protected window is not sacred.
        return out + [k for _, k in self._new(rank, recent)][:count - len(out)]
