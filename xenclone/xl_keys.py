"""The xl.cfg(5) keys a master config may carry besides xenclone's own.

An existing xl domain config should work as a master config, so every key
xl knows is accepted as xl would accept it, and sorted by what it does here:

    config file -> parse -> split_entries (CLI, file:line errors)
        xenclone's DOMAIN keys      -> config.DOMAIN table, as before
        cmdline, root               applied: folded into ``extra`` as xl does
        maxmem, maxvcpus, on_*,     checked as xl checks them (bad value,
        uuid, builder               maxmem < memory: errors), then no effect
        devices, bootloader         refused unless empty: clones cannot share them
                                    (vif and disk are xenclone's own keys)
        any other xl key            accepted, no effect
        a key xl does not know      an error, as before
    -> daemon op_create -> for_master(cfg): the applied config, and one
       warning naming the keys that have no effect on clones (logged and
       returned to the command, which prints it).
"""

import difflib
import re

from xenclone.wire import WireError

# What a clone is: the image's memory, vCPUs and kernel state.  xenclone
# decides what happens when a domain ends (it keeps it, to read its pages).
_ENDS = "xenclone keeps a domain that ends, to read its pages"
_SIZE = "a clone has exactly its image's memory and vCPUs"
NO_EFFECT = {
    "maxmem": _SIZE, "maxvcpus": _SIZE,
    "on_poweroff": _ENDS, "on_reboot": _ENDS, "on_crash": _ENDS, "on_watchdog": _ENDS,
    "on_soft_reset": _ENDS,
    "uuid": "each domain gets its own uuid",
    "builder": "type decides",
}
_ACTIONS = ("destroy", "restart", "rename-restart", "preserve", "coredump-destroy",
            "coredump-restart", "soft-reset")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")

# Devices (and a boot loader) a clone would need of its own: refused unless empty.
REFUSED = {key: "only vif and disk devices are handled: a clone could not get its own"
           for key in (
    "vfb", "vkb", "pci", "usbctrl", "usbdev", "channel", "vtpm", "vdispl", "vsnd", "p9",
    "pvcalls", "dtdev", "iomem", "ioports", "irqs", "rdm", "virtio", "usbdevice")}
REFUSED.update(bootloader="only direct kernel boot (kernel =): no boot loader",
               bootloader_args="only direct kernel boot (kernel =): no boot loader")

# Every other key of xl.cfg(5) (Xen 4.17): accepted, not applied.
OTHER = frozenset("""
pool cpus cpus_soft cpu_weight cap vnuma seclabel init_seclabel max_grant_frames
max_maptrack_frames max_grant_version max_event_channels nomigrate driver_domain
device_tree passthrough e820_host direct_io_safe tsc_mode localtime rtc_timeoffset
vmtrace_buf_kb vpmu iommu_memkb altp2m altp2mhvm nestedhvm hap oos shadow_memory
timer_mode viridian acpi acpi_s3 acpi_s4 acpi_laptop_slate apic pae hpet bios
bios_path_override firmware pvshim pvshim_path pvshim_cmdline pvshim_extra
gfx_passthru rdm_mem_boundary mmio_hole pci_permissive pci_msitranslate pci_seize
pci_power_mgmt usb usbversion device_model_version device_model_override
device_model_stubdomain_override device_model_stubdomain_seclabel device_model_args
device_model_args_pv device_model_args_hvm device_model_user dm_restrict stdvga vga
videoram vnc vnclisten vncdisplay vncunused vncpasswd keymap sdl opengl serial boot
soundhw spice spicehost spiceport spicetls_port spicedisable_ticketing spicepasswd
spiceagent_mouse spicevdagent spice_clipboard_sharing spiceusbredirection
spice_image_compression spice_streaming_video nographic xen_platform_pci
smbios_firmware acpi_firmware ms_vm_genid hdtype vkb_device gic_version vuart cpuid
xend_suspend_evtchn_compat claim_mode dom0_mem_size
""".split())

XL = frozenset(NO_EFFECT) | frozenset(REFUSED) | OTHER | {"cmdline", "root"}


