"""The memory server's side of the memory-server domain: start (or find
again after a restart), status and stop, and the XenStore nodes that
publish its images; ``xen_image_store`` makes the memory server's store
on Xen.

The domain is named ``server_domain.NAME``; ``server-domain.json`` in the
image directory records its domid and size, so a restarted memory server
knows the domain it finds is its own and how big it was made.
"""

import json
import os

from twisted.internet import defer
from twisted.logger import Logger

from xenclone.backends.xen import server_domain as sd
from xenclone.backends.xen import xl
from xenclone.backends.xen.server_domain_store import (RECORD, DomainImageStore, domain_reader,
                                                      images_path)
from xenclone.memserver.store import ImageStore
from xenclone.wire import WireError

log = Logger(namespace="xenclone.memserver")


def xen_image_store(reactor, directory, server_domain_mib, server_kernel):
    """(store, ServerDomainLife or None) of a memory server on Xen: it
    blesses domains by domid; with a server domain configured, or one still
    running from before, images go into it."""
    from xenclone.backends.xen import libxc
    fm = libxc.ForeignMemory()
    if not server_domain_mib and not still_running(directory):
        return ImageStore(directory, domain_reader(fm)), None
    store = DomainImageStore(directory, domain_reader(fm))
    return store, ServerDomainLife(reactor, store, server_domain_mib, server_kernel,
                                   fm, libxc.GntTab())


def still_running(directory):
    """Whether the server domain recorded in ``directory`` still runs."""
    from xenclone.backends.xen.libxc import XenError
    from xenclone.backends.xen.xenctrl import XenCtrl
    try:
        with open(os.path.join(directory, RECORD)) as f:
            domid = json.load(f)["domid"]
    except FileNotFoundError:
        return False
    xc = XenCtrl()
    try:
        info = xc.domain_info(domid)
    except XenError:
        info = None
    finally:
        xc.close()
    return info is not None and not info.dying


class ServerDomainLife:
    """Start, find again, describe and stop the memory-server domain that
    ``store`` (a ``DomainImageStore``) keeps its images in."""

    def __init__(self, reactor, store, memory_mib, kernel, fm, gnttab):
        self.reactor = reactor
        self.store = store
        self.memory_mib = memory_mib
        self.kernel = kernel
        self._fm, self._gnttab = fm, gnttab
        self._record = os.path.join(store.dir, RECORD)
        self.error = None       # why the last start failed

    def _read_record(self):
        try:
            with open(self._record) as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def _write_record(self, domid, mib):
        with open(self._record + ".tmp", "w") as f:
            json.dump({"domid": domid, "memory_mib": mib}, f)
        os.replace(self._record + ".tmp", self._record)

    @defer.inlineCallbacks
    def _running(self):
        """The domid of a domain named NAME, or None."""
        try:
            out = yield xl.run(self.reactor, ["domid", sd.NAME], timeout=10)
        except WireError as e:
            if e.code == "xl-failed":
                return None
            raise
        return int(out.strip())

    @defer.inlineCallbacks
    def start(self):
        """Find our server domain again, or create it; its status."""
        if self.store.server is not None:
            return self.status()
        domid = yield self._running()
        rec = self._read_record()
        if domid is not None and not (rec and rec["domid"] == domid):
            raise WireError("not-ours", "a domain named %s (domain %d) runs, but this memory "
                            "server did not make it: xl destroy it first" % (sd.NAME, domid))
        if domid is not None:
            mib = rec["memory_mib"]
            log.info("found memory-server domain {domid} again ({mib} MiB)", domid=domid, mib=mib)
        else:
            if not self.memory_mib:
                raise WireError("no-server-domain", "memserver_domain_mib is 0: set the "
                                "memory-server domain's size in the config first")
            mib = self.memory_mib
            domid = yield sd.create(self.reactor, self.store.dir, sd.NAME, self.kernel, mib)
            self._write_record(domid, mib)
            log.info("started memory-server domain {domid} ({mib} MiB)", domid=domid, mib=mib)
        self.store.server = sd.ServerDomain(domid, mib, self._fm, self._gnttab)
        self.error = None
        return self.status()

    def status(self):
        server = self.store.server
        if server is None:
            return {"running": False, "memory_mib": self.memory_mib, "error": self.error}
        rec = self._read_record()
        return {"running": True, "domid": server.domid, "name": sd.NAME,
                "memory_mib": rec["memory_mib"],
                "max_grant_frames": sd.grant_frames(rec["memory_mib"]),
                "pages": server.slots.total, "free_pages": server.slots.free(),
                "images": self.store.domain_images(),
                "xenstore": images_path(server.domid)}

    @defer.inlineCallbacks
    def stop(self, force=False):
        """Destroy the server domain.  Its images go with it, so with any
        there this needs ``force``."""
        server = self.store.server
        if server is None:
            return self.status()
        images = self.store.domain_images()
        if images and not force:
            raise WireError("busy", "the memory-server domain holds %d images (%s); they "
                            "would be lost: discard them or use --force"
                            % (len(images), ", ".join(images)))
        self.store.drop_domain_images()
        self.store.server = None
        server.close()
        yield xl.destroy(self.reactor, server.domid)
        os.unlink(self._record)
        log.info("stopped memory-server domain {domid}; {n} images went with it",
                 domid=server.domid, n=len(images))
        return dict(self.status(), dropped=images)
