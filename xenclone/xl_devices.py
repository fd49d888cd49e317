"""A master's network interfaces and disks, as records a clone can be given.

Two sources, one result (``Nic`` and ``Disk`` records):

- an xl.cfg's ``vif = [...]`` and ``disk = [...]`` strings
  (``from_xl_cfg``, ``parse_vif``, ``parse_disk``: the syntax of xl-network-configuration(5)
  and xl-disk-configuration(5), positional and deprecated-prefix forms too);
- libxl's saved config in ``xl list -l`` (``from_saved``: its ``nics`` and
  ``disks``, and every other device list, refused by name).

Anything a clone could not be given its own copy of is refused here, with a
WireError naming it, before bless touches the master: device kinds other
than vif and vbd, disks whose format cannot be snapshotted (raw and qcow2
only), block devices (snapshots of those, by LVM or dm-thin, are a later
option: docs/disks.md), CD-ROMs, driver-domain backends and script disks.
``spec()`` writes a record back in xl syntax, for a clone's config.
"""

import re

import attr

from xenclone.wire import WireError

# libxl's device lists (libxl_types.idl, libxl_domain_config) with the
# names xl.cfg(5) gives them; vif and vbd are the ones handled.
UNHANDLED = {"pcidevs": "pci", "rdms": "rdm", "dtdevs": "dtdev", "vfbs": "vfb",
             "vkbs": "vkb", "vtpms": "vtpm", "p9s": "9pfs", "pvcallsifs": "pvcalls",
             "vdispls": "vdispl", "vsnds": "vsnd", "channels": "channel",
             "usbctrls": "usb", "usbdevs": "usb"}
SNAPSHOT_FORMATS = ("raw", "qcow2")
DISK_FORMATS = ("raw", "qcow", "qcow2", "vhd", "empty", "qed")
BACKEND_TYPES = ("phy", "tap", "qdisk", "standalone")
# xl's deprecated target prefixes (libxlu_disk_l.l): format ones set it.
_FORMAT_PREFIXES = ("raw", "qcow", "qcow2", "vhd")
_SCRIPT_PREFIXES = ("iscsi", "nbd", "enbd", "drbd")
_PLAIN_PREFIXES = ("tapdisk", "tap", "tap2", "aio", "ioemu", "file", "phy")
_KNOWN_PREFIXES = _FORMAT_PREFIXES + _SCRIPT_PREFIXES + _PLAIN_PREFIXES
_UNKNOWN_PREFIX = re.compile(r"[a-z][a-z0-9]*:([^a-z0-9]|$)")
_DISK_FLAGS = ("direct-io-safe", "discard", "no-discard", "trusted", "untrusted")
_VIF_KEYS = ("mac", "bridge", "ip", "model", "type", "vifname", "script", "backend",
             "rate", "gatewaydev")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_VDEV = re.compile(r"^[A-Za-z0-9]{1,32}$")


def _refuse(what, why):
    return WireError("unsupported-device", "%s: %s" % (what, why))


@attr.s(frozen=True)
class Nic:
    """One vif: the settings xl knows, as xl.cfg words."""

    mac = attr.ib(default=None)
    bridge = attr.ib(default=None)
    ip = attr.ib(default=None)
    model = attr.ib(default=None)
    type = attr.ib(default=None)
    vifname = attr.ib(default=None)
    script = attr.ib(default=None)
    backend = attr.ib(default=None)
    rate = attr.ib(default=None)
    gatewaydev = attr.ib(default=None)

    def for_clone(self, mac, ip=None):
        """The clone's vif: its own MAC and address; no vifname (a dom0
        interface name can be taken once)."""
        return attr.evolve(self, mac=mac, ip=ip, vifname=None)

    def spec(self):
        return ",".join("%s=%s" % (k, getattr(self, k)) for k in _VIF_KEYS
                        if getattr(self, k) is not None)


@attr.s(frozen=True)
class Disk:
    """One vbd.  ``target`` is a path (a file, for disks that can be
    cloned); ``access`` is ``rw`` or ``ro``."""

    target = attr.ib()
    vdev = attr.ib()
    format = attr.ib(default="raw")
    access = attr.ib(default="rw")
    backendtype = attr.ib(default=None)
    flags = attr.ib(default=())

    def spec(self):
        words = ["format=" + self.format, "vdev=" + self.vdev, "access=" + self.access]
        if self.backendtype:
            words.append("backendtype=" + self.backendtype)
        # target= last: it takes the rest of the string, commas and all.
        return ",".join(words + list(self.flags) + ["target=" + self.target])


@attr.s(frozen=True)
class Devices:
    """A master's vifs and disks, in its config's order."""

    nics = attr.ib(default=())
    disks = attr.ib(default=())

    def __bool__(self):
        return bool(self.nics or self.disks)


def from_xl_cfg(vifs, disks):
    """``Devices`` from an xl.cfg's ``vif`` and ``disk`` lists."""
    for name, value in (("vif", vifs), ("disk", disks)):
        if not isinstance(value, (list, tuple)):
            raise _refuse(name, "a list of strings: %s = [ '...', ... ]" % name)
    return Devices(tuple(parse_vif(v) for v in vifs), tuple(parse_disk(d) for d in disks))