class XlKeyError(ValueError):
    """A bad value of an xl key; ``key`` names it."""

    line = None        # set where the config file's line is known

    def __init__(self, key, message):
        super().__init__(message if message.startswith("unknown key") else
                         "%s: %s" % (key, message))
        self.key = key


def _check(key, value):
    """Raise XlKeyError where xl would refuse ``value``."""
    if key in REFUSED and value not in ("", []):
        raise XlKeyError(key, REFUSED[key])
    if key.startswith("on_") and value not in _ACTIONS:
        raise XlKeyError(key, "expected one of %s" % ", ".join(_ACTIONS))
    if key in ("maxmem", "maxvcpus") and not (type(value) is int and value >= 1):
        raise XlKeyError(key, "expected a number of at least 1")
    if key == "uuid" and not (isinstance(value, str) and _UUID.match(value)):
        raise XlKeyError(key, "not a uuid (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")
    if key in ("cmdline", "root", "builder") and not isinstance(value, str):
        raise XlKeyError(key, "expected a string")
    if key == "builder" and value not in ("hvm", "generic"):
        raise XlKeyError(key, 'expected "hvm" or "generic"')


def check_sizes(cfg, given):
    """xl's own cross-checks: maxmem below memory, maxvcpus below vcpus;
    builder without type (``given``: the keys the config set)."""
    for most, base in (("maxmem", "memory"), ("maxvcpus", "vcpus")):
        if most in cfg and base in cfg and cfg[most] < cfg[base]:
            raise XlKeyError(most, "%d is less than %s (%d)" % (cfg[most], base, cfg[base]))
    if "builder" in given and "type" not in given:
        # xl's old name for type: hvm, or generic (PV).
        raise XlKeyError("builder", 'only PVH guests (type = "pvh"): PV and HVM guests are '
                         "not supported")


def split_entries(entries, own_keys):
    """``entries`` (config.Entry) as (xenclone's own, xl's).  Raises
    XlKeyError with the entry's line as ``line`` for a bad one."""
    own, xl = [], []
    for e in entries:
        if e.key in own_keys:
            own.append(e)
            continue
        if e.key not in XL:
            near = difflib.get_close_matches(e.key, list(own_keys) + sorted(XL), 1)
            err = XlKeyError(e.key, "unknown key %r: neither xenclone's nor xl.cfg(5)'s%s"
                             % (e.key, " (did you mean %r?)" % near[0] if near else ""))
        else:
            try:
                _check(e.key, e.value)
                xl.append(e)
                continue
            except XlKeyError as bad:
                err = bad
        err.line = e.line
        raise err
    return own, xl


def _extra(cfg):
    """The kernel command line as xl builds it: ``cmdline``, else ``root=ROOT
    EXTRA``.  Returns (command line, keys it overrides)."""
    if cfg.get("cmdline"):
        overridden = [k for k in ("root", "extra") if cfg.get(k)]
        return cfg["cmdline"], overridden
    parts = (["root=" + cfg["root"]] if cfg.get("root") else []) + (
        [cfg["extra"]] if cfg.get("extra") else [])
    return " ".join(parts), []


def for_master(cfg, name, log):
    """The daemon's side: (cfg with xl's keys applied or dropped, warning
    text or None), the warning logged once.  A key xl would refuse is
    WireError bad-config (a request need not come from a checked file)."""
    try:
        for key, value in cfg.items():
            if key in XL:
                _check(key, value)
        check_sizes(cfg, set(cfg))
    except XlKeyError as e:
        raise WireError("bad-config", str(e))
    extra, overridden = _extra(cfg)
    applied = {k: v for k, v in cfg.items() if k not in XL}
    applied["extra"] = extra
    why = {k: NO_EFFECT.get(k, "not applied by xenclone") for k in cfg
           if k in XL and k not in ("cmdline", "root")}
    why.update((k, "cmdline replaces it, as in xl") for k in overridden)
    text = warning(why)
    if text:
        log.warn("create {name}: {warning}", name=name, warning=text)
    return applied, text


def warning(why):
    """One line naming every key without effect, grouped by reason."""
    if not why:
        return None
    groups = {}
    for key in sorted(why):
        groups.setdefault(why[key], []).append(key)
    return "no effect on clones: " + "; ".join(
        "%s (%s)" % (", ".join(keys), reason) for reason, keys in groups.items())
