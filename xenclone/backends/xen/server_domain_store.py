"""Images held in the memory-server domain (Xen), not in dom0.

A bless copies the master's non-zero pages, foreign-mapped, straight into
a run of the server domain's frames, grant-mapped; the image directory
keeps meta.json and the zero map only, and names the run.  Pagers map the
run's grants (``OpenImage.server_domain``); the memfd passed at ``open``
stays empty, so the kernel counts nothing of the image in dom0.  Each
image's run is published in XenStore as one node,
``/local/domain/<server>/xenclone/images/<name> = "<first-ref> <count>"``.

The images live as long as the server domain does: a restarted memory
server finds the domain (``server-domain.json``) and keeps them; images
of a domain that is gone are dropped, with the reason logged.
"""

import os
import shutil
import subprocess

from twisted.logger import Logger

from xenclone.backends.xen.server_domain import Run
from xenclone.interfaces import PAGE_SIZE
from xenclone.memserver import page_crcs
from xenclone.memserver.store import (
    CHUNK, ImageStore, StoredImage, new_memfd, new_meta, nonzero_runs, seal)
from xenclone.wire import WireError

log = Logger(namespace="xenclone.memserver")

_ZERO_PAGE = bytes(PAGE_SIZE)
RECORD = "server-domain.json"
CHUNK_PAGES = CHUNK // PAGE_SIZE
XENSTORE_TIMEOUT = 10.0


def images_path(domid):
    return "/local/domain/%d/xenclone/images" % domid


def xenstore_publish(domid, name, value):
    """The image's node under the server domain (value None removes it).
    Publishing is for readers elsewhere: a failure is logged, and never
    fails the bless or discard."""
    path = "%s/%s" % (images_path(domid), name)
    args = ["xenstore-write", path, value] if value is not None else ["xenstore-rm", path]
    try:
        subprocess.run(args, check=True, timeout=XENSTORE_TIMEOUT, capture_output=True)
    except (OSError, subprocess.SubprocessError) as e:
        log.error("cannot publish image {image_id} in XenStore: {why}", image_id=name, why=e)


def domain_reader(fm):
    """``reader(domid)`` for a store: ``read(pfn, n)`` of a paused
    domain's RAM, foreign-mapped (fm: ``libxc.ForeignMemory``)."""
    from xenclone.backends.xen.libxc import XenError

    def reader(domid):
        def read(pfn, n):
            try:
                with fm.map(domid, range(pfn, pfn + n), writable=False) as m:
                    return bytes(m.buffer)
            except XenError as e:
                raise WireError("xen-error", "cannot read domain %d: %s" % (domid, e))
        return read
    return reader


class DomainImageStore(ImageStore):
    """``server`` is a ``server_domain.ServerDomain``, or None while no
    server domain runs (blesses are then refused); ``publish`` is
    ``xenstore_publish`` or a stand-in."""

    def __init__(self, directory, domain_reader, server=None, publish=xenstore_publish):
        super().__init__(directory, domain_reader)
        self.server = server
        self._publish = publish

    def _slots(self):
        if self.server is None:
            raise WireError("no-server-domain", "no memory-server domain runs: "
                            "xenclone memserver start")
        return self.server.slots

    def _bless(self, name, capture):
        npages = capture.npages
        with self._lock:
            run = self._slots().take(npages)
            free = self.server.slots.free()
        if run is None:
            raise WireError("server-full", "image %r needs %d pages in one run; the "
                            "memory-server domain has %d free (config memserver_domain_mib): "
                            "discard images or give the domain more memory"
                            % (name, npages, free))
        memfd = None
        try:
            self.server.grant(run)
            crcs = page_crcs.new_table(npages)
            zero = self._copy_in(run, self._reader(capture), npages, crcs)
            meta = dict(new_meta(name, capture, zero), server_domain={
                "domid": self.server.domid, "slot": run.first,
                "first_ref": run.refs.start, "count": run.count})
            memfd = new_memfd(name, npages)
            seal(memfd)
            self._commit(self._fresh_tmp(name), name, meta, zero, crcs)
        except BaseException:
            if memfd is not None:
                os.close(memfd)
            self._give_back(run)
            raise
        self._publish(self.server.domid, name, run.xenstore())
        return StoredImage(meta, capture.vcpu_state, memfd, zero, crcs)

    def _copy_in(self, run, read, npages, crcs):
        """Copy the non-zero pages into the run, noting their CRCs; the zero
        map.  Runs never cross a chunk, so each chunk's grants are mapped
        once."""
        zero = bytearray(b"\x01") * npages
        mapped, base = None, None
        try:
            for pfn, data in nonzero_runs(read, npages):
                if base is None or not base <= pfn < base + CHUNK_PAGES:
                    if mapped is not None:
                        mapped.close()
                    base = pfn - pfn % CHUNK_PAGES
                    mapped = self.server.map(run, base, min(CHUNK_PAGES, npages - base),
                                             writable=True)
                offset = (pfn - base) * PAGE_SIZE
                mapped.buffer[offset:offset + len(data)] = data
                zero[pfn:pfn + len(data) // PAGE_SIZE] = bytes(len(data) // PAGE_SIZE)
                page_crcs.note(crcs, pfn, data)
        finally:
            if mapped is not None:
                mapped.close()
        return zero

    def _give_back(self, run):
        busy = self.server.revoke(run)
        with self._lock:
            if busy:
                # Mapped still: the frames must not take another image.
                log.error("{busy} pages of slots {first}+{count} still mapped at revoke; "
                          "kept out of use", busy=busy, first=run.first, count=run.count)
            else:
                self.server.slots.give_back(run)

    def _admit(self, path, meta):
        """Keep the run of an image in the server domain that runs; drop
        those of one that is gone."""
        where = meta.get("server_domain")
        if where is None:
            return
        if self.server is None:     # kept: a later start may find the domain
            raise ValueError("its memory-server domain %d is not running here"
                             % where["domid"])
        if where["domid"] != self.server.domid:
            shutil.rmtree(path, ignore_errors=True)
            raise ValueError("it lived in memory-server domain %d, which is gone: dropped"
                             % where["domid"])
        with self._lock:
            self.server.slots.keep(Run(where["slot"], where["count"]))

    def _read(self, img, pfn, count):
        if "server_domain" not in img.meta:
            return super()._read(img, pfn, count)
        if self.server is None:
            raise WireError("no-server-domain", "image %r lived in the memory-server domain, "
                            "which is gone" % img.meta["image_id"])
        with self.server.map(_run(img), pfn, count, writable=False) as m:
            data = bytearray(m.buffer)
        # Zero pages were never copied: their frames hold whatever they held.
        for i in range(count):
            if img.zero[pfn + i]:
                data[i * PAGE_SIZE:(i + 1) * PAGE_SIZE] = _ZERO_PAGE
        return bytes(data)

    def discard(self, image_id, close=os.close):
        img = self._get(image_id)
        super().discard(image_id, close)
        if "server_domain" in img.meta and self.server is not None:
            self._give_back(_run(img))
            self._publish(self.server.domid, image_id, None)

    def domain_images(self):
        return sorted(name for name, img in self._images.items()
                      if "server_domain" in img.meta)

    def drop_domain_images(self):
        """The server domain is going: forget every image in it."""
        for name in self.domain_images():
            self.discard(name)

    def close(self):
        super().close()
        if self.server is not None:
            self.server.close()


def _run(img):
    where = img.meta["server_domain"]
    return Run(where["slot"], where["count"])
