"""The controller's domain records, and the specs it gives a backend to make one."""

import attr

from xenclone.domain_record import DomainRecord
from xenclone.interfaces import DomainState
from xenclone.wire import WireError

LIVE = (DomainState.RUNNING, DomainState.PAUSED, DomainState.READY, DomainState.DONE,
        DomainState.WAITING_FOR_MEMSERVER, DomainState.PAUSED_BY_TIMEOUT,
        DomainState.IMAGE_GONE)
# States in which a domain is still on its way (``wait`` waits on them).
_RUNS = (DomainState.RUNNING, DomainState.WAITING_FOR_MEMSERVER)


@attr.s(frozen=True)
class MasterSpec:
    domid = attr.ib()
    name = attr.ib()
    npages = attr.ib()
    params = attr.ib()                 # the project's guest: its workload (else None)
    meta = attr.ib(factory=dict)       # the daemon's record, kept by the backend
    boot = attr.ib(default=None)       # a Linux master: memory, vcpus, kernel, ramdisk, extra,
                                       # vif, disk (xl strings)


@attr.s(frozen=True)
class CloneSpec:
    domid = attr.ib()
    name = attr.ib()
    clone_id = attr.ib()
    input = attr.ib()
    paused = attr.ib(default=False)
    share = attr.ib(default=True)      # share.onfetch: map image pages shared
    meta = attr.ib(factory=dict)
    fill = attr.ib(default=None)       # lazy | before-run | auto; None: the backend's


@attr.s(eq=False)
class Domain(DomainRecord):
    memory_mib = attr.ib()
    image = attr.ib(default=None)
    clone_id = attr.ib(default=None)
    input = attr.ib(default=None)
    params = attr.ib(default=None)
    t0_ns = attr.ib(default=None)
    launch_ms = attr.ib(default=None)
    waiters = attr.ib(factory=list)
    fill_mode = attr.ib(default=None)      # a clone's, from its region

    def record(self):
        """What the backend keeps for a daemon that restarts."""
        return {"memory_mib": self.memory_mib, "image": self.image, "clone_id": self.clone_id,
                "input": self.input, "params": self.params}

    def summary(self):
        return {"domid": self.domid, "name": self.name, "role": self.role,
                "image": self.image, "state": self.state, "memory_mib": self.memory_mib}


def unknown_identity(f):
    """A clone the backend no longer has: its handshake cannot be read."""
    f.trap(WireError)
    return {"identity": "unknown (%s)" % f.value}
