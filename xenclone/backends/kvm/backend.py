"""The embedded backend, daemon side: drives the VMM host over its socket."""

import base64
import os

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from xenclone.backends.kvm.microvm import host_features
from xenclone.backends.kvm.uffd_source import KvmRegion
from xenclone.image import Capture
from xenclone.interfaces import IBackend
from xenclone.wire import WireError


@implementer(IBackend)
class KvmBackend:
    name = "kvm"
    fill_mode = "lazy"
    log = Logger()

    def __init__(self, link):
        self.link = link          # a connected wire.FrameProtocol to the VMM host
        self._zero_maps = {}      # (image, generation) -> cffi buffer shared by clones

    def capabilities(self):
        return dict(host_features(), backend="kvm", lazy_fill=True, fill_mode="lazy",
                    fill_modes=["lazy"], sharing="memfd+minor+wp",
                    eviction=["drop-clean", "drop-shared", "page-out"])

    def create_master(self, spec):
        return self.link.request("create_master", domid=spec.domid, name=spec.name,
                                 npages=spec.npages, params=spec.params, meta=spec.meta)

    def capture(self, domid):
        def capture(msg):
            return Capture(arch=msg["arch"], vcpu_state=base64.b64decode(msg["vcpu_state"]),
                           mem_fd=msg.fds[0], npages=msg["npages"])

        return self.link.request("capture", domid=domid).addCallback(capture)

    def _zero_map(self, image):
        key = (image.image_id, image.generation)
        if key not in self._zero_maps:
            self._zero_maps[key] = KvmRegion.zero_buffer(image.zero)
        return self._zero_maps[key]

    def forget_image(self, image):
        self._zero_maps.pop((image.image_id, image.generation), None)
        # Clones made ahead for it map it: the VMM host lets them go.
        st = os.fstat(image.mem_fd)
        self.link.request("forget_image", dev=st.st_dev, ino=st.st_ino).addErrback(
            lambda f: self.log.warn("VMM host did not forget image {image}: {why}",
                                    image=image.image_id, why=f.getErrorMessage()))

    def launch(self, image, clone):
        if clone.fill == "before-run":
            return defer.fail(WireError("unsupported", "the kvm backend fills clones lazily "
                                        "(userfaultfd) only: fill=before-run is a Xen mode"))
        zero = self._zero_map(image)
        d = self.link.request(
            "launch", fds=[image.mem_fd], domid=clone.domid, name=clone.name,
            arch=image.arch, npages=image.npages,
            vcpu_state=base64.b64encode(image.vcpu_state).decode(),
            clone_id=clone.clone_id, input=clone.input, paused=clone.paused,
            prefill=clone.share, meta=clone.meta)
        def region(msg):
            return KvmRegion(clone.domid, msg.fds[0], msg["base"], msg["npages"], zero,
                             msg.get("prefilled", []))

        return d.addCallback(region)

    def reattach(self, domid, image):
        zero = self._zero_map(image)
        d = self.link.request("reattach", domid=domid)
        return d.addCallback(lambda msg: (
            KvmRegion(domid, msg.fds[0], msg["base"], msg["npages"], zero), list(msg.payload)))

    def pause(self, domid):
        return self.link.request("pause", domid=domid)

    def unpause(self, domid):
        return self.link.request("unpause", domid=domid)

    def destroy(self, domid):
        return self.link.request("destroy", domid=domid)

    def page_kinds(self, domid, pfns):
        d = self.link.request("page_kinds", domid=domid, pfns=list(pfns))
        return d.addCallback(lambda msg: msg["kinds"])

    def page_sums(self, domid, pfns):
        d = self.link.request("page_sums", domid=domid, pfns=list(pfns))
        return d.addCallback(lambda msg: msg["sums"])

    def drop_clean(self, domid, pfns):
        d = self.link.request("drop_clean", domid=domid, pfns=list(pfns))
        return d.addCallback(lambda msg: msg["dropped"])

    def page_out(self, domid, pfns, slots, store_path, sync):
        d = self.link.request("page_out", domid=domid, pfns=list(pfns), slots=list(slots),
                              store=store_path, sync=bool(sync))
        return d.addCallback(lambda msg: msg["crcs"])

    def scan(self, domid):
        return self.link.request("scan", domid=domid).addCallback(lambda msg: msg["counts"])

    def ping(self):
        return self.link.request("ping").addCallback(lambda msg: msg.fields)

    def domains(self):
        return self.link.request("list").addCallback(lambda msg: msg["domains"])
