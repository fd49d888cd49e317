"""The XenStore database: nodes, permissions, quotas, transactions, watches.

Plain Python with no I/O, shared by every connection of the embedded server.
Semantics follow C xenstored (cxenstored):

* A node's first permission entry names its owner and the access of every
  domain not listed after it; the owner, its targeting domain and dom0 have
  full access.  A node created by a guest inherits its parent's permissions
  but is owned by the guest.
* A missing node whose nearest existing ancestor the caller cannot read
  reports EACCES, not ENOENT, so a guest learns nothing about other domains.
* Transactions work on a copy of the tree.  Nodes are never changed in place,
  so "untouched since the snapshot" is object identity; a commit whose read or
  written nodes changed meanwhile fails with EAGAIN.  Its watch events fire
  only on commit.
"""

import re
from collections import Counter

from xenclone.xenstore.wire import ABS_PATH_MAX, PAYLOAD_MAX, REL_PATH_MAX, XenStoreError

INTRODUCE_DOMAIN = "@introduceDomain"
RELEASE_DOMAIN = "@releaseDomain"
_SPECIAL_PERMS = (("n", 0),)            # special events reach only dom0
_PATH_CHARS = re.compile(r"[A-Za-z0-9\-/_@]+\Z")
_PERM = re.compile(r"([nrwb])(\d{1,5})\Z")
DOMID_MAX = 0xFFFF


class Quota:
    """Limits for unprivileged domains (cxenstored's defaults, roughly)."""

    def __init__(self, nodes=1000, watches=128, transactions=10, value_size=PAYLOAD_MAX):
        self.nodes, self.watches = nodes, watches
        self.transactions, self.value_size = transactions, value_size


class Caller:
    """One connection's identity, and where its watch events go.

    ``deliver(path, token)`` is called for each event of this caller's watches.
    """

    def __init__(self, domid, deliver=lambda path, token: None):
        self.domid = domid
        self.deliver = deliver

    @property
    def privileged(self):
        return self.domid == 0

    @property
    def home(self):
        return domain_path(self.domid)

    def __repr__(self):
        return "Caller(dom%d)" % self.domid


class Node:
    __slots__ = ("value", "perms", "children", "gen")

    def __init__(self, value, perms, children, gen):
        self.value, self.perms, self.children, self.gen = value, perms, children, gen

    @property
    def owner(self):
        return self.perms[0][1]

    def but(self, gen, value=None, perms=None, children=None):
        return Node(self.value if value is None else value,
                    self.perms if perms is None else perms,
                    self.children if children is None else children, gen)


def domain_path(domid):
    return "/local/domain/%d" % domid


def parent_of(path):
    return path.rsplit("/", 1)[0] or "/"


def is_child(child, parent):
    """True if ``child`` is ``parent`` or below it (the spec's definition)."""
    if child.startswith("@") or parent.startswith("@"):
        return child == parent
    return parent == "/" or child == parent or child.startswith(parent + "/")


def parse_perms(items):
    """``["r5", "n0"]`` -> ``(("r", 5), ("n", 0))``."""
    perms = []
    for item in items:
        m = _PERM.match(item)
        if not m or int(m.group(2)) > DOMID_MAX:
            raise XenStoreError("EINVAL", "bad permission %r" % item)
        perms.append((m.group(1), int(m.group(2))))
    if not perms:
        raise XenStoreError("EINVAL", "no permissions")
    return tuple(perms)


def format_perms(perms):
    return ["%s%d" % p for p in perms]


class _View:
    """The tree as one context sees it, with node counts per owner."""

    def __init__(self, nodes, owned):
        self.nodes, self.owned = nodes, owned

    def get(self, path):
        return self.nodes.get(path)

    def put(self, path, node):
        old = self.get(path)
        if old is not None:
            self.owned[old.owner] -= 1
        self.owned[node.owner] += 1
        self.nodes[path] = node

    def delete(self, path):
        self.owned[self.get(path).owner] -= 1
        del self.nodes[path]


