"""Images of another host's memory server, served to clones on this one.

``MirroringMemoryServer`` is the daemon's ``IMemoryServer``: this host's
memory server, plus (if configured) a remote one over TLS.  Launching an
image this host lacks asks the remote server to describe it and records it
here as a *mirror* (info, vCPU state, zero map, the CRC of every page; no
pages).  The mirror's memfd fills as clones fault, one fetch from the
remote server at a time, each page checked against the CRC described
(``page_crcs``), and clones share what it holds as they share a local
image's pages.
A cut link is the pager's usual case: faults wait, fetches retry with
backoff, and the link reconnects.
"""

import os

from twisted.internet import defer
from zope.interface import implementer

from xenclone.interfaces import PAGE_SIZE, IMemoryServer
from xenclone.memserver import page_crcs
from xenclone.memserver.store import MAX_PAGES
from xenclone.wire import WireError


def _checked(data, origin, pfn, count):
    """Pages from the origin as it described them at mirror time: a run of
    the wrong size would land on its neighbours, a page whose CRC is not
    the one described is not the image's."""
    if len(data) != count * PAGE_SIZE:
        raise WireError("bad-reply", "%s sent %d bytes for %d pages"
                        % (origin["server"], len(data), count))
    bad = page_crcs.first_bad(origin["crcs"], pfn, data)
    if bad is not None:
        raise WireError("corrupt-page", "page %d of %s from %s does not match its CRC"
                        % (bad, origin["image"], origin["server"]))
    return data


@implementer(IMemoryServer)
class MirroringMemoryServer:
    def __init__(self, local, remote=None):
        self.local = local
        self.remote = remote          # a RemotePageSource, or None
        self._origins = {}            # image id -> its origin and generation

    def put(self, name, capture):
        return self.local.put(name, capture)

    @defer.inlineCallbacks
    def open(self, image_id):
        try:
            image = yield self.local.open(image_id)
        except WireError as e:
            if e.code != "unknown-image" or self.remote is None:
                raise
            yield self._mirror(image_id)
            image = yield self.local.open(image_id)
        if image.origin is not None and image_id not in self._origins:
            try:
                crcs = yield page_crcs.fetch_table(self.local, image_id, image.npages)
            except BaseException:
                os.close(image.mem_fd)
                raise
            self._origins[image_id] = dict(image.origin, generation=image.generation,
                                           crcs=crcs)
        return image

    @defer.inlineCallbacks
    def _mirror(self, image_id):
        try:
            described = yield self.remote.describe(image_id)
        except WireError as e:
            if e.code == "unknown-image":
                raise WireError("unknown-image", "no image %r here nor on %s"
                                % (image_id, self.remote.address))
            raise
        npages = described[0].get("npages")
        if type(npages) is not int or not 0 < npages <= MAX_PAGES:
            raise WireError("bad-reply", "%s described %r with %r pages"
                            % (self.remote.address, image_id, npages))
        crcs = yield page_crcs.fetch_table(self.remote, image_id, npages)
        try:
            yield self.local.mirror(image_id, described, self.remote.address,
                                    page_crcs.to_bytes(crcs))
        except WireError as e:
            if e.code != "exists":      # a launch beside this one mirrored it first
                raise

    def fetch(self, image_id, pfn, count):
        origin = self._origins.get(image_id)
        if origin is None:
            return self.local.fetch(image_id, pfn, count)
        if self.remote is None or self.remote.address != origin["server"]:
            return defer.fail(WireError("no-remote", "image %r mirrors %s, which is not the "
                                        "configured memserver_remote" % (image_id, origin["server"])))
        d = self.remote.fetch(origin["image"], pfn, count, generation=origin["generation"])
        return d.addCallback(_checked, origin, pfn, count)

    def discard(self, image_id):
        self._origins.pop(image_id, None)     # a mirror made again is read afresh
        return self.local.discard(image_id)

    def images(self):
        return self.local.images()

    def ping(self):
        return self.local.ping()

    def domain(self, action, force=False):
        return self.local.domain(action, force)
