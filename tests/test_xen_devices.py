"""A master's vifs and disks read from xl.cfg strings and from ``xl list
-l``, what is refused (by name, before anything is done), and the specs
written back for a clone."""

from twisted.trial import unittest

from xenclone import xl_devices as devices
from xenclone.xl_devices import Disk, Nic
from xenclone.wire import WireError


class VifTests(unittest.TestCase):
    def test_common_settings(self):
        nic = devices.parse_vif("bridge=xenbr0, mac=00:16:3E:01:02:03,ip=10.0.0.2,model=e1000")
        self.assertEqual(nic, Nic(mac="00:16:3E:01:02:03", bridge="xenbr0", ip="10.0.0.2",
                                  model="e1000"))
        self.assertEqual(devices.parse_vif(""), Nic())

    def test_clone_gets_its_own_mac_and_no_vifname(self):
        nic = devices.parse_vif("bridge=xenbr0,mac=00:16:3e:01:02:03,vifname=m0,ip=10.0.0.2")
        clone = nic.for_clone("06:00:00:00:00:01")
        self.assertEqual(clone.spec(), "mac=06:00:00:00:00:01,bridge=xenbr0")
        self.assertEqual(nic.for_clone("06:00:00:00:00:01", ip="10.0.0.9").spec(),
                         "mac=06:00:00:00:00:01,bridge=xenbr0,ip=10.0.0.9")
        self.assertEqual(devices.parse_vif(clone.spec()), clone)

    def refused(self, fn, spec, *words):
        with self.assertRaises(WireError) as cm:
            fn(spec)
        self.assertEqual(cm.exception.code, "unsupported-device")
        for word in words:
            self.assertIn(word, str(cm.exception))

    def test_bad_vifs(self):
        self.refused(devices.parse_vif, "bridge=a,speed=9", "unknown setting 'speed'")
        self.refused(devices.parse_vif, "mac=00:16:3e", "not six hex octets")
        self.refused(devices.parse_vif, "xenbr0", "not key=value")
        self.refused(devices.parse_vif, "bridge=a,bridge=b", "bridge given twice")
        self.refused(devices.parse_vif, "backend=netdom", "driver domain")
        self.refused(devices.parse_vif, "colo_sock_mirror_id=1", "COLO")
        self.refused(devices.parse_vif, 3, "string")


class DiskSyntaxTests(unittest.TestCase):
    """The equivalent forms of xl-disk-configuration(5)."""

    def test_equivalent_forms(self):
        want = Disk(target="/srv/a.img", vdev="xvda", format="raw", access="rw")
        for spec in ["/srv/a.img,,xvda", "/srv/a.img,raw,xvda,rw",
                     "format=raw, vdev=xvda, access=rw, target=/srv/a.img",
                     "raw:/srv/a.img,xvda,w", "file:/srv/a.img,xvda,w",
                     "phy:/srv/a.img,xvda,w", "vdev=xvda,/srv/a.img"]:
            self.assertEqual(devices.parse_disk(spec), want, spec)

    def test_qcow2_forms(self):
        want = Disk(target="/srv/b.qcow2", vdev="xvdb", format="qcow2", access="ro")
        for spec in ["/srv/b.qcow2,qcow2,xvdb,ro", "qcow2:/srv/b.qcow2,xvdb,r",
                     "tap:qcow2:/srv/b.qcow2,xvdb,r",
                     "access=ro,vdev=xvdb,format=qcow2,target=/srv/b.qcow2"]:
            self.assertEqual(devices.parse_disk(spec), want, spec)

    def test_target_takes_the_rest_and_spec_round_trips(self):
        disk = devices.parse_disk("vdev=xvda,backendtype=qdisk,discard,target=/srv/x,y.img")
        self.assertEqual((disk.target, disk.backendtype, disk.flags),
                         ("/srv/x,y.img", "qdisk", ("discard",)))
        self.assertEqual(disk.spec(),
                         "format=raw,vdev=xvda,access=rw,backendtype=qdisk,discard,"
                         "target=/srv/x,y.img")
        self.assertEqual(devices.parse_disk(disk.spec()), disk)

    refused = VifTests.refused

    def test_not_snapshottable_or_not_a_disk(self):
        p = devices.parse_disk
        self.refused(p, "phy:/dev/vg/guest,xvda,w", "/dev/vg/guest is a block device",
                     "LVM or dm-thin")
        self.refused(p, "/srv/a.vhd,vhd,xvda", "format vhd cannot be snapshotted")
        self.refused(p, "vhd:/srv/a.vhd,xvda,w", "format vhd")
        self.refused(p, "/srv/a.iso,,hdc,cdrom", "CD-ROM")
        self.refused(p, "raw:/srv/a.iso,hdc:cdrom,ro", "CD-ROM")
        self.refused(p, "/srv/a.img,raw,xvda,devtype=cdrom", "CD-ROM")
        self.refused(p, "nbd:/srv:1234,xvda,w", "script (block-nbd)")
        self.refused(p, "/srv/a.img,,xvda,backend=stor", "driver domain (backend=stor)")
        self.refused(p, "/srv/a.img", "no vdev")
        self.refused(p, "/srv/a.img,raw,vdev=../../etc/x", "vdev '../../etc/x': letters")

    def test_bad_syntax(self):
        p = devices.parse_disk
        self.refused(p, "/srv/a.img,raw,xvda,rw,extra", "too many positional parameters")
        self.refused(p, "/srv/a.img,vmdk,xvda", "unknown format 'vmdk'")
        self.refused(p, "/srv/a.img,raw,xvda,rx", "access 'rx'")
        self.refused(p, "size=4G,/srv/a.img,,xvda", "unknown parameter 'size'")
        self.refused(p, "vdev=xvda,vdev=xvdb,/a", "vdev given twice")
        self.refused(p, "lvm:/srv/a,xvda,w", "unknown deprecated disk prefix 'lvm:'")
        self.refused(p, "/a,,xvda,backendtype=nfs", "unknown backendtype 'nfs'")

    def test_config_lists(self):
        found = devices.from_xl_cfg(["bridge=xenbr0"], ["/srv/a.img,qcow2,xvda,rw"])
        self.assertEqual(len(found.nics), 1)
        self.assertEqual(found.disks[0].format, "qcow2")
        self.assertFalse(devices.from_xl_cfg([], []))
        self.refused(lambda v: devices.from_xl_cfg(v, []), "bridge=x", "a list of strings")


