"""Image domains: one paused domain per image, the parent of its fork clones.

- Made at bless (``prepare``) where the hypervisor has VM fork: ``xl create
  -p`` of the master's settings under the name ``xenclone-image-<image>``,
  every image page copied in (the backend's fill), the master's HVM context
  set, memory sharing enabled.  The first refusal of sharing (a Xen without
  MEM_SHARING, or 4.17 on AMD without the project's patch) is remembered:
  fork is then not offered, and the image domain is not kept.
- Kept across daemon restarts by a record in the backend's work directory
  (``image-<image>.json``), taken back while Xen still has the domain.
- Destroyed when its image is discarded, after its clones.
"""

import errno
import json
import os

from twisted.internet import defer
from twisted.logger import Logger

from xenclone.backends.xen import fork, libxc, xl
from xenclone.wire import WireError

# Errors of xc_memshr_control that mean "this hypervisor does not fork".
_NO_FORK = {errno.EOPNOTSUPP: "memory sharing is not supported on this CPU (Xen 4.17 "
                              "allows it on Intel VMX only; xen/patches has the rig's AMD patch)",
            errno.ENOSYS: "the hypervisor has no MEM_SHARING (CONFIG_MEM_SHARING=y; "
                          "make xen-debs builds one)",
            errno.ENODEV: "the image domain has no HAP"}


class ImageDomains:
    log = Logger()

    def __init__(self, reactor, xc, work_dir):
        self.reactor = reactor
        self.xc = xc
        self.work_dir = work_dir
        self.refused = None if xc.fork_probe() else _NO_FORK[errno.ENOSYS]
        self._domids = {}       # image id -> domid
        self._parents = {}      # image id -> the image its domain is a fork of
        self._take_back()

    @property
    def available(self):
        return self.refused is None

    def _path(self, image_id):
        return os.path.join(self.work_dir, "image-%s.json" % image_id)

    def _take_back(self):
        for name in sorted(os.listdir(self.work_dir)):
            if not (name.startswith("image-") and name.endswith(".json")):
                continue
            with open(os.path.join(self.work_dir, name)) as f:
                rec = json.load(f)
            if self._alive(rec["domid"]):
                self._domids[rec["image"]] = rec["domid"]
                if rec.get("parent"):
                    self._parents[rec["image"]] = rec["parent"]
            else:
                os.unlink(os.path.join(self.work_dir, name))

    def _alive(self, domid):
        try:
            return not self.xc.domain_info(domid).dying
        except libxc.XenError:
            return False

    def parent(self, image_id):
        """The image domain of ``image_id``, or a WireError saying why a
        fork of it cannot be made."""
        if self.refused is not None:
            raise WireError("no-fork", "fill=fork needs VM fork: %s" % self.refused)
        domid = self._domids.get(image_id)
        if domid is None:
            raise WireError("no-image-domain", "image %s has no image domain (it was blessed "
                            "before fork was offered): bless its master again" % image_id)
        if not self._alive(domid):
            raise WireError("image-domain-gone", "the image domain of %s (domain %d) is gone: "
                            "its clones are paused; discard the image" % (image_id, domid))
        return domid

    def domid(self, image_id):
        return self._domids.get(image_id)

    def gone(self):
        """Image ids whose domain Xen no longer runs."""
        return [i for i, d in self._domids.items() if not self._alive(d)]

    def info(self):
        """{image id: {domid, name, pages, shared_pages}} from Xen."""
        out = {}
        for image_id, domid in self._domids.items():
            try:
                i = self.xc.domain_info(domid)
            except libxc.XenError:
                continue
            out[image_id] = {"domid": domid, "name": fork.image_domain_name(image_id),
                             "pages": i.tot_pages, "shared_pages": i.shr_pages,
                             "parent_image": self._parents.get(image_id)}
        return out

    def children(self, image_id):
        """Images whose domains are forks of this image's."""
        return sorted(i for i, p in self._parents.items() if p == image_id)

    @defer.inlineCallbacks
    def prepare(self, image_id, create, fill, parent=None):
        """Make the image domain of ``image_id`` unless fork is refused or
        it exists: ``create(name)`` gives a paused domain of the master's
        settings (Deferred[domid]) and ``fill(domid)`` copies the image and
        its vCPU state into it (Deferred).  ``parent``: the image whose
        domain ``create`` forked."""
        if self.refused is not None or image_id in self._domids:
            return
        domid = yield create(fork.image_domain_name(image_id))
        try:
            yield fill(domid)
            self.xc.memshr_control(domid, True)
        except libxc.XenError as e:
            yield self._destroy(domid)
            if e.errno not in _NO_FORK:
                raise
            self.refused = _NO_FORK[e.errno]
            self.log.warn("VM fork refused ({why}): clones are not forks", why=self.refused)
            return
        except Exception:
            yield self._destroy(domid)
            raise
        self._domids[image_id] = domid
        if parent is not None:
            self._parents[image_id] = parent
        with open(self._path(image_id) + ".tmp", "w") as f:
            json.dump({"image": image_id, "domid": domid, "parent": parent}, f)
        os.replace(self._path(image_id) + ".tmp", self._path(image_id))
        self.log.info("image {image}: image domain {domid} ready", image=image_id, domid=domid)

    @defer.inlineCallbacks
    def _destroy(self, domid):
        try:
            yield xl.destroy(self.reactor, domid)
        except WireError as e:
            self.log.error("image domain {domid} left behind: {why}", domid=domid, why=e)

    @defer.inlineCallbacks
    def drop(self, image_id):
        """The image is discarded: its domain goes (its clones went first)."""
        if self.children(image_id):
            raise WireError("busy", "image %s has derived images (%s) whose domains fork "
                            "from its own: discard them first"
                            % (image_id, ", ".join(self.children(image_id))))
        domid = self._domids.pop(image_id, None)
        self._parents.pop(image_id, None)
        if os.path.exists(self._path(image_id)):
            os.unlink(self._path(image_id))
        if domid is not None:
            yield self._destroy(domid)
