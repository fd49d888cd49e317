"""Applies the balloon policy (``xenclone.policy.balloon``) where the
hypervisor cannot page clones: the hypervisor's free memory and the
balloonable clones in, balloon targets out.  It only reads, ticks and
applies."""

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from xenclone.policy.balloon import Balloonable


class BalloonService(service.Service):
    log = Logger()

    def __init__(self, reactor, backend, policy, read_free, interval=2.0):
        self.reactor = reactor
        self.backend = backend          # provides IBalloonBackend
        self.policy = policy
        self.read_free = read_free      # the hypervisor's free pages
        self.interval = interval
        self.last = {}
        self._loop = None

    def startService(self):
        super().startService()
        self._loop = task.LoopingCall(self.tick)
        self._loop.clock = self.reactor
        self._loop.start(self.interval)

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    @defer.inlineCallbacks
    def tick(self):
        """One look: a failure is logged and the next tick tries again."""
        try:
            free = self.read_free()
            clones = {d: Balloonable(*v) for d, v in (yield self.backend.balloonable()).items()}
            moves = self.policy.targets(free, clones)
            self.last = {"free_pages": free, "clones": len(clones),
                         "targets": {str(d): c.target for d, c in clones.items()}}
            for domid, pages in sorted(moves.items()):
                yield self.backend.balloon(domid, pages)
                self.last["targets"][str(domid)] = pages
                self.log.info("balloon: domain {domid} target {old} -> {new} pages "
                              "({free} pages free)", domid=domid, old=clones[domid].target,
                              new=pages, free=free)
        except Exception:
            self.log.failure("balloon targets not applied")