def saved(**lists):
    return dict({"c_info": {"type": "pvh"}, "b_info": {}}, **lists)


class SavedConfigTests(unittest.TestCase):
    """libxl's saved config (``xl list -l``), enums as libxl writes them."""

    refused = VifTests.refused

    def test_nics_and_disks(self):
        found = devices.from_saved(saved(
            nics=[{"devid": 0, "mac": "00:16:3e:0a:0b:0c", "bridge": "xenbr0",
                   "nictype": "vif", "ifname": "m.0", "script": "vif-bridge"}],
            disks=[{"pdev_path": "/srv/a.img", "vdev": "xvda", "backend": "phy",
                    "format": "raw", "readwrite": 1, "is_cdrom": 0},
                   {"pdev_path": "/srv/b.qcow2", "vdev": "xvdb", "backend": "qdisk",
                    "format": "qcow2", "readwrite": 0}]), "m")
        self.assertEqual(found.nics, (Nic(mac="00:16:3e:0a:0b:0c", bridge="xenbr0",
                                          type="vif", vifname="m.0", script="vif-bridge"),))
        self.assertEqual(found.disks, (
            Disk(target="/srv/a.img", vdev="xvda", format="raw", access="rw",
                 backendtype="phy"),
            Disk(target="/srv/b.qcow2", vdev="xvdb", format="qcow2", access="ro",
                 backendtype="qdisk")))

    def test_rate_in_xl_syntax(self):
        found = devices.from_saved(saved(nics=[{"rate_bytes_per_interval": 50000,
                                                "rate_interval_usecs": 50000}]), "m")
        self.assertEqual(found.nics[0].rate, "1000000B/s@50000us")

    def test_unhandled_kinds_named(self):
        fn = lambda cfg: devices.from_saved(cfg, "m")   # noqa: E731
        self.refused(fn, saved(pcidevs=[{}], vkbs=[{}], usbdevs=[{}], nics=[{}]),
                     "m: has pci, usb, vkb devices")
        self.refused(fn, saved(disks=[{"pdev_path": "/dev/vg/a", "vdev": "xvda",
                                       "format": "raw"}]), "m disk 0", "block device")
        self.refused(fn, saved(disks=[{"pdev_path": "/srv/a", "vdev": "xvda",
                                       "format": "qed"}]), "format qed")
        self.refused(fn, saved(disks=[{"pdev_path": "/srv/a", "vdev": "hdc", "format": "raw",
                                       "is_cdrom": 1}]), "CD-ROM")
        self.refused(fn, saved(nics=["eth0"]), "not understood")
