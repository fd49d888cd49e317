"""A Linux master's vifs and disks given to its clones, and their identity
(issue 18): the Xen backend's side, a mixin of ``XenBackend``.

    create / adopt   the master's Devices parsed, anything else refused
                     (devices.py); kept as xl strings in its record
    bless            before the suspend: its disks checked (formats, files);
                     suspended (prepare_image): each disk snapshotted
                     (disk_snapshots.py); its vifs travel in the image state
    launch           ``clone_config``: the clone's xl settings get a vif per
                     master vif on the same bridge with the clone's own MAC
                     (clone_mac.py) and a qcow2 overlay per disk; its
                     identity nodes (clone_identity.py) are written before
                     its clone-id, so the guest agent finds them in place
    destroy          its overlays removed, unless kept
    discard          refused while overlays depend on the snapshots

The clone is created by ``xl create -p`` of those settings, so libxl makes
its backends fresh, as on ``xl restore``, and the resumed guest's
frontends connect to them (netfront reads its new MAC then).  A fork clone
is made without libxl and gets none: an image with devices gets no image
domain, and fill = fork is refused for it.  The state is files under the
backend's work directory: the snapshots and overlays (``disks/``) and the
domain records.
"""

from twisted.internet import defer

from xenclone import xl_devices as devices
from xenclone.backends.xen import clone_identity, linux
from xenclone.backends.xen.clone_mac import clone_mac
from xenclone.backends.xen.errors import xen_errors
from xenclone.backends.xen.image_state import LINUX, unpack_devices
from xenclone.wire import WireError


def specs(found):
    """``Devices`` as the xl strings kept in records and image states."""
    return {"vif": [n.spec() for n in found.nics], "disk": [d.spec() for d in found.disks]}


def parse(kept):
    """``Devices`` from ``specs``' dict (or None: no devices)."""
    kept = kept or {}
    return devices.from_xl_cfg(kept.get("vif", []), kept.get("disk", []))


def master_settings(config, kept):
    """The master's xl settings with its own devices (``xl create`` of it)."""
    kept = kept or {}
    return dict(config, **{k: v for k, v in kept.items() if v})


class DeviceClones:
    """Needs ``XenBackend``'s ``disks`` (DiskSnapshots), records and XenStore."""

    # -- bless

    @defer.inlineCallbacks
    def _check_devices(self, dom):
        """Before a master is suspended: what bless could not snapshot is
        refused with the master untouched."""
        yield self.disks.check(parse(dom.devices).disks)

    def prepare_image(self, image, parent=None):
        """Bless's last step, the master still suspended: its disks'
        snapshots; an image with devices gets no image domain (forks get no
        devices), others get one where the hypervisor forks."""
        found = parse(unpack_devices(image.vcpu_state))
        if not found:
            return super().prepare_image(image, parent)
        return xen_errors(self.disks.snapshot(image.image_id, found.disks)
                          .addCallback(lambda taken: None))

    def drop_image(self, image_id):
        """Discard: refused while overlays, live or kept, use its snapshots."""
        return xen_errors(defer.maybeDeferred(self.disks.discard, image_id)
                          .addCallback(lambda _: super(DeviceClones, self).drop_image(image_id)))

    # -- launch

    @defer.inlineCallbacks
    def _clone_config(self, image, clone, config, fill):
        """``config`` with the clone's own vifs and disks (overlays made
        now), or as it is for an image without devices."""
        found = parse(unpack_devices(image.vcpu_state))
        if not found:
            return config
        if fill == "fork":
            raise WireError("no-fork", "image %s has vif or disk devices: fork clones get "
                            "none (libxl does not make them): use fill=before-run or lazy"
                            % image.image_id)
        if found.disks and not self.disks.disks(image.image_id):
            raise WireError("no-snapshot", "image %s has no disk snapshots (its bless did not "
                            "finish): discard it and bless again" % image.image_id)
        generation = clone.meta.get("generation")
        # A master with several vifs: the clone's others hash "<id>.<n>".
        nics = [n.for_clone(clone_mac(image.image_id, generation,
                                      clone.clone_id if i == 0 else "%s.%d" % (clone.clone_id, i)))
                for i, n in enumerate(found.nics)]
        t0 = self.reactor.seconds()
        disks = yield self.disks.clone_disks(image.image_id, clone.clone_id)
        # The rig's net job reads the overlays' time from this line.
        self.log.info("clone {name}: vifs {macs}, disks {disks} (overlays made in {ms} ms)",
                      name=clone.name, macs=[n.mac for n in nics],
                      disks=[d.target for d in disks],
                      ms=round((self.reactor.seconds() - t0) * 1000, 1))
        return dict(config, vif=[n.spec() for n in nics], disk=[d.spec() for d in disks])

    def _drop_disks(self, meta, keep=False):
        """A clone's overlays gone (or kept); the paths kept."""
        if meta.get("image") is None or meta.get("clone_id") is None:
            return []
        return self.disks.remove_clone(meta["image"], meta["clone_id"], keep)

    @staticmethod
    @defer.inlineCallbacks
    def _tell_linux_clone(xs, domid, clone_id):
        """A Linux clone's identity nodes, then its id (the agent's trigger)."""
        yield clone_identity.write_identity(xs, domid)
        yield linux.write_clone_id(xs, domid, clone_id)

    # -- identity

    def identity(self, domid, wait=0):
        """Whether the clone's agent renewed its identity: answered at once,
        or after waiting up to ``wait`` seconds for its handshake."""
        return xen_errors(self._identity(domid, wait))

    @defer.inlineCallbacks
    def _identity(self, domid, wait):
        dom = self._get(domid)
        if dom.role != "clone" or dom.kind != LINUX:
            raise WireError("unsupported", "%s is not a Linux clone: it has no identity "
                            "handshake" % dom.name)
        xs = yield self._xenstore()
        return (yield clone_identity.wait_identity(self.reactor, xs, domid, wait))
