"""Per-image disk snapshots and per-clone copy-on-write overlays.

    bless, master running:    check(disks)            refuse what cannot be snapshotted
    bless, master suspended:  snapshot(image, disks)  a point-in-time copy of each disk
    launch:                   clone_disks(image, n)   a qcow2 overlay per writable disk
    destroy:                  remove_clone(image, n)  its overlays gone, unless kept
    discard:                  discard(image)          refused while overlays depend on it

On disk, under ``root`` (the state is the files; a restarted daemon finds
it as it was)::

    <image>/disks.json                    the master's disks, in order
    <image>/<vdev>.<raw|qcow2>            snapshots, read-only
    <image>/clones/<clone id>/<vdev>.qcow2

A snapshot is a reflink of the master's file where the file system offers
them (btrfs, XFS: instant, blocks shared until written), else a
``qemu-img convert`` copy; either way the master writing its own disk after
it resumes cannot change it.  An overlay is ``qemu-img create -b``: a few
hundred KiB of qcow2 header whose unwritten clusters read the snapshot.
Read-only disks are given to clones as the snapshot itself.  Why qcow2
overlays, and the figures: docs/disks.md.
"""

import json
import os
import re
import shutil
import stat

import attr
from twisted.internet import defer
from twisted.logger import Logger

from xenclone import xl_devices as devices
from xenclone.backends.xen import disk_tool
from xenclone.wire import WireError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class DiskSnapshots:
    """The snapshots and overlays of every image, under ``root``."""

    log = Logger()

    def __init__(self, reactor, root):
        self.reactor, self.root = reactor, root

    # -- paths

    def _image_dir(self, image_id):
        if not _NAME.match(str(image_id)):
            raise WireError("bad-name", "image id %r cannot name a directory" % (image_id,))
        return os.path.join(self.root, image_id)

    def _clone_dir(self, image_id, clone_id):
        return os.path.join(self._image_dir(image_id), "clones", "%d" % int(clone_id))

    def _snapshot_path(self, image_id, disk):
        return os.path.join(self._image_dir(image_id), "%s.%s" % (disk.vdev, disk.format))

    # -- bless

    @defer.inlineCallbacks
    def check(self, disks):
        """Before the master is suspended: each disk a regular file whose
        contents are in the format the config says."""
        for disk in disks:
            try:
                st = os.stat(disk.target)
            except OSError as e:
                raise WireError("unsupported-device", "disk %s: %s: %s"
                                % (disk.vdev, disk.target, e.strerror))
            if not stat.S_ISREG(st.st_mode):
                raise WireError("unsupported-device", "disk %s: %s is not a regular file: only "
                                "file-backed disks are snapshotted now (docs/disks.md)"
                                % (disk.vdev, disk.target))
            if disk.format == "qcow2":
                found = (yield disk_tool.info(self.reactor, disk.target)).get("format")
                if found != "qcow2":
                    raise WireError("unsupported-device", "disk %s: %s says qcow2 but holds %s"
                                    % (disk.vdev, disk.target, found))

    @defer.inlineCallbacks
    def snapshot(self, image_id, disks):
        """While the master is suspended: its disks' snapshots.  Returns how
        each was taken (``[{"vdev", "how", "ms"}]``); on failure nothing is
        left behind."""
        where = self._image_dir(image_id)
        if os.path.exists(where):
            raise WireError("exists", "image %s has disk snapshots already (%s)"
                            % (image_id, where))
        os.makedirs(where)
        taken = []
        try:
            for disk in disks:
                t0 = self.reactor.seconds()
                how = yield self._copy(disk, self._snapshot_path(image_id, disk))
                os.chmod(self._snapshot_path(image_id, disk), 0o444)
                taken.append({"vdev": disk.vdev, "how": how,
                              "ms": round((self.reactor.seconds() - t0) * 1000, 1)})
            with open(os.path.join(where, "disks.json"), "w") as f:
                json.dump([d.spec() for d in disks], f)
        except BaseException:
            shutil.rmtree(where, ignore_errors=True)
            raise
        self.log.info("disk snapshots of {image}: {taken}", image=image_id, taken=taken)
        return taken

    @defer.inlineCallbacks
    def _copy(self, disk, dest):
        if disk.format == "qcow2":
            backing = (yield disk_tool.info(self.reactor, disk.target)).get("backing-filename")
            if backing:     # a reflink would still read the chain, which others may change
                yield disk_tool.convert(self.reactor, disk.target, disk.format, dest)
                return "convert"
        try:
            yield disk_tool.reflink(self.reactor, disk.target, dest)
            return "reflink"
        except WireError as e:
            if e.code != "cp-failed":
                raise
        if os.path.exists(dest):
            os.unlink(dest)
        yield disk_tool.convert(self.reactor, disk.target, disk.format, dest)
        return "convert"

    def disks(self, image_id):
        """The master's disks of an image, as ``snapshot`` recorded them."""
        try:
            with open(os.path.join(self._image_dir(image_id), "disks.json")) as f:
                return tuple(devices.parse_disk(spec) for spec in json.load(f))
        except FileNotFoundError:
            return ()

    # -- launch and destroy

    @defer.inlineCallbacks
    def clone_disks(self, image_id, clone_id):
        """The clone's disks (``devices.Disk``), its overlays created: a
        writable disk gets its own, a read-only one shares the snapshot."""
        masters = self.disks(image_id)
        if not masters:
            return ()
        where = self._clone_dir(image_id, clone_id)
        os.makedirs(where)
        given = []
        try:
            for disk in masters:
                snap = self._snapshot_path(image_id, disk)
                if disk.access == "ro":
                    given.append(attr.evolve(disk, target=snap))
                    continue
                path = os.path.join(where, disk.vdev + ".qcow2")
                yield disk_tool.create_overlay(self.reactor, snap, disk.format, path)
                # qcow2 needs QEMU (qdisk); blkback serves raw only.
                given.append(attr.evolve(disk, target=path, format="qcow2", backendtype=None))
        except BaseException:
            shutil.rmtree(where, ignore_errors=True)
            raise
        return tuple(given)

    def remove_clone(self, image_id, clone_id, keep=False):
        """A destroyed clone's overlays: removed, or kept (and so still
        holding the image) when asked.  Returns the kept paths."""
        where = self._clone_dir(image_id, clone_id)
        if keep:
            return sorted(os.path.join(where, f) for f in os.listdir(where)) \
                if os.path.isdir(where) else []
        shutil.rmtree(where, ignore_errors=True)
        return []

    def overlays(self, image_id):
        """``{clone id: [overlay paths]}``: what depends on the snapshots."""
        clones = os.path.join(self._image_dir(image_id), "clones")
        found = {}
        for name in sorted(os.listdir(clones)) if os.path.isdir(clones) else ():
            files = sorted(os.listdir(os.path.join(clones, name)))
            if files:
                found[int(name)] = [os.path.join(clones, name, f) for f in files]
        return found

    # -- discard

    def discard(self, image_id):
        """Remove an image's snapshots; refused while overlays use them."""
        held = self.overlays(image_id)
        if held:
            raise WireError("in-use", "image %s: the disk overlays of clones %s depend on its "
                            "snapshots (destroy them, or remove kept overlays under %s)"
                            % (image_id, ", ".join(map(str, held)),
                               os.path.join(self._image_dir(image_id), "clones")))
        shutil.rmtree(self._image_dir(image_id), ignore_errors=True)
