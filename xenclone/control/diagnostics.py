"""The control ops that look without changing anything: host figures,
the kernel's view of clone memory, audits and integrity checks.

A mixin of ``Controller``:

- ``host``: the backend's capabilities, the ledger's figures, the pager's
  stalls and waits, host memory pressure, balloons and, unless
  ``kernel=false``, ``kernel_view`` (image caches' memfd blocks, clones'
  pages by kind); ``pids``: the processes to ask the kernel about;
- ``audit``: a clone's pages where the ledger, the fault path and the
  kernel disagree, after in-flight records had time to land;
- ``image_check``, ``isolation_check``, ``memory_check`` and
  ``page_sums``: pages read back against what the workload must have left.
"""

import os

from twisted.internet import defer, task

from xenclone import memory_check, workload
from xenclone.control.args import _image_arg
from xenclone.interfaces import PAGE_SIZE, DomainState
from xenclone.wire import WireError

AUDIT_SETTLE_ROUNDS = 20      # 50 ms apart


class Diagnostics:
    """The looking ops; needs ``Controller``'s ``backend``, ``memserver``,
    ``pager``, ``ledger``, ``host_memory``, ``balloons``, ``domains``,
    ``_images``, ``reactor`` and its helpers (``_domain``, ``_clone``)."""

    def op_host(self, msg):
        # kernel=false: the ledger's figures only, cheap enough to poll often (plots).
        d = self.kernel_view() if msg.get("kernel", True) is not False else defer.succeed(None)
        d.addCallback(lambda kernel: {
            "backend": self.backend.name, "capabilities": self.backend.capabilities(),
            "ledger": self.ledger.host_stats(), "kernel": kernel,
            "stalled": self.pager.stalled, "waiting": self.pager.waiting(),
            "pressure": self.host_memory.state(),
            "balloons": self.balloons.last if self.balloons is not None else None,
            "policy": self.ledger.policy_name})
        return d

    @defer.inlineCallbacks
    def kernel_view(self):
        """Clone memory as the kernel counts it: each image cache's resident
        pages (memfd blocks) and each clone's pages by kind (pagemap)."""
        cache = {image_id: os.fstat(image.mem_fd).st_blocks * 512 // PAGE_SIZE
                 for image_id, image in self._images.items()}
        clones = {}
        for dom in list(self.domains.values()):
            if dom.role == "clone" and self.ledger.has_clone(dom.domid):
                try:
                    clones[dom.domid] = yield self.backend.scan(dom.domid)
                except WireError as e:
                    if e.code != "no-domain":     # destroyed while we looked
                        raise
        private = sum(c["private"] for c in clones.values())
        return {"image_cache_pages": cache, "clones": clones,
                "allocated_pages": sum(cache.values()) + private,
                "resident_pages": sum(c["shared"] + c["private"] for c in clones.values()),
                "private_pages": private}

    def op_pids(self, msg):
        """The processes whose memory the kernel should be asked about."""
        def pids(r):
            found = {"daemon": os.getpid(), "vmmhost": r[0]["pid"], "memserver": r[1]["pid"]}
            return {k: v for k, v in found.items() if v is not None}   # Xen: no VMM host

        d = defer.gatherResults([self.backend.ping(), self.memserver.ping()], consumeErrors=True)
        return d.addCallback(pids)

    @defer.inlineCallbacks
    def op_audit(self, msg):
        """A clone's pages where the ledger, the fault path and the kernel
        disagree (the first 100 of them).  Records and evictions in flight
        disagree for an instant: a page counts only if it still does after
        they had time to land."""
        dom = self._clone(msg)
        npages = self.ledger.npages(dom.domid)
        for settle in range(AUDIT_SETTLE_ROUNDS):
            if settle:
                yield task.deferLater(self.reactor, 0.05, lambda: None)
            kernel = []
            for first in range(0, npages, 4096):
                kernel += yield self.backend.page_kinds(dom.domid,
                                                        range(first, min(npages, first + 4096)))
            bad = self.pager.audit(dom.domid, kernel)
            if not bad:
                break
        return {"domid": dom.domid, "pages": npages, "disagree": len(bad),
                "first": [dict(pfn=p, ledger=lk, state=s, kernel=k) for p, lk, s, k in bad[:100]]}

    @defer.inlineCallbacks
    def op_image_check(self, msg):
        """Read back, from the memory server, every page the image's clones
        wrote: each must still hold the image's own data."""
        image_id = _image_arg(msg)
        bad = []
        checked = 0
        for dom in list(self.domains.values()):
            if dom.image != image_id or not dom.params:
                continue
            params = workload.Params(**dom.params)
            for pfn in sorted(workload.pages_written(params, dom.clone_id, dom.input)):
                data = yield self.memserver.fetch(image_id, pfn, 1)
                checked += 1
                if data != workload.image_page(params, pfn):
                    bad.append(pfn)
        return {"unchanged": not bad and checked > 0, "checked_pages": checked, "changed_pages": bad}

    @defer.inlineCallbacks
    def op_isolation_check(self, msg):
        """Each clone of the image must still see the image's data in every
        page that another clone wrote (and it did not)."""
        image_id = _image_arg(msg)
        clones = [d for d in self.domains.values() if d.image == image_id and d.params]
        written = {}
        for dom in clones:
            params = workload.Params(**dom.params)
            written[dom.domid] = workload.pages_written(params, dom.clone_id, dom.input)
        leaks, checked = [], 0
        for dom in clones:
            params = workload.Params(**dom.params)
            others = sorted(set().union(*(w for d, w in written.items() if d != dom.domid))
                            - written[dom.domid])
            sums = yield self.backend.page_sums(dom.domid, others)
            for pfn, got in zip(others, sums):
                checked += 1
                if got != workload.page_sum(workload.image_page(params, pfn)):
                    leaks.append([dom.name, pfn])
        return {"isolated": not leaks and checked > 0, "checked_pages": checked, "leaks": leaks}

    @defer.inlineCallbacks
    def op_memory_check(self, msg):
        """Every data page of finished clones (of ``image``, or the one
        ``domain``) against what the workload must have left there."""
        if msg.get("domain") is not None:
            clones = [self._clone(msg)]
        else:
            image_id = _image_arg(msg)
            clones = [d for d in self.domains.values() if d.image == image_id]
        checked, lost, unchecked = 0, [], []
        for dom in sorted(clones, key=lambda d: d.domid):
            if dom.state != DomainState.DONE or not dom.params:
                unchecked.append(dom.name)
                continue
            params = workload.Params(**dom.params)
            expected = memory_check.ExpectedMemory(params, dom.clone_id, dom.input)
            pfns = list(memory_check.data_pfns(params))
            for first in range(0, len(pfns), 4096):
                part = pfns[first:first + 4096]
                got = yield self.backend.page_sums(dom.domid, part)
                want = expected.sums(part)
                lost += [[dom.name, p] for p, g, w in zip(part, got, want) if g != w]
                checked += len(part)
        return {"clones": len(clones) - len(unchecked), "checked_pages": checked,
                "lost_pages": len(lost), "first_lost": lost[:20], "unchecked": unchecked}

    def op_page_sums(self, msg):
        """64-bit word sums of a domain's guest pages (integrity checks)."""
        dom = self._domain(msg.get("domain"))
        pfns = msg.get("pfns")
        if not isinstance(pfns, list) or len(pfns) > 2**20:
            raise WireError("bad-argument", "pfns must be a list of page numbers")
        d = defer.gatherResults([self.backend.page_sums(dom.domid, pfns[i:i + 4096])
                                 for i in range(0, len(pfns), 4096)], consumeErrors=True)
        d.addErrback(lambda f: f.value.subFailure if f.check(defer.FirstError) else f)
        return d.addCallback(lambda parts: {"sums": [x for part in parts for x in part]})
