"""The operator's settings ops (``set``, ``set_host``), kept across restarts.

A mixin of ``Controller``: each op checks its input, applies it (the
pager's knobs, the host budget), and on success records it in the
controller's ``kept`` (an ``OperatorState``, or None).  A daemon that
took its clones back from the VMM host (``recovery.py``) calls
``restore_settings``: every clone gets its settings again, the host its
budget, as if the operator had said it again.
"""

from twisted.internet import defer
from twisted.logger import Logger

from xenclone.interfaces import IBalloonBackend
from xenclone.ledger import LedgerError
from xenclone.wire import WireError

log = Logger()
KNOWN = {"target": int, "limit": int, "evict": list, "share.onfetch": bool}


def _check_knobs(knobs):
    if not isinstance(knobs, dict) or not knobs:
        raise WireError("bad-argument", "set needs key=value pairs")
    for key, value in knobs.items():
        kind = KNOWN.get(key)
        if kind is None:
            raise WireError("bad-argument", "unknown setting %r; known: %s"
                            % (key, ", ".join(sorted(KNOWN))))
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise WireError("bad-argument", "%s must be %s" % (key, kind.__name__))
    return knobs


class SettingsOps:
    kept = None

    def _set_knobs(self, dom, knobs, balloon=False):
        try:
            self.pager.set_knobs(dom.domid, target=None if balloon else knobs.get("target"),
                                 limit=knobs.get("limit"), classes=knobs.get("evict"),
                                 share=knobs.get("share.onfetch"))
        except LedgerError as e:
            raise WireError("bad-argument", str(e))
        if self.kept is not None:
            self.kept.set_clone(dom.domid, dom.name, knobs)

    def op_set(self, msg):
        """Per-clone knobs: target and limit (pages), eviction classes,
        share.onfetch.  A target evicts down to it at once."""
        dom = self._clone(msg)
        knobs = _check_knobs(msg.get("knobs"))
        # A clone the hypervisor cannot page (Xen without MEM_PAGING) gives
        # frames back only through its guest's balloon driver.
        balloon = bool(knobs.get("target")) and IBalloonBackend.providedBy(self.backend) and (
            dom.fill_mode or self.backend.fill_mode) != "lazy"
        if balloon:     # refused (no balloon driver): nothing is changed
            d = self.backend.balloon(dom.domid, knobs["target"], operator=True)
            d.addCallback(lambda _: self._set_knobs(dom, knobs, balloon=True))
        else:
            self._set_knobs(dom, knobs)
            d = self.pager.evict_to(dom.domid, knobs["target"]) if knobs.get(
                "target") else defer.succeed(0)
        d.addCallback(lambda _: self._changed())       # XenStore shows the new figures
        return d.addCallback(lambda _: self.op_info({"domain": dom.domid}))

    def op_set_host(self, msg):
        """Change the host budget at run time (pages): the most memory
        pressure lets the clones have."""
        budget = msg.get("budget_pages")
        if type(budget) is not int or not 1 <= budget <= 2**40:
            raise WireError("bad-argument", "budget_pages must be an integer from 1 to %d"
                            % 2**40)
        self.host_memory.set_ceiling(budget)
        if self.kept is not None:
            self.kept.set_host_budget(budget)
        return self.ledger.host_stats()

    def restore_settings(self):
        """What the operator set before a restart, for the domains taken back."""
        if self.kept is None:
            return
        budget = self.kept.host_budget()
        if budget is not None:
            self.host_memory.set_ceiling(budget)
            log.info("host budget {pages} pages, as set before the restart", pages=budget)
        for domid in [d for d in self.kept.clone_ids() if d not in self.domains]:
            self.kept.forget_clone(domid)       # not taken back: gone with the VMM host
        for dom in list(self.domains.values()):
            knobs = self.kept.clone_knobs(dom.domid, dom.name) if dom.role == "clone" else {}
            if not knobs:
                continue
            try:
                # A balloon target lives in the guest itself: only the pager's part.
                self._set_knobs(dom, knobs, balloon=IBalloonBackend.providedBy(self.backend))
            except WireError as e:
                log.error("{name}: settings {knobs} not restored: {why}", name=dom.name,
                          knobs=knobs, why=str(e))
                continue
            log.info("{name}: settings {knobs} restored", name=dom.name, knobs=knobs)
