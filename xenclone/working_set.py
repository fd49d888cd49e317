"""Working sets (REAP): record the first clone's faults, prefetch for the rest.

The first clone launched from an image generation with no working set yet
is recorded: the pages it faults on, in the order it faulted.  When it
stops running the set is saved, one file per image generation (the image
is immutable, so a set recorded for it stays true), under
``<state_dir>/working-sets/<image>/<generation>.json``.  Every later clone
of that generation gets the set mapped at launch, in that order, before its
faults would come (the copies are C's: ``Pager.prefetch``).

A second clone launched while the first is still recorded is recorded too,
and the set keeps only the pages both faulted on, in the first's order:
what is common to the clones, not what one clone's input made it read
(mapping those into every clone would cost time and page tables, and win
no fault).  A clone recorded alone gives its whole set.

The set is this host's knowledge, kept beside the images this host serves;
the memory server, which may be remote and read-only, is not asked to hold
it.  ``faulted`` keeps which pages each live clone faulted on, so the bench
can count the faults of any part of a workload.
"""

import json
import os
import shutil

from twisted.logger import Logger

from xenclone import names
from xenclone.interfaces import FaultKind

RECORDERS = 2    # clones recorded per generation: their common pages are the set

# Records that say a clone touched a page it did not have.
_FIRST_TOUCH = {FaultKind.SERVED, FaultKind.ZERO, FaultKind.FETCH, FaultKind.MISSING,
                FaultKind.COPY, FaultKind.WRITE, FaultKind.HOLD}


class WorkingSets:
    log = Logger()

    def __init__(self, pager, directory):
        self.pager = pager
        self.dir = directory
        self._sets = {}          # (image id, generation) -> [pfn, ...] in fault order
        self._recording = {}     # domid -> (image id, generation, order list)
        self._keys = {}          # (image id, generation) -> domids recording it (<= 2)
        self._pending = {}       # (image id, generation) -> the first recording to end
        self.faulted = {}        # domid -> bytearray: 1 where the clone faulted
        pager.observe = self.observe
        pager.recorded = self.will_record

    def _path(self, image_id, generation):
        # Both may come from a remote memory server (a mirror's generation).
        return names.join(self.dir, names.check_name(image_id, "image name"),
                          "%s.json" % names.check_generation(generation))

    def get(self, image_id, generation):
        """The recorded set, or None."""
        key = (image_id, generation)
        if key not in self._sets:
            try:
                with open(self._path(*key)) as f:
                    self._sets[key] = json.load(f)["pages"]
            except (FileNotFoundError, ValueError, KeyError):
                return None
        return self._sets[key]

    def will_record(self, image):
        """Whether the next clone of ``image`` is recorded.  The pager gives
        it no fault-around: its set is every page it touched."""
        key = (image.image_id, image.generation)
        return (self.get(*key) is None and len(self._keys.get(key, ())) < RECORDERS
                and key not in self._pending)

    def launched(self, domid, image, npages, prefetch=True):
        """A clone of ``image`` runs: prefetch its set, or record it."""
        self.faulted[domid] = bytearray(npages)
        key = (image.image_id, image.generation)
        pages = self.get(*key)
        if pages is None:
            if self.will_record(image):
                self._keys.setdefault(key, []).append(domid)
                self._recording[domid] = (image.image_id, image.generation, [])
            return None
        if not prefetch:
            return None
        d = self.pager.prefetch(domid, pages)
        d.addErrback(lambda f: self.log.failure("clone {domid}: prefetch failed", f,
                                                domid=domid))
        return d

    def observe(self, records):
        """The pager's records: a pfn, or a list of them (on_faults)."""
        for domid, kind, pfns in records:
            seen = self.faulted.get(domid)
            if seen is None or kind not in _FIRST_TOUCH:
                continue
            rec = self._recording.get(domid)
            for pfn in (pfns,) if isinstance(pfns, int) else pfns:
                if not seen[pfn]:
                    seen[pfn] = 1
                    if rec is not None:
                        rec[2].append(pfn)

    def faults_on(self, domid, pfns):
        """How many of ``pfns`` the clone faulted on."""
        seen = self.faulted.get(domid, b"")
        return sum(1 for p in pfns if p < len(seen) and seen[p])

    def finished(self, domid):
        """The clone stopped running (its answer, a crash) or is gone: its
        recording ends.  An empty one (a clone filled before it ran) counts
        for nothing."""
        rec = self._recording.pop(domid, None)
        if rec is None:
            return
        self.pager.set_fault_around(domid)
        image_id, generation, order = rec
        key = (image_id, generation)
        recorders = self._keys[key]
        recorders.remove(domid)
        pending = self._pending.pop(key, None)
        if pending is not None:
            seen = self.faulted[domid]
            order = [p for p in pending if seen[p]] if order else pending
        elif order and recorders:
            self._pending[key] = order      # the other recording decides
            return
        if not recorders:
            del self._keys[key]
        if order:
            self._save(image_id, generation, order, domid)

    def _save(self, image_id, generation, order, domid):
        path = self._path(image_id, generation)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"image": image_id, "generation": generation, "pages": order}, f)
        os.rename(tmp, path)
        self._sets[(image_id, generation)] = order
        for other in self._keys.pop((image_id, generation), []):
            self._recording.pop(other, None)
            self.pager.set_fault_around(other)
        self.log.info("{image}: working set of {n} pages recorded (last from clone {domid})",
                      image=image_id, n=len(order), domid=domid)

    def gone(self, domid):
        self.finished(domid)
        self.faulted.pop(domid, None)

    def info(self, image_id, generation):
        pages = self.get(image_id, generation)
        return {"generation": generation, "pages": len(pages) if pages is not None else None,
                "recording": sorted(self._keys.get((image_id, generation), []))}

    def forget(self, image_id):
        for key in [k for k in self._sets if k[0] == image_id]:
            del self._sets[key]
        shutil.rmtree(names.join(self.dir, image_id), ignore_errors=True)
