"""Guest-initiated clones, as SnowFlock's ``sf_clone``: "bless me, launch N".

A guest allowed by the config (``guest_requests``) writes its own node

    /local/domain/<domid>/xenclone/request  = {"op": "clone", "count": 2, "id": "job-7"}

and reads the answer in ``.../response``:

    {"seq": 1, "id": "job-7", "ok": true, "image": "m-g1", "generation": "...",
     "clone_ids": [1, 2]}
    {"seq": 2, "id": "", "ok": false, "code": "bad-json", "error": "..."}

``seq`` counts the answers to this guest, so a guest can tell a new answer
from the last one even when its request was too broken to carry its ``id``.

The guest names nothing but itself: the request has no domain field, and
the answer gives clone ids (each clone reads its own from
``xenclone/clone-id``), never domids.  XenStore permissions already keep
the guest to its own area; here the daemon checks the request itself
against the config: who may ask, how many live clones, how often.

The daemon takes a request by clearing the node in a transaction, so each
write is answered once however often the watch fires.
"""

import itertools
import json

from twisted.internet import defer
from twisted.logger import Logger

from xenclone.control.domain_ops import MAX_LAUNCH
from xenclone.control.oplog import as_caller
from xenclone.names import BadName, check_token
from xenclone.wire import Message, WireError, dispatch
from xenclone.xenstore.client import Disconnected
from xenclone.xenstore.tree import domain_path
from xenclone.xenstore.wire import XenStoreError

log = Logger(namespace="xenclone.xenstore.guest")

MAX_REQUEST = 512
_FIELDS = {"op", "count", "id"}


def parse_guest_request(raw):
    """``(count, id)`` of a guest's request, or ``WireError`` saying why not."""
    if len(raw) > MAX_REQUEST:
        raise WireError("too-large", "a request is at most %d bytes" % MAX_REQUEST)
    try:
        fields = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise WireError("bad-json", "the request is not JSON")
    if not isinstance(fields, dict):
        raise WireError("bad-request", "the request is a JSON object")
    token = fields.get("id", "")
    if token != "":
        try:
            check_token(token, "id")
        except BadName as e:
            raise WireError("bad-request", e.message)
    unknown = sorted(str(k)[:32] for k in set(fields) - _FIELDS)
    if unknown:
        raise WireError("bad-request", "unknown field(s): %s; known: count, id, op"
                        % ", ".join(unknown))
    if fields.get("op") != "clone":
        raise WireError("unknown-op", 'the only op is "clone"')
    count = fields.get("count", 1)
    if type(count) is not int or not 1 <= count <= MAX_LAUNCH:
        raise WireError("bad-request", "count: an integer from 1 to %d" % MAX_LAUNCH)
    return count, token


class GuestPolicy:
    def __init__(self, allowed, max_clones, interval):
        self.allowed = set(allowed)
        self.max_clones = max_clones
        self.interval = interval        # seconds between two accepted requests

    def may_ask(self, dom):
        return dom.role == "master" and ("*" in self.allowed or dom.name in self.allowed)