class _Transaction(_View):
    """A private copy; remembers each touched node as it was at the start."""

    def __init__(self, caller, main):
        _View.__init__(self, dict(main.nodes), Counter(main.owned))
        self.caller = caller
        self.base = {}
        self.written = set()
        self.events = []

    def get(self, path):
        node = self.nodes.get(path)
        self.base.setdefault(path, node)
        return node

    def put(self, path, node):
        _View.put(self, path, node)
        self.written.add(path)

    def delete(self, path):
        _View.delete(self, path)
        self.written.add(path)


class _Watch:
    __slots__ = ("caller", "given", "path", "token")

    def __init__(self, caller, given, path, token):
        self.caller, self.given, self.path, self.token = caller, given, path, token

    def as_given(self, path):
        """Event paths of a relative watch are relative too."""
        if self.given.startswith(("/", "@")):
            return path
        return path[len(self.caller.home) + 1:]


class Store:
    def __init__(self, quota=None):
        self.quota = quota or Quota()
        self._gen = 0
        self._main = _View({}, Counter())
        self._main.put("/", Node(b"", (("n", 0),), (), 0))
        self._txs = {}
        self._next_tx = 1
        self._watches = []
        self._introduced = set()
        self._targets = {}
        self._create(self._main, Caller(0), "/tool", b"")

    # -- paths and permissions --------------------------------------------

    def resolve(self, caller, path, special=False):
        """Absolute, validated form of ``path`` (relative to the caller's home)."""
        if path.startswith("@"):
            if special and _PATH_CHARS.match(path):
                return path
            raise XenStoreError("EINVAL", "special path %r" % path)
        if not path.startswith("/"):
            if len(path) > REL_PATH_MAX:
                raise XenStoreError("EINVAL", "relative path too long")
            path = caller.home + "/" + path
        if (len(path) > ABS_PATH_MAX or not _PATH_CHARS.match(path) or "//" in path
                or (path != "/" and path.endswith("/"))):
            raise XenStoreError("EINVAL", "invalid path %r" % path[:64])
        return path

    def _access(self, caller, perms):
        """'o' (owner: everything), 'b', 'r', 'w' or 'n'."""
        ids = (caller.domid, self._targets.get(caller.domid))
        if caller.privileged or perms[0][1] in ids:
            return "o"
        for kind, domid in perms[1:]:
            if domid in ids:
                return kind
        return perms[0][0]

    def _can(self, caller, perms, want):
        return self._access(caller, perms) in ("o", "b", want)

    def _missing(self, view, caller, path):
        """ENOENT only if the caller may read the nearest existing ancestor."""
        while path != "/":
            path = parent_of(path)
            node = view.get(path)
            if node is not None:
                return XenStoreError("ENOENT" if self._can(caller, node.perms, "r") else "EACCES")
        return XenStoreError("ENOENT")

    def _node(self, view, caller, path, want):
        node = view.get(path)
        if node is None:
            raise self._missing(view, caller, path)
        if not self._can(caller, node.perms, want):
            raise XenStoreError("EACCES")
        return node

    def _view(self, caller, txid):
        if not txid:
            return self._main
        tx = self._txs.get(txid)
        if tx is None or tx.caller is not caller:
            raise XenStoreError("ENOENT", "no transaction %d" % txid)
        return tx

    def _next_gen(self):
        self._gen += 1
        return self._gen

    # -- data operations ---------------------------------------------------

    def read(self, caller, path, txid=0):
        view = self._view(caller, txid)
        return self._node(view, caller, self.resolve(caller, path), "r").value

    def directory(self, caller, path, txid=0):
        return list(self.directory_part(caller, path, txid)[1])

    def directory_part(self, caller, path, txid=0):
        """``(generation, children)``: the generation tells readers of a
        long list, fetched in parts, whether it changed in between."""
        view = self._view(caller, txid)
        node = self._node(view, caller, self.resolve(caller, path), "r")
        return node.gen, node.children

    def get_perms(self, caller, path, txid=0):
        view = self._view(caller, txid)
        return format_perms(self._node(view, caller, self.resolve(caller, path), "r").perms)

    def write(self, caller, path, value, txid=0):
        if len(value) > self.quota.value_size:
            raise XenStoreError("E2BIG", "value of %d bytes" % len(value))
        view = self._view(caller, txid)
        path = self.resolve(caller, path)
        node = view.get(path)
        if node is None:
            node = self._create(view, caller, path, value)
        else:
            if not self._can(caller, node.perms, "w"):
                raise XenStoreError("EACCES")
            node = node.but(self._next_gen(), value=value)
            view.put(path, node)
        self._event(view, path, node.perms)

    def mkdir(self, caller, path, txid=0):
        view = self._view(caller, txid)
        path = self.resolve(caller, path)
        node = view.get(path)
        if node is not None:
            if not self._can(caller, node.perms, "w"):
                raise XenStoreError("EACCES")
            return
        node = self._create(view, caller, path, b"")
        self._event(view, path, node.perms)

    def _create(self, view, caller, path, value):
        missing = []
        top = path
        while view.get(top) is None:
            missing.append(top)
            top = parent_of(top)
        above = view.get(top)
        if not self._can(caller, above.perms, "w"):
            raise XenStoreError("EACCES")
        if not caller.privileged and view.owned[caller.domid] + len(missing) > self.quota.nodes:
            raise XenStoreError("ENOSPC", "dom%d has too many nodes" % caller.domid)
        perms = above.perms
        if not caller.privileged:
            perms = ((perms[0][0], caller.domid),) + perms[1:]
        for p in reversed(missing):
            parent = view.get(parent_of(p))
            name = p.rsplit("/", 1)[1]
            view.put(parent_of(p), parent.but(self._next_gen(), children=parent.children + (name,)))
            view.put(p, Node(value if p == path else b"", perms, (), self._next_gen()))
        return view.get(path)

    def rm(self, caller, path, txid=0):
        view = self._view(caller, txid)
        path = self.resolve(caller, path)
        if path == "/":
            raise XenStoreError("EINVAL", "cannot remove the root")
        node = view.get(path)
        if node is None:
            # Not an error, unless the parent is missing or hidden too.
            self._node(view, caller, parent_of(path), "r")
            return
        if not self._can(caller, node.perms, "w"):
            raise XenStoreError("EACCES")
        parent = view.get(parent_of(path))
        name = path.rsplit("/", 1)[1]
        children = tuple(c for c in parent.children if c != name)
        view.put(parent_of(path), parent.but(self._next_gen(), children=children))
        stack = [path]
        while stack:
            p = stack.pop()
            stack.extend(p + "/" + c for c in view.get(p).children)
            view.delete(p)
        self._event(view, path, node.perms, removed=True)

    def set_perms(self, caller, path, items, txid=0):
        perms = parse_perms(items)
        view = self._view(caller, txid)
        path = self.resolve(caller, path)
        node = view.get(path)
        if node is None:
            raise self._missing(view, caller, path)
        if self._access(caller, node.perms) != "o":
            raise XenStoreError("EACCES")
        if not caller.privileged and perms[0][1] != node.owner:
            raise XenStoreError("EPERM", "only dom0 changes owners")
        view.put(path, node.but(self._next_gen(), perms=perms))
        self._event(view, path, perms)

    # -- transactions ------------------------------------------------------

    def begin(self, caller):
        mine = sum(1 for tx in self._txs.values() if tx.caller is caller)
        if not caller.privileged and mine >= self.quota.transactions:
            raise XenStoreError("ENOSPC", "too many transactions")
        while self._next_tx in self._txs or not self._next_tx:
            self._next_tx = (self._next_tx + 1) & 0xFFFFFFFF
        txid = self._next_tx
        self._next_tx = (txid + 1) & 0xFFFFFFFF
        self._txs[txid] = _Transaction(caller, self._main)
        return txid

    def end(self, caller, txid, commit):
        tx = self._view(caller, txid)
        if tx is self._main:
            raise XenStoreError("EINVAL", "no transaction")
        del self._txs[txid]
        if not commit:
            return
        main = self._main
        if any(main.nodes.get(p) is not node for p, node in tx.base.items()):
            raise XenStoreError("EAGAIN")
        growth = Counter()
        for p in tx.written:
            old, new = main.nodes.get(p), tx.nodes.get(p)
            if old is not None:
                growth[old.owner] -= 1
            if new is not None:
                growth[new.owner] += 1
        for domid, more in growth.items():
            if domid and more > 0 and main.owned[domid] + more > self.quota.nodes:
                raise XenStoreError("ENOSPC", "dom%d has too many nodes" % domid)
        for p in tx.written:
            new = tx.nodes.get(p)
            if new is not None:
                main.put(p, new)
            elif p in main.nodes:
                main.delete(p)
        for event in tx.events:
            self._fire(*event)

    # -- watches -----------------------------------------------------------

    def watch(self, caller, path, token):
        """Register, then fire once straight away, as xenstored does."""
        absolute = self.resolve(caller, path, special=True)
        mine = [w for w in self._watches if w.caller is caller]
        if any(w.path == absolute and w.token == token for w in mine):
            raise XenStoreError("EEXIST")
        if not caller.privileged and len(mine) >= self.quota.watches:
            raise XenStoreError("E2BIG", "too many watches")
        self._watches.append(_Watch(caller, path, absolute, token))
        caller.deliver(path, token)

    def unwatch(self, caller, path, token):
        absolute = self.resolve(caller, path, special=True)
        for w in self._watches:
            if w.caller is caller and w.path == absolute and w.token == token:
                self._watches.remove(w)
                return
        raise XenStoreError("ENOENT")

    def reset(self, caller):
        """Forget the caller's watches and transactions (RESET_WATCHES, close)."""
        self._watches = [w for w in self._watches if w.caller is not caller]
        for txid in [t for t, tx in self._txs.items() if tx.caller is caller]:
            del self._txs[txid]

    def _event(self, view, path, perms, removed=False):
        if view is self._main:
            self._fire(path, perms, removed)
        else:
            view.events.append((path, perms, removed))

    def _fire(self, path, perms, removed=False):
        for w in list(self._watches):
            if is_child(path, w.path):
                epath = path
            elif removed and is_child(w.path, path):
                epath = w.path       # a parent of the watched path went away
            else:
                continue
            if self._can(w.caller, perms, "r"):
                w.caller.deliver(w.as_given(epath), w.token)

    # -- domains -----------------------------------------------------------

    def _dom0_only(self, caller, domid):
        if not caller.privileged:
            raise XenStoreError("EACCES")
        if not 0 < domid <= DOMID_MAX:
            raise XenStoreError("EINVAL", "bad domid %d" % domid)

    def introduce(self, caller, domid):
        self._dom0_only(caller, domid)
        self._introduced.add(domid)
        self._fire(INTRODUCE_DOMAIN, _SPECIAL_PERMS)

    def release(self, caller, domid):
        self._dom0_only(caller, domid)
        if domid not in self._introduced:
            raise XenStoreError("ENOENT")
        self._introduced.discard(domid)
        self._targets.pop(domid, None)
        self._fire(RELEASE_DOMAIN, _SPECIAL_PERMS)

    def resume(self, caller, domid):
        self._dom0_only(caller, domid)
        if domid not in self._introduced:
            raise XenStoreError("ENOENT")

    def is_introduced(self, domid):
        return domid == 0 or domid in self._introduced

    def set_target(self, caller, domid, target):
        self._dom0_only(caller, domid)
        self._targets[domid] = target
