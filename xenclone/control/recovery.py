"""Taking back what a previous daemon left running.

The backend's processes outlive the daemon: the VMM host keeps every
micro-VM and its userfaultfd (a fault raised while no daemon runs waits in
it), the memory server keeps the images.  A daemon that starts lists the
backend's domains, rebuilds its table from the record each domain carries
(``meta``), takes each clone's fault handle back and has the pager rebuild
the ledger from the kernel's view (pagemap) and the page-out stores'
indexes, which the VMM host writes before it drops a page.  No journal of
the daemon's own is needed: nothing it knew is lost with it.
"""

from twisted.internet import defer
from twisted.logger import Logger

from xenclone.control.records import Domain
from xenclone.names import check_generation, check_id, check_name

log = Logger()


@defer.inlineCallbacks
def recover(controller):
    """Take back every domain the backend runs; Deferred[count]."""
    backend = controller.backend
    taken = 0
    for info in sorted((yield backend.domains()), key=lambda i: i["domid"]):
        meta = info.get("meta") or {}
        domid = info["domid"]
        controller.reserve_domid(domid)
        dom = Domain(domid, info["name"], info["role"], meta.get("memory_mib"),
                     image=meta.get("image"), clone_id=meta.get("clone_id"),
                     input=meta.get("input"), params=meta.get("params"), state=info["state"],
                     result=info.get("result"))
        if dom.role == "clone":
            try:
                yield _take_clone(controller, dom, meta)
            except Exception:
                log.failure("clone {domid} ({name}) could not be taken back; it waits, "
                            "unserved", domid=domid, name=dom.name)
                continue
        controller.domains[domid] = dom
        taken += 1
    if taken:
        log.info("took back {n} domains a previous daemon left running", n=taken)
    return taken


@defer.inlineCallbacks
def _take_clone(controller, dom, meta):
    # The record came back from another process: checked as names from outside.
    check_name(dom.image, "image name")
    check_generation(meta.get("generation"))
    check_id(dom.clone_id, "clone id")
    image = yield controller.open_image(dom.image)
    if image.generation != meta.get("generation"):
        raise ValueError("image %s is at generation %s, the clone was made from %s"
                         % (dom.image, image.generation, meta.get("generation")))
    region, kinds = yield controller.backend.reattach(dom.domid, image)
    paged_out = controller.pager.store(dom.domid).index()
    controller.pager.reattach(region, image, kinds, paged_out, meta.get("share", True))
    controller.note_clone_id(dom.image, dom.clone_id)
    stats = controller.ledger.clone_stats(dom.domid)
    log.info("clone {domid} taken back: {shared} shared, {private} private, {paged_out} "
             "paged-out pages", domid=dom.domid, shared=stats["shared_pages"],
             private=stats["private_pages"], paged_out=stats["paged_out_pages"])
