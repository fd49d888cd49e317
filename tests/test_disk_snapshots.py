"""Disk snapshots at bless and per-clone overlays, with the real qemu-img
(qemu-utils) on small sparse files: isolation from the master and between
clones, cleanup, the refcount that guards discard, and the tool's errors."""

import os
import shutil
import stat
import subprocess
import tempfile

from twisted.internet import defer, reactor
from twisted.trial import unittest

from xenclone.backends.xen import disk_tool
from xenclone.xl_devices import Disk
from xenclone.backends.xen.disk_snapshots import DiskSnapshots
from xenclone.wire import WireError

MIB = 1 << 20


def read_at(path, fmt, offset, n=4):
    """Bytes the guest would read, through qemu's format driver."""
    out = subprocess.run(["qemu-io", "-r", "-U", "-f", fmt, "-c", "read -v %d %d" % (offset, n),
                          path], check=True, capture_output=True, text=True).stdout
    return out.split(":", 1)[1].split()[:n]


def write_at(path, fmt, offset, byte):
    subprocess.run(["qemu-io", "-f", fmt, "-c", "write -P %d %d 4k" % (byte, offset), path],
                   check=True, capture_output=True)


class SnapshotTests(unittest.TestCase):
    def setUp(self):
        if not shutil.which("qemu-img"):
            raise unittest.SkipTest("qemu-img is not installed (Debian package qemu-utils)")
        self.tmp = tempfile.mkdtemp(prefix="xenclone-disks-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.store = DiskSnapshots(reactor, os.path.join(self.tmp, "store"))
        self.raw = os.path.join(self.tmp, "master.img")
        with open(self.raw, "wb") as f:
            f.truncate(8 * MIB)
        write_at(self.raw, "raw", 0, 0x11)
        self.disk = Disk(target=self.raw, vdev="xvda")

    @defer.inlineCallbacks
    def test_clones_are_isolated_from_master_and_each_other(self):
        taken = yield self.store.snapshot("web", [self.disk])
        self.assertEqual([t["how"] for t in taken], ["convert"])     # ext4: no reflinks
        write_at(self.raw, "raw", 0, 0x22)          # the master runs on after resume
        a = yield self.store.clone_disks("web", 1)
        b = yield self.store.clone_disks("web", 2)
        self.assertEqual((a[0].format, a[0].vdev, a[0].access), ("qcow2", "xvda", "rw"))
        write_at(a[0].target, "qcow2", 0, 0x33)
        self.assertEqual(read_at(a[0].target, "qcow2", 0), ["33"] * 4)
        self.assertEqual(read_at(b[0].target, "qcow2", 0), ["11"] * 4)
        self.assertEqual(read_at(self.raw, "raw", 0), ["22"] * 4)
        snap = os.path.join(self.store.root, "web", "xvda.raw")
        self.assertEqual(stat.S_IMODE(os.stat(snap).st_mode), 0o444)

    @defer.inlineCallbacks
    def test_reflink_where_offered(self):
        fake_cp = os.path.join(self.tmp, "cp")      # a file system with reflinks
        with open(fake_cp, "w") as f:
            f.write('#!/bin/sh\n[ "$1" = --reflink=always ] && exec cp "$2" "$3"\nexit 9\n')
        os.chmod(fake_cp, 0o755)
        self.patch(disk_tool, "CP", fake_cp)
        taken = yield self.store.snapshot("web", [self.disk])
        self.assertEqual(taken[0]["how"], "reflink")

    @defer.inlineCallbacks
    def test_qcow2_master_with_backing_is_flattened(self):
        top = os.path.join(self.tmp, "top.qcow2")
        yield disk_tool.create_overlay(reactor, self.raw, "raw", top)
        disk = Disk(target=top, vdev="xvdb", format="qcow2")
        yield self.store.check([disk])
        taken = yield self.store.snapshot("db", [disk])
        self.assertEqual(taken[0]["how"], "convert")
        snap = os.path.join(self.store.root, "db", "xvdb.qcow2")
        self.assertNotIn("backing-filename", (yield disk_tool.info(reactor, snap)))
        write_at(self.raw, "raw", 0, 0x44)          # the old backing file changes
        clone = yield self.store.clone_disks("db", 1)
        self.assertEqual(read_at(clone[0].target, "qcow2", 0), ["11"] * 4)

    @defer.inlineCallbacks
    def test_read_only_disks_share_the_snapshot(self):
        yield self.store.snapshot("web", [Disk(target=self.raw, vdev="xvdc", access="ro")])
        given = yield self.store.clone_disks("web", 1)
        self.assertEqual(given[0].target, os.path.join(self.store.root, "web", "xvdc.raw"))
        self.assertEqual(self.store.overlays("web"), {})

    @defer.inlineCallbacks
    def test_refcount_guards_discard(self):
        yield self.store.snapshot("web", [self.disk])
        yield self.store.clone_disks("web", 1)
        yield self.store.clone_disks("web", 2)
        self.assertEqual(sorted(self.store.overlays("web")), [1, 2])
        self.store.remove_clone("web", 1)
        kept = self.store.remove_clone("web", 2, keep=True)
        self.assertEqual([os.path.basename(k) for k in kept], ["xvda.qcow2"])
        e = self.assertRaises(WireError, self.store.discard, "web")
        self.assertEqual(e.code, "in-use")
        self.assertIn("clones 2 depend", str(e))
        self.store.remove_clone("web", 2)
        self.store.discard("web")
        self.assertFalse(os.path.exists(os.path.join(self.store.root, "web")))

    @defer.inlineCallbacks
    def test_no_disks_no_overlays(self):
        self.assertEqual((yield self.store.clone_disks("plain", 1)), ())
        self.store.discard("plain")

    @defer.inlineCallbacks
    def test_refused_before_anything_is_done(self):
        for disk, words in [(Disk(target=self.tmp + "/none", vdev="xvda"), "No such file"),
                            (Disk(target="/dev/null", vdev="xvda"), "not a regular file"),
                            (Disk(target=self.raw, vdev="xvda", format="qcow2"),
                             "says qcow2 but holds raw")]:
            with self.assertRaises(WireError) as cm:
                yield self.store.check([disk])
            self.assertIn(words, str(cm.exception))
        self.assertFalse(os.path.exists(self.store.root))

    @defer.inlineCallbacks
    def test_failed_snapshot_leaves_nothing(self):
        gone = Disk(target=self.tmp + "/vanished.img", vdev="xvdb")
        with self.assertRaises(WireError) as cm:
            yield self.store.snapshot("web", [self.disk, gone])
        self.assertEqual(cm.exception.code, "qemu-img-failed")
        self.assertFalse(os.path.exists(os.path.join(self.store.root, "web")))
        with self.assertRaises(WireError):
            yield self.store.snapshot("../etc", [self.disk])
