"""The image store: blessed images on disk, cached in RAM as memfds.

Layout, one directory per image::

    <dir>/<image_id>/meta.json   identity, geometry, vCPU state (base64)
    <dir>/<image_id>/memory      sparse: zero pages are holes
    <dir>/<image_id>/zero        one byte per page, 1 where the page is zero

A *mirror* is a remote memory server's image known on this host: its
meta.json names the ``origin`` and it has no memory file.  Its memfd starts
empty and holds the pages this host's pagers fetched from the origin, so
clones share them as they share a local image's.

An image is written into a temporary directory and renamed into place, so
a crash leaves either the whole image or nothing.  Plain synchronous code:
the server runs ``put`` in a thread, so the table is guarded by a lock.
"""

import base64
import fcntl
import json
import os
import shutil
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from zope.interface import implementer

from xenclone.image import OpenImage
from xenclone.interfaces import PAGE_SIZE, IImageStore
from xenclone.memserver import page_crcs
from xenclone.names import check_generation, check_name
from xenclone.wire import WireError

FORMAT = 1
MAX_FETCH = 256
MAX_PAGES = 1 << 26                 # 256 GiB of guest RAM
CHUNK = 512 * PAGE_SIZE             # 2 MiB: big reads, one memcmp per chunk
_ZERO_CHUNK = bytes(CHUNK)
_ZERO_PAGE = bytes(PAGE_SIZE)
_TMP = ".tmp-"                      # names never start with ".": no clash
_TRASH = ".trash-"


