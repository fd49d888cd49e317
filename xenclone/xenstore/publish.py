"""The daemon's state in XenStore, kept in step with the controller.

    /tool/xenclone/images/<key>/{image_id,master,generation,npages,...,clones}
    /tool/xenclone/clones/<domid>/{name,image,state,resident_pages,...}
    /tool/xenclone/host/{budget_pages,allocated_pages,...,evictions/<class>}
    /local/domain/<domid>/xenclone/{clone-id,image,generation}   (the guest reads)

XenStore paths allow no '.', so an image's key is its id with '.' as '@'
(image ids never hold '@'); ``image_id`` has the id itself.

Updates follow the controller's change events, at most one per
``interval`` seconds, and again every interval while a clone runs or the
last update found something new (ledger figures move with every fault,
which must not mean a write per fault, and go on moving a little after a
clone stopped: its last faults, evictions, a hoard).  Each update writes only the nodes that changed, in one
transaction.  The first update, and the first after a reconnect, replaces
the whole tree: what is there may be a dead daemon's (or a restarted
xenstored has nothing).
"""

import re

from twisted.internet import defer
from twisted.logger import Logger

from xenclone.interfaces import FIRST_HANDLE, DomainState
from xenclone.xenstore.tree import domain_path
from xenclone.xenstore.wire import XenStoreError

log = Logger(namespace="xenclone.xenstore.publish")

ROOT = "/tool/xenclone"
_MOVING = (DomainState.RUNNING, DomainState.WAITING_FOR_MEMSERVER)
_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_-]")


def image_key(image_id):
    return image_id.replace(".", "@")


def flatten(prefix, fields):
    """``{path: bytes}`` for the scalars of ``fields``, nested dicts below."""
    out = {}
    for key, value in fields.items():
        path = "%s/%s" % (prefix, _BAD_KEY_CHARS.sub("_", str(key)))
        if isinstance(value, dict):
            out.update(flatten(path, value))
        elif value is None or isinstance(value, (str, int, float)):
            out[path] = b"" if value is None else str(value).encode()
    return out


class Publisher:
    """``homes`` makes and removes each domain's own area (``DomainHomes``)."""

    def __init__(self, reactor, client, controller, homes, interval):
        self.reactor = reactor
        self.client = client
        self.controller = controller
        self.homes = homes
        self.interval = interval
        self._published = None      # path -> value as last written; None: unknown
        self._last = None           # reactor time of the last update
        self._call = None
        self._running = None        # the update under way
        self._stopped = False
        controller.on_change.append(self.changed)

    def changed(self):
        """Something changed: update soon, but not sooner than ``interval``
        after the last update."""
        if self._stopped or (self._call is not None and self._call.active()):
            return
        now = self.reactor.seconds()
        delay = 0 if self._last is None else max(0.0, self._last + self.interval - now)
        self._call = self.reactor.callLater(delay, self._update)

    def forget(self):
        """A new connection: what XenStore holds is unknown; write it all again."""
        self._published = None
        self.homes.forget()
        self.changed()

    def stop(self):
        self._stopped = True
        if self.changed in self.controller.on_change:
            self.controller.on_change.remove(self.changed)
        if self._call is not None and self._call.active():
            self._call.cancel()
        return self._running or defer.succeed(None)

    def _update(self):
        if self._running is not None:       # one at a time; then once more
            self._running.addBoth(lambda _: self.changed())
            return
        self._last = self.reactor.seconds()
        self._running = self._publish()

        def done(wrote):
            self._running = None
            # Figures move while clones run, and for a while after: the fault
            # path's last batch, evictions, a hoard.  So look again until an
            # update finds nothing new.
            if wrote or any(d.state in _MOVING for d in self.controller.domains.values()):
                self.changed()

        def failed(f):
            log.warn("publishing to XenStore failed: {error}; retrying",
                     error=f.getErrorMessage())
            self.forget()
            return False

        self._running.addErrback(failed).addBoth(done)

    @defer.inlineCallbacks
    def _publish(self):
        images = (yield self.controller.op_images({}))["images"]
        want = self._tree(images)
        gens = {i["image_id"]: i.get("generation") for i in images}
        yield self.homes.sync(self.controller.domains, gens)
        fresh = self._published is None
        if fresh:
            changed, gone = want, ["%s/%s" % (ROOT, kind) for kind in ("images", "clones", "host")]
        else:
            changed = {p: v for p, v in want.items() if self._published.get(p) != v}
            gone = _removals(self._published, want)
        if changed or gone:
            def write(tx):
                calls = [tx.mkdir(ROOT)] if fresh else []       # rm needs the parent
                calls += [tx.rm(p) for p in gone] + [tx.write(p, v) for p, v in changed.items()]
                return defer.gatherResults(calls, consumeErrors=True)
            yield self.client.transaction(write)
        self._published = want
        return bool(changed or gone)

    def _clone(self, dom):
        """What ``xenclone info`` shows but the expected answer (dear to
        compute, and a test's business): the ledger's figures."""
        fields = dict(dom.summary(), clone_id=dom.clone_id, result=dom.result,
                      launch_ms=dom.launch_ms)
        del fields["domid"]
        fields.update(self.controller.pager.stats(dom.domid) or {})
        return fields

    def _tree(self, images):
        want = {}
        for info in images:
            fields = {k: v for k, v in info.items() if not isinstance(v, dict)}
            fields["master"] = (info.get("meta") or {}).get("master", "")
            want.update(flatten("%s/images/%s" % (ROOT, image_key(info["image_id"])), fields))
        for dom in self.controller.domains.values():
            if dom.role == "clone":
                want.update(flatten("%s/clones/%d" % (ROOT, dom.domid), self._clone(dom)))
        want.update(flatten(ROOT + "/host", self.controller.ledger.host_stats()))
        return want