class GuestRequests:
    def __init__(self, reactor, client, controller, policy):
        self.reactor = reactor
        self.client = client
        self.controller = controller
        self.policy = policy
        self._watched = set()           # domids
        self._busy = {}                 # domid -> Deferred of the request being served
        self._again = set()             # domids poked while busy
        # domid -> {"last": time of its last accepted request, "images": image
        # ids made at its request, "answers": answers given}; kept across
        # restarts in the controller's ``kept``, if it has one.
        self._guests = {}
        self.kept = getattr(controller, "kept", None)
        if self.kept is not None:
            for domid in self.kept.guest_ids():
                if domid not in controller.domains:
                    self.kept.forget_guest(domid)       # gone while no daemon ran

    def _guest(self, domid):
        if domid not in self._guests:
            self._guests[domid] = dict(self.kept.guest(domid)) if self.kept else {}
        return self._guests[domid]

    def _keep(self, domid):
        if self.kept is not None:
            self.kept.set_guest(domid, self._guests[domid])

    def stop(self):
        return defer.DeferredList(list(self._busy.values()))

    def _node(self, domid, leaf):
        return "%s/xenclone/%s" % (domain_path(domid), leaf)

    def on_home(self, dom):
        """Its home exists: listen to its request node, if it may ask."""
        if dom.domid in self._watched or not self.policy.may_ask(dom):
            return
        self._watched.add(dom.domid)
        self.client.watch(self._node(dom.domid, "request"), "guest-%d" % dom.domid,
                          lambda path, token, domid=dom.domid: self.poke(domid)).addErrback(
            lambda f: log.warn("watching dom{domid}: {error}", domid=dom.domid,
                               error=f.getErrorMessage()))

    def on_gone(self, domid):
        if domid in self._watched:
            self._watched.discard(domid)
            self.client.unwatch(self._node(domid, "request"), "guest-%d" % domid).addErrback(
                lambda f: None)     # the connection is gone, and the watch with it
        self._guests.pop(domid, None)
        if self.kept is not None:
            self.kept.forget_guest(domid)

    def poke(self, domid):
        """The request node may have changed: take and answer what is there
        (events that come meanwhile make one more look afterwards)."""
        if domid in self._busy:
            self._again.add(domid)
            return
        d = self._serve(domid)
        if not d.called:
            self._busy[domid] = d
            d.addBoth(self._served, domid)

    def _served(self, _, domid):
        del self._busy[domid]
        if domid in self._again:
            self._again.discard(domid)
            self.poke(domid)

    @defer.inlineCallbacks
    def _serve(self, domid):
        try:
            while True:
                raw = yield self._take(domid)
                if raw is None:
                    return
                answer = yield self._answer(domid, raw)
                yield self.client.write(self._node(domid, "response"),
                                        json.dumps(answer, sort_keys=True))
        except (XenStoreError, Disconnected) as e:
            # The domain went away, or xenstored did: nothing to answer.
            log.debug("dom{domid} request: {error}", domid=domid, error=e)

    def _take(self, domid):
        """The request's value, cleared in the same transaction; None if empty."""
        path = self._node(domid, "request")

        @defer.inlineCallbacks
        def take(tx):
            value = yield tx.read(path)
            if not value:
                return None
            yield tx.write(path, b"")
            return value

        return self.client.transaction(take)

    @defer.inlineCallbacks
    def _answer(self, domid, raw):
        token = ""
        try:
            count, token = parse_guest_request(raw)
            result = yield self._clone(domid, count)
            answer = dict(result, ok=True)
        except WireError as e:
            answer = {"ok": False, "code": e.code, "error": e.message}
        except Exception:
            log.failure("dom{domid} request", domid=domid)
            answer = {"ok": False, "code": "internal", "error": "internal error"}
        answer["id"] = token
        guest = self._guest(domid)
        answer["seq"] = guest["answers"] = guest.get("answers", 0) + 1
        self._keep(domid)
        log.info("dom{domid} asked to be cloned: {code}", domid=domid,
                 code="ok" if answer["ok"] else answer["code"])
        return answer

    @defer.inlineCallbacks
    def _clone(self, domid, count):
        dom = self.controller.domains.get(domid)
        if dom is None or not self.policy.may_ask(dom):
            raise WireError("refused", "this domain may not ask to be cloned")
        now = self.reactor.seconds()
        guest = self._guest(domid)
        last = guest.get("last")
        if last is not None and now - last < self.policy.interval:
            raise WireError("rate-limited", "one request every %g s" % self.policy.interval)
        mine = set(guest.get("images", ()))
        live = sum(1 for d in self.controller.domains.values() if d.image in mine)
        if live + count > self.policy.max_clones:
            raise WireError("quota", "%d live clones asked for, %d more would exceed %d"
                            % (live, count, self.policy.max_clones))
        guest["last"] = now
        self._keep(domid)
        # <master>-g<n>, the first n free (images outlive the daemon).
        images = yield self.controller.op_images({})
        taken = {i["image_id"] for i in images["images"]}
        name = next(n for n in ("%s-g%d" % (dom.name[:52], k) for k in itertools.count(1))
                    if n not in taken)
        blessed = yield dispatch(as_caller(self.controller, "guest dom%d" % domid), Message(
            {"op": "bless", "domain": domid, "name": name, "resume": True}))
        guest.setdefault("images", []).append(name)
        self._keep(domid)
        launched = yield dispatch(as_caller(self.controller, "guest dom%d" % domid), Message(
            {"op": "launch", "image": name, "count": count}))
        return {"image": name, "generation": blessed.get("generation"),
                "clone_ids": [c["clone_id"] for c in launched["clones"]]}
