"""dom0 side of the rig's clone job: bless and clone on real Xen through the
running daemon, mostly with the xl-style CLI, and print one JSON object.
Exits non-zero, after printing, if any check failed.

    python3 clone.py XENCLONE_CONF
"""

import json
import os
import subprocess
import sys
import time

from twisted.internet import defer, task, utils

from xenclone import workload
from xenclone.backends.xen import libxc, server_domain
from xenclone.config import load_daemon_config
from xenclone.selftests.scenarios import Session

MASTER, IMAGE, CLONES, MEMORY_MIB = "xmaster", "ximg", 3, 16
CLI = "import sys; from xenclone.cli.main import entry; sys.argv[0] = 'xenclone'; entry()"


def xl_names():
    out = subprocess.run(["xl", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines()[1:]]


def start_info(domid):
    """Where Xen's loader put hvm_start_info (the guest keeps its %ebx)."""
    fm = libxc.ForeignMemory()
    try:
        with fm.map(domid, [workload.PARAMS_PFN], writable=False) as m:
            box = dict(zip(workload.MAILBOX_FIELDS,
                           workload.MAILBOX.unpack_from(m.buffer, workload.MAILBOX_OFFSET)))
    finally:
        fm.close()
    return box["start_info"]


class Job:
    def __init__(self, reactor, conf):
        self.reactor = reactor
        self.conf = conf
        self.res = {"checks": {}, "timings_s": {}}
        self.checks = self.res["checks"]

    @defer.inlineCallbacks
    def xenclone(self, *args, timed=None):
        """The xl-style CLI: (exit code, stdout, stderr)."""
        t = time.monotonic()
        out, err, rc = yield utils.getProcessOutputAndValue(
            sys.executable, ["-c", CLI, "-c", self.conf] + list(args), env=os.environ)
        if timed:
            self.res["timings_s"][timed] = round(time.monotonic() - t, 2)
        return rc, out.decode(), err.decode()

    @defer.inlineCallbacks
    def json(self, *args, timed=None):
        rc, out, err = yield self.xenclone(*(args + ("--json",)), timed=timed)
        if rc != 0:
            raise RuntimeError("xenclone %s: exit %d: %s" % (" ".join(args), rc, err.strip()))
        return json.loads(out)

    @defer.inlineCallbacks
    def run(self, settings):
        for _ in range(600):
            if os.path.exists(settings["control_socket"]):
                break
            yield task.deferLater(self.reactor, 0.1, lambda: None)
        # The xl-style verbs go through the CLI; waits and memory checks,
        # which it does not offer, through the control socket.
        self.s = yield Session(self.reactor, settings).open()
        try:
            yield self.steps()
        finally:
            yield self.s.close()

    @defer.inlineCallbacks
    def steps(self):
        yield self.bad_input()
        yield self.clone()

    @defer.inlineCallbacks
    def clone(self):
        cfg = os.path.join(os.path.dirname(self.conf), "master.cfg")
        with open(cfg, "w") as f:
            f.write('name = "%s"\nmemory = %d\n' % (MASTER, MEMORY_MIB))
        rc, out, err = yield self.xenclone("create", cfg, timed="create_master")
        self.res["create"] = (out + err).strip()
        self.checks["master_created"] = rc == 0
        self.checks["master_in_xl_list"] = MASTER in xl_names()
        master = self.res["master"] = yield self.s.call("info", domain=MASTER)
        self.checks["backend_xen"] = master["backend"] == "xen"
        self.checks["fill_mode_reported"] = master["fill_mode"] == "fill-before-run"
        paddr = self.res["pvh_start_info"] = start_info(master["domid"])
        # libxl puts it just past the kernel: clear of stack, params and data.
        self.checks["start_info_clear_of_guest_pages"] = (
            0 < paddr and paddr // workload.PAGE_SIZE < workload.STACK_PFN)

        self.res["image"] = image = yield self.json("bless", MASTER, "--name", IMAGE, timed="bless")
        params = workload.Params(**image["meta"]["params"])
        self.checks["image_has_data"] = image["nonzero_pages"] > params.data_npages // 2
        yield self.lazy_refused()
        t = time.monotonic()
        launched = yield self.json("launch", IMAGE, "-n", str(CLONES), timed="launch_3_clones")
        names = [c["name"] for c in launched["clones"]]
        self.checks["clones_in_xl_list"] = set(names) <= set(xl_names())
        infos = yield defer.gatherResults([self.s.call("wait", domain=n, timeout=120)
                                           for n in names])
        self.res["timings_s"]["launch_to_all_answered"] = round(time.monotonic() - t, 2)
        self.res["answers"] = [{k: i[k] for k in ("name", "domid", "clone_id", "input", "state",
                                                  "result", "expected", "launch_ms")}
                               for i in infos]
        self.checks["clone_answers_right"] = all(
            i["state"] == "done" and i["result"] == i["expected"]
            == workload.expected_result(params, i["clone_id"], i["input"]) for i in infos)
        self.checks["clone_answers_differ"] = len({i["result"] for i in infos}) == CLONES

        yield self.memory_checks(params, infos)
        yield self.destroyed_behind_its_back()

        yield self.resume_and_clean_up(params, MASTER, IMAGE)

    @defer.inlineCallbacks
    def resume_and_clean_up(self, params, master, image):
        """The master runs on from its bless point, as clone 0 with input 0;
        then image and master go, leaving only dom0 and the server domain."""
        rc, _, err = yield self.xenclone("unpause", master)
        resumed = yield self.s.call("wait", domain=master, timeout=120)
        expected = workload.expected_result(params, 0, 0)
        self.res["master_resumed"] = dict(state=resumed["state"], result=resumed["result"],
                                          expected=expected)
        self.checks["master_resumes_unharmed"] = (
            rc == 0 and resumed["state"] == "done" and resumed["result"] == expected)
        yield self.xenclone("discard", image, "--force")
        yield self.xenclone("destroy", master)
        left = [n for n in xl_names() if n not in ("Domain-0", server_domain.NAME)]
        self.res["xl_list_after_destroy"] = left
        self.checks["all_destroyed"] = not left

    @defer.inlineCallbacks
    def bad_input(self):
        """Unknown names: a clear message and exit 1, no traceback."""
        for args in (("bless", "no-such-domain"), ("launch", "no-such-image")):
            rc, out, err = yield self.xenclone(*args)
            self.res.setdefault("bad_input", {})[" ".join(args)] = [rc, err.strip()]
            self.checks["clear_error: " + " ".join(args)] = (
                rc == 1 and "Traceback" not in err and "no-such" in err)

    @defer.inlineCallbacks
    def lazy_refused(self):
        """Lazy fill asked of a Xen without MEM_PAGING: a clear error that
        says why, and no domain left behind."""
        before = xl_names()
        rc, _, err = yield self.xenclone("launch", IMAGE, "--fill", "lazy")
        self.res["lazy_on_stock"] = [rc, err.strip()]
        self.checks["lazy_on_stock_refused"] = (
            rc == 1 and "MEM_PAGING" in err and "Traceback" not in err and xl_names() == before)

    @defer.inlineCallbacks
    def destroyed_behind_its_back(self):
        """``xl destroy`` of a clone, not through xenclone: the daemon
        notices (and lets go of the dying domain)."""
        launched = yield self.json("launch", IMAGE, "--paused")
        name = launched["clones"][0]["name"]
        _, err, rc = yield utils.getProcessOutputAndValue("xl", ["destroy", name], env=os.environ)
        yield task.deferLater(self.reactor, 0.5, lambda: None)     # ten watcher rounds
        listed = yield self.s.call("list")
        self.checks["daemon_notices_xl_destroy"] = rc == 0 and name not in [
            d["name"] for d in listed["domains"]] and name not in xl_names()

    @defer.inlineCallbacks
    def memory_checks(self, params, infos, master=MASTER, image=IMAGE):
        """The clones' writes stayed private: other clones, the image and
        the master still hold the image's data there."""
        iso = yield self.s.call("isolation_check", image=image)
        img = yield self.s.call("image_check", image=image)
        self.res["isolation"], self.res["image_check"] = iso, img
        self.checks["clones_isolated"] = iso["isolated"]
        self.checks["image_unchanged"] = img["unchanged"]
        written = sorted(set().union(*(
            workload.pages_written(params, i["clone_id"], i["input"]) for i in infos)))
        sums = yield self.s.call("page_sums", domain=master, pfns=written)
        want = [workload.page_sum(workload.image_page(params, p)) for p in written]
        self.checks["master_pages_unchanged"] = bool(written) and sums["sums"] == want


def run_job(job):
    """Run a rig job; print its results, exit 1 if a check failed."""
    d = job.run(load_daemon_config(job.conf))

    def report(failure):
        job.res["error"] = failure.getErrorMessage()
        job.checks["completed"] = False

    def done(_):
        job.res["ok"] = all(job.checks.values())
        print(json.dumps(job.res, indent=1, sort_keys=True))
        if not job.res["ok"]:
            raise SystemExit(1)

    return d.addErrback(report).addCallback(done)


def main(reactor, conf):
    return run_job(Job(reactor, conf))


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