# ---- xl.cfg: vif = [...] ----

def parse_vif(spec):
    """A ``Nic`` from one ``vif = [...]`` string (``bridge=xenbr0,mac=...``)."""
    if not isinstance(spec, str):
        raise _refuse("vif %r" % (spec,), "each vif is a string of key=value settings")
    fields = {}
    for word in (w.strip() for w in spec.split(",")):
        if not word:
            continue
        key, eq, value = word.partition("=")
        if not eq:
            raise _refuse("vif %r" % spec, "%r is not key=value" % word)
        if key.startswith("colo_") or key == "forwarddev":
            raise _refuse("vif %r" % spec, "COLO settings (%s) are not handled" % key)
        if key not in _VIF_KEYS:
            raise _refuse("vif %r" % spec, "unknown setting %r (known: %s)"
                          % (key, ", ".join(_VIF_KEYS)))
        if key in fields:
            raise _refuse("vif %r" % spec, "%s given twice" % key)
        fields[key] = value
    nic = Nic(**fields)
    _check_nic(nic, "vif %r" % spec)
    return nic


def _check_nic(nic, what):
    if nic.mac is not None and not _MAC.match(nic.mac.lower()):
        raise _refuse(what, "mac %r is not six hex octets (00:16:3e:12:34:56)" % nic.mac)
    if nic.type not in (None, "vif", "ioemu"):
        raise _refuse(what, "type %r: vif or ioemu" % nic.type)
    if nic.backend not in (None, "0", "Domain-0"):
        raise _refuse(what, "a vif served by a driver domain (backend=%s) is not handled"
                      % nic.backend)


# ---- xl.cfg: disk = [...] ----

def _words(spec):
    """Comma-separated words; ``target=`` takes the rest of the string."""
    rest = spec
    while rest:
        rest = rest.lstrip(" \t\n")
        if rest.startswith("target="):
            yield rest
            return
        word, _, rest = rest.partition(",")
        yield word


def parse_disk(spec):
    """A ``Disk`` from one ``disk = [...]`` string, the way xl reads it:
    named settings, flags, then positional target, format, vdev, access
    (after a deprecated ``phy:``/``file:``/``qcow2:`` prefix: target, vdev,
    access)."""
    if not isinstance(spec, str):
        raise _refuse("disk %r" % (spec,), "each disk is a string (xl-disk-configuration(5))")
    what = "disk %r" % spec
    f = {"flags": [], "positional": []}
    prefixed = False
    for word in _words(spec):
        key, eq, value = word.partition("=")
        if eq and re.match(r"^[a-z][-a-z0-9]*$", key):
            _named(f, key, value, what)
        elif word == "cdrom":
            f["devtype"] = "cdrom"
        elif word in _DISK_FLAGS:
            f["flags"].append(word)
        elif word in ("colo", "no-colo"):
            raise _refuse(what, "COLO settings are not handled")
        else:
            if not f["positional"] and "target" not in f:
                word, prefixed = _strip_prefixes(word, f, what)
            f["positional"].append(word)
    return _disk(f, prefixed, what)


def _named(f, key, value, what):
    known = ("format", "vdev", "access", "backend", "backendtype", "script", "target",
             "devtype", "specification")
    if key.startswith("colo-") or key in ("active-disk", "hidden-disk"):
        raise _refuse(what, "COLO settings are not handled")
    if key not in known:
        raise _refuse(what, "unknown parameter %r" % key)
    if key in f:
        raise _refuse(what, "%s given twice" % key)
    f[key] = value


def _strip_prefixes(word, f, what):
    """``phy:/dev/x`` -> ``/dev/x``; ``tap:qcow2:/x`` -> ``/x``, qcow2."""
    prefixed = False
    while True:
        name = word.partition(":")[0]
        if ":" not in word or name not in _KNOWN_PREFIXES:
            if _UNKNOWN_PREFIX.match(word):     # xl's "unknown deprecated disk prefix"
                raise _refuse(what, "unknown deprecated disk prefix %r" % (name + ":"))
            return word, prefixed
        if name in _FORMAT_PREFIXES:
            f.setdefault("format", name)
        elif name in _SCRIPT_PREFIXES:
            f.setdefault("script", "block-" + name)
        prefixed = True
        word = word[len(name) + 1:]


