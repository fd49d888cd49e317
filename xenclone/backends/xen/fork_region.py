"""A fork clone whose memory the pager governs (the project's Xen).

Xen fills a fork's pages itself, on first touch, shared with the image
domain until written; the pager never sees those fills.  It governs the
rest, through the fork's two vm_event rings:

- room: the fork's own frames are capped at its max_pages, which follows
  the ledger's credit for it (``credit``).  A write or a fill that finds no
  frame, at that cap or because the hypervisor has none, pauses the vCPU
  and posts a request on the sharing ring (xen/patches/0002).  It reaches
  the pager as a fault that waits for room; once the pager has made room
  (evicting by its policy, from any clone) ``make_room`` raises the cap
  and resumes the vCPU, and Xen allocates again.
- its own pages: ``owned`` lists them (xen/patches/0003), so the ledger
  counts them and the policy can choose among them.
- page-out: a page the fork owns is paged out as a lazy clone's is
  (``evict.py``); its next touch is a request on the paging ring, which
  the pager answers from the page-out store (``load_copy``).

Both rings share the vCPUs' vm_event state in Xen, which 4.17 frees when
either ring goes (xen/patches/0004 keeps it for the last one).
"""

from collections import defaultdict

from zope.interface import implementer

from xenclone.backends.xen import libxc
from xenclone.backends.xen.filled import TouchFill
from xenclone.backends.xen.paging import PagedRegion
from xenclone.interfaces import FaultKind, IForkRegion, PageState


@implementer(IForkRegion)
class ForkPagedRegion(TouchFill, PagedRegion):
    """A fork with its paging ring (``PagedRegion``'s) and its sharing ring."""

    fill_mode = "fork"

    def __init__(self, xc, evtchn, paging_ring, sharing_ring, call, fmem, domid, image):
        super().__init__(xc, evtchn, paging_ring, domid, image)
        self._sharing = sharing_ring
        self._call = call
        self._fmem = fmem
        self.sharing_port = evtchn.bind_interdomain(domid, sharing_ring.port)
        self._room = defaultdict(list)      # pfn -> sharing requests waiting for room
        self._credit, self._cap = 0, None   # the last credit, and max_pages set for it
        self._counts["room_waits"] = 0

    @property
    def ports(self):
        return (self.port, self.sharing_port)

    def take(self):
        """Paging requests (pages the pager paged out) as for a lazy
        clone, then each page a write found no frame for, once, as a fault
        that waits for room."""
        records = super().take()
        while True:
            reqs = self._sharing.take()
            if not reqs:
                return records
            for req in reqs:
                if req.gfn >= self.npages:
                    # Not guest RAM (a ring or special page): a frame for
                    # it, now, without the pager.
                    self.credit(max(1, self._credit), fresh=True)
                    self._sharing.respond([req])
                    self._evtchn.notify(self.sharing_port)
                    continue
                first = not self._room[req.gfn]
                self._room[req.gfn].append(req)
                self.log.debug("fork {domid}: page {pfn} waits for room ({n} requests)",
                               domid=self.domid, pfn=req.gfn, n=len(self._room[req.gfn]))
                if first:
                    self._counts["room_waits"] += 1
                    records.append((self.domid, FaultKind.WRITE, req.gfn))

    def counters(self):
        """The paging ring's, and the sharing ring's: pages whose writes
        wait for room, and where that ring stands."""
        return dict(super().counters(), room_pending=len(self._room),
                    sharing_ring=self._sharing.indices())

    def _fault_kind(self, pfn):
        # Only a page the pager paged out (held) is ever requested on the
        # paging ring: the rest Xen fills from the image domain.
        return FaultKind.HOLD if self._state[pfn] == PageState.HOLD else None

    def waiting_for_room(self):
        return list(self._room)

    def unprotect(self, pfn):
        """The pager made room for the write waiting on ``pfn``: a frame
        more (the credit granted next may give more), then the vCPUs
        waiting on it resume and Xen allocates again."""
        self.credit(max(1, self._credit), fresh=True)
        self._state[pfn] = PageState.PRIVATE
        self._answer_room(pfn)

    def _answer_room(self, pfn):
        reqs = self._room.pop(pfn, None)
        self.log.debug("fork {domid}: room for page {pfn}: {n} requests answered",
                       domid=self.domid, pfn=pfn, n=len(reqs or ()))
        if reqs:
            self._sharing.respond(reqs)
            self._evtchn.notify(self.sharing_port)

    def credit(self, pages, fresh=False):
        """The fork may own ``pages`` more frames than it does now: its
        max_pages, set only when it changes.  The same credit again keeps
        the cap it was given (no hypercall: the pager grants on every
        pump), unless ``fresh``: room made now, counted from the frames the
        fork owns now.  A fork already gone (an ``xl destroy``) is left to
        the watcher that notices it."""
        if pages == self._credit and self._cap is not None and not fresh:
            return
        self._credit = pages
        try:
            cap = self._xc.domain_info(self.domid).tot_pages + max(0, pages)
            if cap != self._cap:
                self._xc.set_max_pages(self.domid, cap)
                self._cap = cap
        except libxc.XenError as e:
            self.log.debug("fork {domid}: credit: {why}", domid=self.domid, why=e)

    def load_copy(self, pfn, data):
        """A page-in takes a frame: room for it first, whatever the
        credit (the pager decided there is room).  The page has its frame
        then, so a write that waited for room on it goes on too."""
        self.credit(max(1, self._credit), fresh=True)
        super().load_copy(pfn, data)
        self._answer_room(pfn)

    def frames(self):
        """(own frames, frames shared with its image domain, paged out),
        Xen's counts."""
        info = self._xc.domain_info(self.domid)
        return info.tot_pages, info.shr_pages, info.paged_pages

    def owned(self):
        """The guest pages the fork owns now (Xen's list): written, or
        copied because they could not be shared."""
        return [pfn for pfn in self._call.fork_pages(self.domid) if pfn < self.npages]

    def drop_paged_out(self):
        """Before a reset: the pages held (paged out, or being paged out)
        leave the fork, so that its next touch of each fills it from the
        image domain.  One call a page: one already gone fails alone."""
        for pfn in [p for p, s in enumerate(self._state) if s == PageState.HOLD]:
            try:
                self._xc.decrease_reservation(self.domid, [pfn])
            except libxc.XenError as e:
                self.log.debug("clone {domid}: drop {pfn}: {why}", domid=self.domid,
                               pfn=pfn, why=e)

    def resume_all(self):
        """A new daemon's rings: vCPUs a dead one left paused for room
        or for a page resume, and ask again if they still need to."""
        vcpus = self._xc.domain_info(self.domid).max_vcpu_id + 1
        self._sharing.resume_vcpus(range(vcpus), "MEM_SHARING")
        self._evtchn.notify(self.sharing_port)

    def close(self):
        """Both rings down, the sharing ring's first: a vCPU waiting for
        room is left paused, as the domain is going."""
        try:
            self._evtchn.unbind(self.sharing_port)
            self._sharing.close()
        except libxc.XenError as e:
            self.log.debug("clone {domid}: sharing ring: {why}", domid=self.domid, why=e)
        super().close()
