"""Clones as VM forks of an image domain (Xen's MEM_SHARING).

An **image domain** is the memory server of one image on a hypervisor with
VM fork: a paused PVH domain that holds the master's memory and suspended
vCPU state.  It is made at bless as a clone filled before run is (``xl
create -p`` of the master's settings, every image page copied in, the HVM
context set), and never runs: the master itself cannot be the parent, since
Xen keeps a parent paused while any fork of it lives.

A **fork clone** is built by hand, as libxl would build a restored domain,
because a fork must start with an empty p2m (``xl create`` populates one):

1. ``xc_domain_create``: an empty PVH domain for the parent's vCPUs;
2. ``xc_memshr_fork``: Xen makes the vCPUs and copies the parent's vCPU and
   HVM state, HVM params and special pages (store, console); every other
   page is filled on the child's first touch, shared with the parent until
   written.  The vCPUs are pinned where the parent's may run (xl's cpumask);
3. two fresh unbound event channels (XenStore, console) replace the
   parent's in the HVM params, and the grant table gets the two refs a
   domain builder seeds;
4. the XenStore home as libxl writes it (name, memory, store, console,
   control, the guest's writable directories), the clone's id, then
   ``XS_INTRODUCE`` (xenstored connects, xenconsoled takes the console);
5. unpause (the backend's step): a Linux clone resumes in a new domain,
   rebinding XenStore and its console.

A fork of the project's guest needs no XenStore: its mailbox is written
through a foreign mapping as for any clone.
"""

from twisted.internet import defer

from xenclone.interfaces import PAGE_SIZE
from xenclone.xenstore.wire import XenStoreError

IMAGE_DOMAIN_PREFIX = "xenclone-image-"


def image_domain_name(image_id):
    """The image domain's name in ``xl list``."""
    return IMAGE_DOMAIN_PREFIX + image_id


def _home(domid):
    return "/local/domain/%d" % domid


def home_nodes(domid, name, memory_kib, vcpus, store, console):
    """The XenStore home of a fork clone: ``(path, value, perms)`` in the
    order to write them (a node before its permissions).  ``store`` and
    ``console`` are ``(gfn, port)``.  dom0 owns what the guest only reads;
    the guest owns what libxl lets it write."""
    home = _home(domid)
    ro = ["n0", "r%d" % domid]
    rw = ["n%d" % domid]
    nodes = [(home, "", ro),
             (home + "/name", name, ro),
             (home + "/domid", str(domid), ro),
             (home + "/memory/static-max", str(memory_kib), ro),
             (home + "/memory/target", str(memory_kib), ro),
             (home + "/memory/videoram", "0", ro),
             (home + "/store/ring-ref", str(store[0]), ro),
             (home + "/store/port", str(store[1]), ro),
             (home + "/console/ring-ref", str(console[0]), ro),
             (home + "/console/port", str(console[1]), ro),
             (home + "/console/type", "xenconsoled", ro),
             (home + "/console/output", "pty", ro),
             (home + "/console/limit", "1048576", ro),
             (home + "/device", "", ro),
             (home + "/control", "", ro)]
    nodes += [(home + "/cpu/%d/availability" % v, "online", ro) for v in range(vcpus)]
    nodes += [(home + "/control/" + leaf, "", rw)
              for leaf in ("shutdown", "feature-poweroff", "feature-reboot",
                           "feature-suspend", "sysrq")]
    nodes += [(home + "/" + leaf, "", rw)
              for leaf in ("data", "drivers", "feature", "attr", "error")]
    return nodes


def _inherited(written, path):
    """The permissions ``path`` gets from its nearest ancestor in
    ``written`` (None: from one not written here)."""
    while "/" in path.strip("/"):
        path = path.rsplit("/", 1)[0]
        if path in written:
            return written[path]
    return None


@defer.inlineCallbacks
def write_home(xs, domid, name, memory_kib, vcpus, store, console, extra=(), writer=None):
    """The clone's XenStore home, ``extra`` nodes ``(path, value, perms)``
    (its id) after it, through ``writer`` (default ``xs``), then its
    introduction to xenstored."""
    nodes, written = [], {}
    for path, value, perms in list(home_nodes(domid, name, memory_kib, vcpus, store,
                                              console)) + list(extra):
        # xenstored gives the nodes dom0 creates their nearest ancestor's
        # permissions: only a node that differs from it needs its own.
        nodes.append((path, value, None if _inherited(written, path) == perms else perms))
        written[path] = perms
    yield (writer or xs).write_nodes(nodes)
    yield xs.introduce(domid, store[0], store[1])


def clone_id_nodes(domid, clone_id):
    """The clone's id where its guest reads it (dom0's node, readable by
    the clone): what ``linux.write_clone_id`` writes for other clones."""
    path = _home(domid) + "/xenclone"
    perms = ["n0", "r%d" % domid]
    return [(path, "", perms), (path + "/clone-id", str(clone_id), perms)]


def make_child(xc, parent, vcpus):
    """Steps 1-3 for one child of ``parent``: ``(domid, store, console)``,
    each ``(gfn, port)``.  The child is paused, its XenStore home not
    written yet.  A failure leaves nothing behind."""
    domid = xc.create_pvh(vcpus)
    try:
        xc.fork(parent, domid)      # makes the child's vCPUs
        xc.copy_affinity(parent, domid, vcpus)
        store, console = wire(xc, domid)
    except Exception:
        xc.destroy(domid)
        raise
    return domid, store, console


def wire(xc, domid):
    """Step 3: fresh XenStore and console ports (a fork has the parent's
    numbers and no channels), and the grant refs to their pages."""
    store_port = xc.evtchn_alloc_unbound(domid)
    console_port = xc.evtchn_alloc_unbound(domid)
    xc.set_hvm_param(domid, "STORE_EVTCHN", store_port)
    xc.set_hvm_param(domid, "CONSOLE_EVTCHN", console_port)
    store_gfn = xc.hvm_param(domid, "STORE_PFN")
    console_gfn = xc.hvm_param(domid, "CONSOLE_PFN")
    xc.gnttab_seed(domid, console_gfn, store_gfn)
    return (store_gfn, store_port), (console_gfn, console_port)


@defer.inlineCallbacks
def unwire(xs, xc, domid):
    """What a fork clone leaves in XenStore once Xen destroyed it: its
    connection (xenstored may have let it go already) and its home."""
    for step in (lambda: xs.release(domid), lambda: xs.rm(_home(domid))):
        try:
            yield step()
        except XenStoreError as e:
            if e.code not in ("ENOENT", "EINVAL"):
                raise


def memory_kib(npages):
    return npages * PAGE_SIZE // 1024
