"""Applies the host budget policies: the kernel's figures in, the ledger's
budget and the clones' burst caps out.  The decisions are in
``xenclone.policy.budget``; this only reads, ticks and applies."""

from twisted.application import service
from twisted.internet import task
from twisted.logger import Logger

from xenclone import hostmem


class HostMemoryService(service.Service):
    log = Logger()

    def __init__(self, reactor, pager, watermarks, bursts=None, interval=1.0,
                 burst_interval=0.1, read_available=hostmem.available_pages,
                 read_psi=hostmem.psi_some_avg10):
        self.reactor = reactor
        self.pager = pager
        self.watermarks = watermarks
        self.bursts = bursts
        self.read_available = read_available     # on Xen: dom0's free memory
        self.read_psi = read_psi
        self.last = {}
        self._loops = [(self._pressure, interval)]
        if bursts is not None:
            self._loops.append((self._burst, burst_interval))
        self._running = []

    def startService(self):
        super().startService()
        for fn, interval in self._loops:
            loop = task.LoopingCall(fn)
            loop.clock = self.reactor
            loop.start(interval)
            self._running.append(loop)

    def stopService(self):
        super().stopService()
        for loop in self._running:
            loop.stop()
        self._running = []

    def set_ceiling(self, pages):
        """The operator's budget: the most the watermarks give back."""
        self.watermarks.ceiling = pages
        self.pager.rebudget(pages)

    def _pressure(self):
        ledger = self.pager.ledger
        available, psi = self.read_available(), self.read_psi()
        budget = self.watermarks.budget(ledger.budget_pages, ledger.allocated, available, psi)
        self.last = {"available_pages": available, "psi_some_avg10": psi,
                     "low_pages": self.watermarks.low, "high_pages": self.watermarks.high,
                     "ceiling_pages": self.watermarks.ceiling}
        if budget != ledger.budget_pages:
            self.log.info("host budget {old} -> {new} pages ({available} pages available, "
                          "PSI {psi})", old=ledger.budget_pages, new=budget,
                          available=available, psi=psi)
            self.pager.rebudget(budget)

    def _burst(self):
        ledger = self.pager.ledger
        resident = {d: ledger.resident(d) for d in ledger.clones()}
        now = int(self.reactor.seconds() * 1e9)
        for domid, (cap, evict_to) in self.bursts.step(now, resident).items():
            ledger.set_cap(domid, cap)
            if evict_to is not None:
                self.log.info("clone {domid}: burst over, back to {pages} pages",
                              domid=domid, pages=evict_to)
                self.pager.evict_to(domid, evict_to)

    def state(self):
        return dict(self.last, ceiling_pages=self.watermarks.ceiling, bursts=None if self.bursts is None else {
            "limit_pages": self.bursts.limit, "burst_pages": self.bursts.burst,
            "burst_ms": self.bursts.burst_ns // 1000000})
