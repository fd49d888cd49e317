"""What the operator and the guests asked for, kept across daemon restarts.

Everything else a restarted daemon needs it takes back from the helpers
(``recovery.py``); these it cannot, because they were only ever the
daemon's: per-clone settings (``set``: limit, target, evict,
share.onfetch), the host budget (``set_host``), and each guest's requests
(when it last asked, the images made for it, how many answers it got).

One JSON file, ``<state_dir>/operator.json``, rewritten whole on each
change (a temporary file, fsync, ``os.replace``): a crash leaves the old
file or the new one, never half of either.  A file that cannot be read is
moved aside (``.bad``) and the daemon starts with nothing kept, saying so.
"""

import json
import os

from twisted.logger import Logger

from xenclone.names import check_id, check_name

log = Logger()

FILE_NAME = "operator.json"
KNOBS = ("target", "limit", "evict", "share.onfetch")


def _empty():
    return {"clones": {}, "host": {}, "guests": {}}


class OperatorState:
    def __init__(self, state_dir):
        self.path = os.path.join(state_dir, FILE_NAME)
        self.data = self._load()

    def _load(self):
        try:
            with open(self.path) as f:
                data = json.load(f)
            if not isinstance(data, dict) or not all(
                    isinstance(data.get(k), dict) for k in _empty()):
                raise ValueError("not an object of clones, host and guests")
            return data
        except FileNotFoundError:
            return _empty()
        except (OSError, ValueError) as e:
            log.error("{path} unreadable ({why}): moved aside, nothing kept from before",
                      path=self.path, why=str(e))
            os.replace(self.path, self.path + ".bad")
            return _empty()

    def _save(self):
        tmp = self.path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self.data, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    # -- clones: keyed by domid, which a restarted daemon keeps; the name
    # guards against an id a later daemon gave another domain.

    def clone_ids(self):
        return [int(k) for k in self.data["clones"] if k.isdigit()]

    def guest_ids(self):
        return [int(k) for k in self.data["guests"] if k.isdigit()]

    def clone_knobs(self, domid, name):
        kept = self.data["clones"].get(str(domid))
        if kept is None or kept.get("name") != name:
            return {}
        return {k: v for k, v in kept.items() if k in KNOBS}

    def set_clone(self, domid, name, knobs):
        kept = self.data["clones"].get(str(check_id(domid, "domid")))
        if kept is None or kept.get("name") != name:
            kept = {"name": check_name(name, "clone name")}
        kept.update((k, v) for k, v in knobs.items() if k in KNOBS)
        self.data["clones"][str(domid)] = kept
        self._save()

    def forget_clone(self, domid):
        if self.data["clones"].pop(str(domid), None) is not None:
            self._save()

    # -- the host

    def host_budget(self):
        return self.data["host"].get("budget_pages")

    def set_host_budget(self, pages):
        self.data["host"]["budget_pages"] = pages
        self._save()

    # -- guests: keyed by the master's domid

    def guest(self, domid):
        return self.data["guests"].get(str(domid), {})

    def set_guest(self, domid, record):
        self.data["guests"][str(check_id(domid, "domid"))] = record
        self._save()

    def forget_guest(self, domid):
        if self.data["guests"].pop(str(domid), None) is not None:
            self._save()