def _disk(f, prefixed, what):
    pos = list(f.pop("positional"))
    target = f.pop("target", None)
    if target is None and pos:
        target = pos.pop(0)
    if not prefixed and "format" not in f and pos:
        f["format"] = pos.pop(0) or "raw"
    for name in ("vdev", "access"):
        if name not in f and pos:
            f[name] = pos.pop(0)
    if pos:
        raise _refuse(what, "too many positional parameters (%s)" % ", ".join(pos))
    vdev = f.get("vdev", "")
    if vdev.endswith(":cdrom"):
        f["devtype"], vdev = "cdrom", vdev[:-len(":cdrom")]
    access = f.get("access", "") or "rw"
    if access not in ("r", "ro", "w", "rw"):
        raise _refuse(what, "access %r: ro or rw" % access)
    disk_format = f.get("format", "raw") or "raw"
    if disk_format not in DISK_FORMATS:
        raise _refuse(what, "unknown format %r" % disk_format)
    backendtype = f.get("backendtype") or None
    if backendtype not in (None,) + BACKEND_TYPES:
        raise _refuse(what, "unknown backendtype %r" % backendtype)
    if f.get("devtype", "disk") not in ("disk", "cdrom"):
        raise _refuse(what, "devtype %r: disk or cdrom" % f["devtype"])
    disk = Disk(target=(target or "").strip(), vdev=vdev, format=disk_format,
                access="ro" if access in ("r", "ro") else "rw", backendtype=backendtype,
                flags=tuple(f["flags"]))
    check_disk(disk, what, cdrom=f.get("devtype") == "cdrom", script=f.get("script"),
               backend=f.get("backend"), specification=f.get("specification"))
    return disk


def check_disk(disk, what, cdrom=False, script=None, backend=None, specification=None):
    """Refuse a disk whose clones could not each get a snapshot overlay."""
    if cdrom:
        raise _refuse(what, "CD-ROM drives are not handled (PVH guests have no emulated "
                      "CD-ROM)")
    if not disk.vdev:
        raise _refuse(what, "no vdev (e.g. xvda)")
    if not _VDEV.match(disk.vdev):     # it names the snapshot's file too
        raise _refuse(what, "vdev %r: letters and digits (xvda, d0p1)" % disk.vdev)
    if not disk.target:
        raise _refuse(what, "no target (an empty drive)")
    if disk.format not in SNAPSHOT_FORMATS:
        raise _refuse(what, "format %s cannot be snapshotted: raw or qcow2 only (qemu-img "
                      "convert -O qcow2 turns it into one)" % disk.format)
    if script:
        raise _refuse(what, "disks attached by a script (%s) are not handled" % script)
    if backend not in (None, "", "0", "Domain-0"):
        raise _refuse(what, "a disk served by a driver domain (backend=%s) is not handled"
                      % backend)
    if specification not in (None, "", "xen", "unknown"):
        raise _refuse(what, "specification %s: Xen PV disks (xen) only" % specification)
    if disk.target.startswith("/dev/"):
        raise _refuse(what, "%s is a block device: only file-backed disks are snapshotted "
                      "now (LVM or dm-thin snapshots are a later option, docs/disks.md)"
                      % disk.target)


# ---- xl list -l: libxl's saved config ----

def from_saved(cfg, name):
    """``Devices`` from libxl's saved config of domain ``name``
    (``xl list -l``'s ``config``); other device kinds refused by name."""
    kinds = sorted({kind for key, kind in UNHANDLED.items() if cfg.get(key)})
    if kinds:
        raise _refuse(name, "has %s devices: only vif and disk devices are cloned"
                      % ", ".join(kinds))
    try:
        nics = tuple(_saved_nic(n, "%s vif %d" % (name, i))
                     for i, n in enumerate(cfg.get("nics") or ()))
        disks = tuple(_saved_disk(d, "%s disk %d" % (name, i))
                      for i, d in enumerate(cfg.get("disks") or ()))
    except (AttributeError, TypeError) as e:
        raise _refuse(name, "xl's saved device config is not understood (%s)" % e)
    return Devices(nics, disks)


def _saved_nic(n, what):
    rate = None
    if n.get("rate_bytes_per_interval"):
        # xl's rate syntax: bytes per interval of microseconds.
        per_s = n["rate_bytes_per_interval"] * 1000000 // n.get("rate_interval_usecs", 1)
        rate = "%dB/s@%dus" % (per_s, n.get("rate_interval_usecs", 1))
    nictype = {"vif": "vif", "vif_ioemu": "ioemu"}.get(n.get("nictype"))
    backend = n.get("backend_domname") or (str(n["backend_domid"])
                                            if n.get("backend_domid") else None)
    nic = Nic(mac=n.get("mac"), bridge=n.get("bridge"), ip=n.get("ip"), model=n.get("model"),
              type=nictype, vifname=n.get("ifname"), script=n.get("script"), backend=backend,
              rate=rate, gatewaydev=n.get("gatewaydev"))
    _check_nic(nic, what)
    return nic


def _saved_disk(d, what):
    disk_format = d.get("format") or "raw"
    if disk_format not in DISK_FORMATS:
        raise _refuse(what, "unknown format %r" % disk_format)
    backend = d.get("backend")
    flags = ("direct-io-safe",) if d.get("direct_io_safe") else ()
    disk = Disk(target=d.get("pdev_path") or "", vdev=d.get("vdev") or "", format=disk_format,
                access="rw" if d.get("readwrite", 1) else "ro",
                backendtype=backend if backend in BACKEND_TYPES else None, flags=flags)
    domid = d.get("backend_domid")
    check_disk(disk, what, cdrom=bool(d.get("is_cdrom")), script=d.get("script"),
               backend=d.get("backend_domname") or (str(domid) if domid else None),
               specification=d.get("specification"))
    return disk
