"""The control ops on images and the memory server that holds them:
``images``, ``page``, ``memserver`` (status, start, stop) and ``discard``.

A mixin of ``Controller``.  An image's grant mappings go before the memory
server ends its grants (``forget_image`` first), and an image that clones
were blessed from, or that clones of the memory-server domain fault from,
is refused unless forced.
"""

import hashlib
import os

from twisted.internet import defer

from xenclone.control.args import _image_arg, _int
from xenclone.control.records import LIVE
from xenclone.interfaces import DomainState, IForkBackend
from xenclone.wire import WireError


class ImageOps:
    """Images' ops; needs ``Controller``'s ``backend``, ``memserver``,
    ``pager``, ``domains``, ``_images``, ``working_sets`` and its helpers
    (``_set_state``, ``_changed``, ``op_destroy``)."""

    def _image_domains(self):
        """Each image's image domain (Xen VM fork), with its memory."""
        if not IForkBackend.providedBy(self.backend):
            return {}
        return self.backend.image_domains()

    def op_images(self, msg):
        def annotate(images):
            held = self._image_domains()
            for info in images:
                info["clones"] = sum(1 for d in self.domains.values() if d.image == info["image_id"])
                if info["image_id"] in held:
                    info["image_domain"] = held[info["image_id"]]
                if self.working_sets is not None:
                    info["working_set"] = self.working_sets.info(info["image_id"],
                                                                 info["generation"])
            return {"images": images}

        return self.memserver.images().addCallback(annotate)

    def op_page(self, msg):
        """Digest of image pages, read through the memory server."""
        image_id = _image_arg(msg)
        pfn = _int(msg, "pfn", 0, 2**40)
        count = _int(msg, "count", 1, 256, default=1)

        def digest(data):
            return {"image": image_id, "pfn": pfn, "count": count,
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "zero": not any(data)}

        return self.memserver.fetch(image_id, pfn, count).addCallback(digest)

    def op_memserver(self, msg):
        """The memory-server domain: status, start, or stop.  Stop is
        refused while clones fault pages in from it, or while it holds
        images, unless ``force``: then those clones are paused
        (``paused-image-gone``) and its images are gone."""
        action = msg.get("action")
        if action not in ("status", "start", "stop"):
            raise WireError("bad-argument", "memserver wants status, start or stop")
        if action != "stop":
            return self.memserver.domain(action).addCallback(
                lambda status: dict(status, image_domains=self._image_domains()))
        force = bool(msg.get("force"))

        @defer.inlineCallbacks
        def stop():
            status = yield self.memserver.domain("status")
            gone = set(status.get("images", ()))
            lazy = [d for d in self.domains.values() if d.image in gone
                    and d.fill_mode == "lazy" and d.state in LIVE]
            if lazy and not force:
                raise WireError("busy", "clones %s fault their pages in from the memory-server "
                                "domain: destroy them, or use --force to pause them"
                                % ", ".join(d.name for d in lazy))
            for image_id in gone & set(self._images):
                self.backend.forget_image(self._images[image_id])     # before the grants end
            result = yield self.memserver.domain("stop", force)
            for dom in lazy:
                yield self.backend.pause(dom.domid)
                self._set_state(dom, DomainState.IMAGE_GONE)
            for image_id in gone:
                image = self._images.pop(image_id, None)
                if image is not None:
                    os.close(image.mem_fd)
                if not any(d.image == image_id for d in self.domains.values()):
                    self.pager.forget_image(image_id)
            self._changed()
            return dict(result, paused=[d.domid for d in lazy])

        return stop()

    def op_discard(self, msg):
        image_id = _image_arg(msg)     # None would be every master's "image"
        derived = sorted(i for i, d in self._image_domains().items()
                         if d.get("parent_image") == image_id)
        if derived:
            raise WireError("busy", "images %s were blessed from clones of %r and share its "
                            "pages: discard them first" % (", ".join(derived), image_id))
        clones = [d for d in self.domains.values() if d.image == image_id]
        if clones and not msg.get("force"):
            raise WireError("busy", "image %r has %d live clones; destroy them or use --force"
                            % (image_id, len(clones)))

        @defer.inlineCallbacks
        def discard():
            for dom in clones:
                yield self.op_destroy({"domain": dom.domid})
            if image_id in self._images:
                # Its grant mappings go before the memory server ends the grants.
                self.backend.forget_image(self._images[image_id])
            if IForkBackend.providedBy(self.backend):
                yield self.backend.drop_image(image_id)
            yield self.memserver.discard(image_id)
            if self.working_sets is not None:
                self.working_sets.forget(image_id)
            image = self._images.pop(image_id, None)
            if image is not None:
                self.pager.forget_image(image_id)
                os.close(image.mem_fd)
            self._changed()
            return {"image": image_id, "destroyed": [d.domid for d in clones]}

        return discard()