def nonzero_runs(read, npages):
    """Yield (first_pfn, bytes) for every run of non-zero pages of guest
    RAM; ``read(pfn, n)`` gives n pages from page pfn."""
    for base in range(0, npages, CHUNK // PAGE_SIZE):
        n = min(CHUNK // PAGE_SIZE, npages - base)
        data = read(base, n)
        if len(data) != n * PAGE_SIZE:
            raise WireError("bad-request", "guest memory ends before page %d" % (base + n))
        if data == _ZERO_CHUNK[:len(data)]:
            continue
        if _ZERO_PAGE not in data:
            yield base, data                # common case: nothing to split
            continue
        start = None
        for i in range(n + 1):
            zero = i == n or data[i * PAGE_SIZE:(i + 1) * PAGE_SIZE] == _ZERO_PAGE
            if not zero and start is None:
                start = i
            elif zero and start is not None:
                yield base + start, data[start * PAGE_SIZE:i * PAGE_SIZE]
                start = None


def fd_reader(fd):
    return lambda pfn, n: os.pread(fd, n * PAGE_SIZE, pfn * PAGE_SIZE)


def _write_all(fd, data, offset):
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _fill(read, npages, dst_fd, zero=None, crcs=None):
    """Copy the non-zero pages; clear their entries in ``zero`` and note
    their CRCs in ``crcs`` if given."""
    for pfn, data in nonzero_runs(read, npages):
        _write_all(dst_fd, data, pfn * PAGE_SIZE)
        if zero is not None:
            zero[pfn:pfn + len(data) // PAGE_SIZE] = bytes(len(data) // PAGE_SIZE)
        if crcs is not None:
            page_crcs.note(crcs, pfn, data)


def new_memfd(name, npages):
    fd = os.memfd_create("xenclone-" + name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, npages * PAGE_SIZE)
    return fd


def seal(fd):
    # Clones map the memfd MAP_PRIVATE: nobody may resize it under them.
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_new(directory, name, blob, replace=False):
    """A file, on disk once this returns; ``replace``: in one rename."""
    path = os.path.join(directory, name)
    dest, path = (path, path + ".tmp") if replace else (None, path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if replace else os.O_EXCL), 0o600)
    try:
        _write_all(fd, blob, 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    if replace:
        os.replace(path, dest)
        _fsync_dir(directory)


def _read_crcs(path, npages):
    """The image's CRC table, or None if it has none (yet)."""
    try:
        with open(os.path.join(path, page_crcs.FILE_NAME), "rb") as f:
            return page_crcs.from_bytes(f.read(), npages)
    except FileNotFoundError:
        return None


def new_meta(name, capture, zero):
    """meta.json of a new image; ``zero`` is its zero map."""
    return {
        "image_id": name,
        "generation": uuid.uuid4().hex[:12],
        "arch": capture.arch,
        "npages": capture.npages,
        "nonzero_pages": capture.npages - zero.count(1),
        "created": time.time(),
        "meta": capture.meta,
        "format": FORMAT,
        "vcpu_state": base64.b64encode(capture.vcpu_state).decode(),
    }


class StoredImage:
    def __init__(self, meta, vcpu_state, memfd, zero, crcs=None):
        self.meta = meta
        self.vcpu_state = vcpu_state
        self.memfd = memfd
        self.zero = zero
        self.crcs = crcs        # page_crcs table, or None (an image from before CRCs)

    def info(self):
        return {k: v for k, v in self.meta.items() if k != "vcpu_state"}


@implementer(IImageStore)
class ImageStore:
    """Blessed images, keyed by image id (the name given at bless).

    ``domain_reader(domid)``, where the host runs Xen, reads a paused
    domain's RAM for a bless by domid (``Capture.domid``).
    """

    def __init__(self, directory, domain_reader=None):
        self.dir = directory
        self._domain_reader = domain_reader
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self._images = {}
        self._reserved = set()
        self._lock = threading.Lock()

    # -- lookup

    def _get(self, image_id):
        img = self._images.get(image_id) if isinstance(image_id, str) else None
        if img is None:
            raise WireError("unknown-image", "no image %r on this memory server" % (image_id,))
        return img

    def info(self, image_id):
        return self._get(image_id).info()

    def images(self):
        return [img.info() for _, img in sorted(self._images.items())]

    def memfd(self, image_id):
        """The store's own memfd; it stays open until the image is discarded."""
        return self._get(image_id).memfd

    def zero_map(self, image_id):
        return bytes(self._get(image_id).zero)

    def vcpu_state(self, image_id):
        return self._get(image_id).vcpu_state

    def open(self, image_id):
        img = self._get(image_id)
        m = img.meta
        return OpenImage(image_id=m["image_id"], generation=m["generation"], arch=m["arch"],
                         vcpu_state=img.vcpu_state, npages=m["npages"],
                         mem_fd=os.dup(img.memfd), zero=bytes(img.zero), meta=m["meta"],
                         origin=m.get("origin"))

    def describe(self, image_id):
        """What a remote host needs to mirror the image: info, vCPU state
        and zero map (pages travel one fetch at a time)."""
        img = self._get(image_id)
        if img.meta.get("origin"):
            raise WireError("unknown-image", "%r is a mirror here; ask its origin" % image_id)
        return dict(img.info(), vcpu_state=img.meta["vcpu_state"]), bytes(img.zero)

    def fetch(self, image_id, pfn, count, generation=None):
        img = self._get(image_id)
        npages = img.meta["npages"]
        if img.meta.get("origin"):
            raise WireError("remote-image", "image %r is a mirror of %s: its pages come from "
                            "there" % (image_id, img.meta["origin"]["server"]))
        if generation is not None and generation != img.meta["generation"]:
            raise WireError("stale-image", "image %r is generation %s now, not %r"
                            % (image_id, img.meta["generation"], generation))
        for v in (pfn, count):
            if type(v) is not int:
                raise WireError("out-of-range", "pfn and count must be integers, got %r" % (v,))
        if not 1 <= count <= MAX_FETCH:
            raise WireError("out-of-range", "count %d not in 1..%d" % (count, MAX_FETCH))
        if pfn < 0 or pfn + count > npages:
            raise WireError("out-of-range", "pages %d..%d outside image %r of %d pages"
                            % (pfn, pfn + count - 1, image_id, npages))
        return self._read(img, pfn, count)

    def _read(self, img, pfn, count):
        # The disk copy is the truth: pagers let pages of the RAM cache go
        # (holes in the memfd), and those must not read back as zeros.
        fd = os.open(os.path.join(self.dir, img.meta["image_id"], "memory"),
                     os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.pread(fd, count * PAGE_SIZE, pfn * PAGE_SIZE)
        finally:
            os.close(fd)
        data = data.ljust(count * PAGE_SIZE, b"\0")   # a sparse file may end in a hole
        bad = None if img.crcs is None else page_crcs.first_bad(img.crcs, pfn, data)
        if bad is not None:
            raise WireError("corrupt-image", "page %d of image %r on disk does not match its "
                            "CRC: the image is corrupt" % (bad, img.meta["image_id"]))
        return data

    def crcs(self, image_id, first, count):
        """Part of the image's CRC table (``page_crcs``), as bytes."""
        img = self._get(image_id)
        if img.crcs is None:
            raise WireError("no-crcs", "image %r has no CRC table here" % (image_id,))
        if type(first) is not int or type(count) is not int or not (
                1 <= count <= page_crcs.MAX_CRCS and 0 <= first <= len(img.crcs) - count):
            raise WireError("out-of-range", "CRCs %r..+%r outside image %r"
                            % (first, count, image_id))
        return page_crcs.to_bytes(img.crcs[first:first + count])

    # -- bless

    def put(self, name, capture):
        """Copy ``capture`` (an ``image.Capture``) into a new image; its info."""
        check_name(name, "image name")
        npages = capture.npages
        if type(npages) is not int or not 0 < npages <= MAX_PAGES:
            raise WireError("bad-request", "npages must be an integer in 1..%d" % MAX_PAGES)
        if not isinstance(capture.vcpu_state, bytes) or not isinstance(capture.meta, dict):
            raise WireError("bad-request", "vcpu_state must be bytes and meta a dict")
        try:
            json.dumps(capture.meta)
        except (TypeError, ValueError) as e:
            raise WireError("bad-request", "meta is not plain JSON: %s" % (e,))
        if capture.domid is None and os.fstat(capture.mem_fd).st_size < npages * PAGE_SIZE:
            raise WireError("bad-request", "guest memory is smaller than %d pages" % npages)
        return self._add(name, lambda: self._bless(name, capture))

    def _reader(self, capture):
        """``read(pfn, n)`` over the captured guest RAM."""
        if capture.domid is None:
            return fd_reader(capture.mem_fd)
        if self._domain_reader is None:
            raise WireError("no-xen", "bless by domid needs Xen, and this host has none")
        return self._domain_reader(capture.domid)

    def _add(self, name, make):
        """Run ``make`` (which builds image ``name`` on disk) with the name
        reserved; the new image's info."""
        with self._lock:
            if name in self._images or name in self._reserved:
                raise WireError("exists", "an image named %r already exists" % (name,))
            self._reserved.add(name)
        try:
            img = make()
            with self._lock:
                self._images[name] = img
            return img.info()
        finally:
            with self._lock:
                self._reserved.discard(name)

    def _bless(self, name, capture):
        npages = capture.npages
        tmp = self._fresh_tmp(name)
        memfd = new_memfd(name, npages)
        try:
            zero = bytearray(b"\x01") * npages
            crcs = page_crcs.new_table(npages)
            disk = os.open(os.path.join(tmp, "memory"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.ftruncate(disk, npages * PAGE_SIZE)
                # RAM and disk copies run side by side (the I/O drops the GIL):
                # a bless then costs about the slower of the two, not the sum.
                read = self._reader(capture)
                with ThreadPoolExecutor(1) as pool:
                    to_disk = pool.submit(_fill, read, npages, disk)
                    _fill(read, npages, memfd, zero, crcs)
                    to_disk.result()
                os.fsync(disk)
            finally:
                os.close(disk)
            seal(memfd)
            meta = new_meta(name, capture, zero)
            self._commit(tmp, name, meta, zero, crcs)
        except BaseException:
            os.close(memfd)
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return StoredImage(meta, capture.vcpu_state, memfd, zero, crcs)

    def mirror(self, name, info, vcpu_state, zero, server, crcs):
        """Record the remote image ``info`` (as ``describe`` gave it) of
        ``server``, with its CRC table (bytes), under ``name``; its info."""
        check_name(name, "image name")
        try:
            npages, generation, origin = info["npages"], info["generation"], info["image_id"]
            if type(npages) is not int or not 0 < npages <= MAX_PAGES or len(zero) != npages:
                raise ValueError("npages and the zero map do not agree")
            if bytes(zero).translate(None, b"\0\1"):
                raise ValueError("the zero map holds bytes other than 0 and 1")
            if type(info["nonzero_pages"]) is not int or not isinstance(info["meta"], dict):
                raise ValueError("nonzero_pages or meta of the wrong type")
            meta = {k: info[k] for k in ("arch", "nonzero_pages", "created", "meta")}
            base64.b64decode(vcpu_state, validate=True)
            crcs = page_crcs.from_bytes(crcs, npages)
        except (KeyError, TypeError, ValueError) as e:
            raise WireError("bad-request", "not a mirrorable image: %s" % (e,))
        # The remote server's word: what becomes a path or a name here is
        # checked like any other name from outside.
        check_generation(generation, "remote generation")
        check_name(origin, "remote image name")
        check_name(meta["arch"], "remote arch")
        meta.update(image_id=name, generation=generation, npages=npages, format=FORMAT,
                    vcpu_state=vcpu_state, origin={"server": server, "image": origin})

        def make():
            self._commit(self._fresh_tmp(name), name, meta, zero, crcs)
            return self._load(os.path.join(self.dir, name))

        return self._add(name, make)

    def _fresh_tmp(self, name):
        """An empty directory to build image ``name`` in (what an
        interrupted bless left there goes)."""
        tmp = os.path.join(self.dir, _TMP + name)
        shutil.rmtree(tmp, ignore_errors=True)
        os.mkdir(tmp, 0o700)
        return tmp

    def _commit(self, tmp, name, meta, zero, crcs=None):
        """Write the zero map, CRC table and meta.json into ``tmp``, then
        make it the image ``name`` in one rename."""
        files = [("zero", bytes(zero)), ("meta.json", json.dumps(meta).encode())]
        if crcs is not None:
            files.append((page_crcs.FILE_NAME, page_crcs.to_bytes(crcs)))
        for fname, blob in files:
            _write_new(tmp, fname, blob)
        _fsync_dir(tmp)
        os.rename(tmp, os.path.join(self.dir, name))
        _fsync_dir(self.dir)

    # -- start and discard

    def load_all(self):
        """Re-open every image on disk into RAM; (name, reason) of any that failed."""
        failed = []
        for name in sorted(os.listdir(self.dir)):
            path = os.path.join(self.dir, name)
            if name.startswith((_TMP, _TRASH)):     # an interrupted bless or discard
                shutil.rmtree(path, ignore_errors=True)
                continue
            if name in self._images or not os.path.isdir(path):
                continue
            try:
                img = self._load(path)
            except (OSError, ValueError, KeyError) as e:
                failed.append((name, str(e)))
                continue
            with self._lock:
                self._images[name] = img
        return failed

    def _admit(self, path, meta):
        """Refuse an image on disk that this store cannot serve."""
        if meta.get("server_domain"):
            raise ValueError("it lives in the memory-server domain, and this memory server "
                             "runs none (config memserver_domain_mib)")

    def _load(self, path):
        with open(os.path.join(path, "meta.json"), "rb") as f:
            meta = json.load(f)
        if meta.get("format") != FORMAT:
            raise ValueError("unknown memory format %r" % (meta.get("format"),))
        if check_name(meta.get("image_id"), "image name") != os.path.basename(path):
            raise ValueError("meta.json names image %r" % meta["image_id"])
        check_generation(meta.get("generation"))
        npages = meta["npages"]
        with open(os.path.join(path, "zero"), "rb") as f:
            zero = bytearray(f.read())
        if len(zero) != npages:
            raise ValueError("zero map has %d entries for %d pages" % (len(zero), npages))
        self._admit(path, meta)
        crcs = _read_crcs(path, npages)
        memfd = new_memfd(meta["image_id"], npages)
        if meta.get("origin") or meta.get("server_domain"):
            # Its pages are elsewhere: a mirror's come from its origin, a
            # server-domain image's through grants.  The memfd stays empty.
            seal(memfd)
            return StoredImage(meta, base64.b64decode(meta["vcpu_state"]), memfd, zero, crcs)
        fresh = crcs is None    # blessed before images had CRCs: the disk is trusted once
        if fresh:
            crcs = page_crcs.new_table(npages)
        try:
            disk = os.open(os.path.join(path, "memory"), os.O_RDONLY)
            try:
                pfn = 0
                while pfn < npages:
                    if zero[pfn]:
                        pfn = zero.find(0, pfn)
                        pfn = npages if pfn < 0 else pfn
                        continue
                    end = zero.find(1, pfn, pfn + CHUNK // PAGE_SIZE)
                    end = min(npages, pfn + CHUNK // PAGE_SIZE) if end < 0 else end
                    data = os.pread(disk, (end - pfn) * PAGE_SIZE, pfn * PAGE_SIZE)
                    if len(data) != (end - pfn) * PAGE_SIZE:
                        raise ValueError("memory file is truncated at page %d" % pfn)
                    bad = None if fresh else page_crcs.first_bad(crcs, pfn, data)
                    if bad is not None:
                        raise ValueError("page %d does not match its CRC: the image is "
                                         "corrupt" % bad)
                    if fresh:
                        page_crcs.note(crcs, pfn, data)
                    _write_all(memfd, data, pfn * PAGE_SIZE)
                    pfn = end
            finally:
                os.close(disk)
            seal(memfd)
            if fresh:
                _write_new(path, page_crcs.FILE_NAME, page_crcs.to_bytes(crcs), replace=True)
            return StoredImage(meta, base64.b64decode(meta["vcpu_state"]), memfd, zero, crcs)
        except BaseException:
            os.close(memfd)
            raise

    def discard(self, image_id, close=os.close):
        """Forget the image and delete it from disk.

        ``close`` receives the memfd: the server delays it, because a reply
        passing that fd may still be queued on some connection.
        """
        with self._lock:
            img = self._get(image_id)
            del self._images[image_id]
        trash = os.path.join(self.dir, _TRASH + image_id)
        os.rename(os.path.join(self.dir, image_id), trash)
        _fsync_dir(self.dir)
        shutil.rmtree(trash, ignore_errors=True)
        close(img.memfd)

    def close(self):
        with self._lock:
            images, self._images = self._images, {}
        for img in images.values():
            os.close(img.memfd)
