"""The VMM host's vCPU threads, a mixin of ``VmmHost``.

A domain's vCPU thread starts with its VM, before its launch, and waits at
the VM's gate (in C, the GIL released); opening the gate lets it enter
KVM_RUN at once.  ``want`` says what the thread should do next (run, park,
stop); it changes under ``cond``.  A vCPU blocked in a page fault that
nobody serves cannot be kicked out of KVM_RUN here, so waits are bounded.
The thread reports through the reactor (``_set_state``, ``_parked``,
``_closed``), never touching the host's tables itself.
"""

import threading

from twisted.internet import defer

from xenclone import workload
from xenclone.backends.kvm.xenstore_port import PORTS as XENSTORE_PORTS
from xenclone.interfaces import DomainState

PARK_TIMEOUT = 0.1      # a running vCPU leaves KVM_RUN in microseconds


class VcpuThreads:
    """Start, run, park, resume and end a domain's vCPU thread."""

    def _spawn(self, dom):
        dom.thread = threading.Thread(target=self._vcpu_loop, args=(dom,), name="vcpu",
                                      daemon=True)
        dom.thread.start()

    def _start(self, dom):
        dom.vm.open_gate()
        # The thread's own reports reach the reactor after this one.
        self._set_state(dom, DomainState.RUNNING)

    def _let_go(self, dom):
        """End a domain nobody knows of yet (a spare, a failed launch)."""
        with dom.cond:
            dom.want = "stop"
        dom.vm.kick(dom.thread.ident)     # its thread closes the VM

    def _vcpu_loop(self, dom):
        call = self.reactor.callFromThread
        while True:
            ex = dom.vm.run_until_exit(lambda port: self._io_in(dom, port))
            if ex.kind == "io_out":
                self._io_out(dom, ex)
            elif ex.kind in ("hlt", "error"):
                if ex.kind == "hlt":
                    state = DomainState.READY if dom.role == "master" else DomainState.DONE
                else:
                    dom.error = "vCPU stopped: exit reason %s" % (ex.reason,)
                    state = DomainState.CRASHED
                with dom.cond:
                    if dom.want == "run":
                        dom.want = "park"
                call(self._set_state, dom, state)
            with dom.cond:
                if dom.want == "stop":
                    break
                if dom.want == "park":
                    dom.parked = True
                    call(self._parked, dom)
                    while dom.want == "park":
                        dom.cond.wait()
                    dom.parked = False
        dom.vm.close()
        call(self._closed, dom)

    def _io_in(self, dom, port):
        if port in XENSTORE_PORTS and dom.xenstore is not None:
            return dom.xenstore.io_in(port)
        return dom.inputs.get(port, 0)

    def _io_out(self, dom, ex):
        if ex.port in XENSTORE_PORTS and dom.xenstore is not None:
            dom.xenstore.io_out(ex.port, ex.value)
            return
        if dom.t_first_ns is None:
            # The clone's first exit after resume: its first instruction.
            dom.t_first_ns = dom.vm.in_t_ns.get(workload.PORT_CLONE_ID)
        if ex.port == workload.PORT_RESULT:
            dom.result = ex.value

    def _parked(self, dom):
        if dom.state == DomainState.RUNNING:
            self._set_state(dom, DomainState.PAUSED)
        waiters, dom.waiters = dom.waiters, []
        for d in waiters:
            d.callback(True)

    def _wait(self, dom, timeout=PARK_TIMEOUT):
        """Deferred[bool]: the vCPU thread parked or ended (False: it did not
        within ``timeout``, so it sits in an unserved page fault)."""
        d = defer.Deferred()
        dom.waiters.append(d)

        def expire():
            if not d.called:
                dom.waiters.remove(d)
                d.callback(False)

        self.reactor.callLater(timeout, expire)
        return d

    def _park(self, dom):
        """Stop the vCPU."""
        if not dom.vm.gate_open or not dom.thread.is_alive() or dom.parked:
            return defer.succeed(True)
        with dom.cond:
            if dom.want == "run":
                dom.want = "park"
        d = self._wait(dom)
        dom.vm.kick(dom.thread.ident)
        return d

    def _resume(self, dom):
        if not dom.vm.gate_open:
            self._start(dom)
            return
        with dom.cond:
            dom.want = "run"
            dom.cond.notify()
        self._set_state(dom, DomainState.RUNNING)