def _removals(old, new):
    """What to rm so that ``old`` becomes ``new``: a whole entry (an image,
    a clone: /tool/xenclone/<kind>/<key>) when none of it stays, else the
    nodes that went."""
    live = {_entry(p) for p in new}
    return sorted({_entry(p) if _entry(p) not in live else p for p in set(old) - set(new)})


def _entry(path):
    return "/".join(path.split("/")[:5])


@defer.inlineCallbacks
def _exists(tx, path):
    try:
        yield tx.read(path)
    except XenStoreError as e:
        if e.code != "ENOENT":
            raise
        return False
    return True


class DomainHomes:
    """Each domain's own area, readable by that guest only:

        /local/domain/<domid>                      n0,r<domid> (embedded: we make it)
        /local/domain/<domid>/xenclone             n0,r<domid>
            clone-id, image, generation            (clones)
            request                                n0,b<domid>  (if it may ask)
            response                               n0,r<domid>

    On the embedded server the daemon is also the toolstack: it introduces
    each domain (which opens the domain's socket for its VMM) and releases it
    when it goes.  On Xen, libxl made the domain's home and introduced it.
    """

    def __init__(self, client, toolstack, may_ask):
        self.client = client
        self.toolstack = toolstack      # True on the embedded server
        self.may_ask = may_ask          # dom -> bool
        self.made = {}                  # domid -> generation written
        self.on_home = []               # called with (dom) once its home exists
        self.on_gone = []               # called with (domid)

    def forget(self):
        self.made = {}

    @defer.inlineCallbacks
    def sync(self, domains, generations):
        for domid in sorted(set(self.made) - set(domains)):
            del self.made[domid]
            yield self._remove(domid)
            for listener in self.on_gone:
                listener(domid)
        for dom in sorted(domains.values(), key=lambda d: d.domid):
            if not self.toolstack and dom.domid >= FIRST_HANDLE:
                continue    # Xen has not numbered it yet: no home to write in
            gen = generations.get(dom.image)
            if dom.domid in self.made and self.made[dom.domid] == gen:
                continue
            yield self._make(dom, gen)
            self.made[dom.domid] = gen
            for listener in self.on_home:
                listener(dom)

    def _make(self, dom, generation):
        home = domain_path(dom.domid)
        area = home + "/xenclone"
        reader = ["n0", "r%d" % dom.domid]
        leaves = {}
        if dom.role == "clone":
            leaves = {"clone-id": str(dom.clone_id), "image": dom.image,
                      "generation": "" if generation is None else str(generation)}

        @defer.inlineCallbacks
        def make(tx):
            if self.toolstack:
                yield tx.mkdir(home)
                yield tx.set_perms(home, reader)
            elif not (yield _exists(tx, home)):
                return      # the domain is gone (libxl removed its home): none is made
            yield tx.mkdir(area)
            yield tx.set_perms(area, reader)        # leaves below inherit it
            for name, value in leaves.items():
                yield tx.write("%s/%s" % (area, name), value)
            if self.may_ask(dom):
                yield tx.mkdir(area + "/request")
                yield tx.set_perms(area + "/request", ["n0", "b%d" % dom.domid])
                yield tx.mkdir(area + "/response")

        d = self.client.transaction(make)
        if self.toolstack:
            d.addCallback(lambda _: self.client.introduce(dom.domid, 0, 0))
        return d

    @defer.inlineCallbacks
    def _remove(self, domid):
        """Gone already (a restarted xenstored, libxl's cleanup) is fine."""
        calls = ([lambda: self.client.rm(domain_path(domid)), lambda: self.client.release(domid)]
                 if self.toolstack else [lambda: self.client.rm(domain_path(domid) + "/xenclone")])
        for call in calls:
            try:
                yield call()
            except XenStoreError as e:
                if e.code != "ENOENT":
                    raise
