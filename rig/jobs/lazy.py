"""dom0 side of the rig's lazy job (the MEM_PAGING hypervisor): clones
filled on fault through the pager, and the numbers against fill-before-run
and ``xl save`` + ``xl restore``.  Prints one JSON object; exits non-zero,
after printing, if any check failed.

    python3 lazy.py XENCLONE_CONF
"""

import os
import subprocess
import sys
import time

from twisted.internet import defer, task

from clone import Job, run_job
from xenclone import workload
from xenclone.selftests.scenarios import Session

MASTER, IMAGE, CLONES, MEMORY_MIB = "lmaster", "limg", 3, 16
TARGET = 200                # pages: well under what a clone's run touches (~400)
LOW_TARGET = 16
LINUX_CFG = "/mnt/rig/domu/pvh.cfg"    # the rig's Linux PVH domU (it can suspend)
SAVE = "/tmp/xenclone/linux.save"


def answered_right(infos):
    return all(i["state"] == "done" and i["result"] == i["expected"] for i in infos)


class LazyJob(Job):
    @defer.inlineCallbacks
    def run(self, settings):
        for _ in range(600):
            if os.path.exists(settings["control_socket"]):
                break
            yield task.deferLater(self.reactor, 0.1, lambda: None)
        self.s = yield Session(self.reactor, settings).open()
        try:
            yield self.lazy()
        finally:
            yield self.s.close()
        self.res["numbers"]["xl_save_restore"] = self.save_restore()

    @defer.inlineCallbacks
    def lazy(self):
        host = yield self.json("host")
        caps = self.res["capabilities"] = host["capabilities"]
        self.checks["host_reports_lazy"] = caps["fill_mode"] == "lazy" and caps["lazy_fill"]
        # The budget follows the hypervisor's free memory (physinfo), not
        # dom0's: both read while nothing runs, they agree to a few pages.
        self.res["budget"] = {"xen_free_pages": caps["free_pages"],
                              "read_available_pages": host["pressure"].get("available_pages"),
                              "budget_pages": host["ledger"]["budget_pages"]}
        self.checks["budget_from_physinfo"] = (
            abs(caps["free_pages"] - (host["pressure"].get("available_pages") or 0)) < 1024
            and 0 < host["ledger"]["budget_pages"] <= caps["free_pages"])
        cfg = os.path.join(os.path.dirname(self.conf), "lmaster.cfg")
        with open(cfg, "w") as f:
            f.write('name = "%s"\nmemory = %d\n' % (MASTER, MEMORY_MIB))
        rc, out, err = yield self.xenclone("create", cfg, timed="create_master")
        self.checks["master_created"] = rc == 0
        image = yield self.json("bless", MASTER, "--name", IMAGE, timed="bless")
        params = workload.Params(**image["meta"]["params"])
        # daemon.sh keeps images in the memory-server domain: lazy clones
        # page in from its grants (xc_mem_paging_load of the mapped page).
        self.checks["image_in_server_domain"] = "server_domain" in image

        launched = yield self.json("launch", IMAGE, "-n", str(CLONES), "--fill", "lazy",
                                   timed="launch_3_lazy_clones")
        names = [c["name"] for c in launched["clones"]]
        infos = yield defer.gatherResults([self.s.call("wait", domain=n, timeout=300)
                                           for n in names])
        self.res["answers"] = [{k: i.get(k) for k in (
            "name", "domid", "state", "result", "expected", "launch_ms", "fill_mode",
            "nominal_pages", "resident_pages", "private_pages", "zero_pages")} for i in infos]
        self.checks["lazy_clones_answer_right"] = answered_right(infos) and all(
            i["expected"] == workload.expected_result(params, i["clone_id"], i["input"])
            for i in infos)
        self.checks["lazy_clone_answers_differ"] = len({i["result"] for i in infos}) == CLONES
        self.checks["pages_faulted_fewer_than_nominal"] = all(
            0 < i["resident_pages"] < i["nominal_pages"] for i in infos)
        yield self.memory_checks(params, infos, MASTER, IMAGE)

        target = yield self.under_target(params)
        alone = {}
        for fill in ("lazy", "before-run"):      # one at a time, nothing else running
            alone[fill] = yield self.alone(fill)
        host = yield self.json("host")
        lazy = host["capabilities"]["lazy"]
        by_clone = lazy["by_clone"]
        self.res["numbers"] = {
            "launch_ms": {"lazy_alone": alone["lazy"]["launch_ms"],
                          "before_run_alone": alone["before-run"]["launch_ms"],
                          "lazy_3_back_to_back": sorted(i["launch_ms"] for i in infos)},
            "fault_service_us": {
                "lazy_alone": by_clone[str(alone["lazy"]["domid"])],
                "lazy_3_at_once": [by_clone[str(i["domid"])] for i in infos],
                "under_limit_200": by_clone[str(target["domid"])],
                "all": {k: lazy[k] for k in ("service_us_median", "service_us_p90",
                                              "faults_served")}},
            "setup_nominate_evict_us_per_page": lazy["setup_us_per_page"],
            "evict_failed_pages": lazy["evict_failed"]}
        self.checks["faults_were_served"] = lazy["faults_served"] > 0

        yield self.resume_and_clean_up(params, MASTER, IMAGE)

    @defer.inlineCallbacks
    def under_target(self, params):
        """A lazy clone held to TARGET pages from its first instruction (a
        target evicts down to it once, a limit holds it there): the pager
        drops its clean pages as it faults, they fault back in, and it still
        answers right.  Then a lower target pages out what it wrote (the
        drops found those written), and reading them brings them back in,
        unchanged."""
        launched = yield self.json("launch", IMAGE, "--fill", "lazy", "--paused")
        name = launched["clones"][0]["name"]
        rc, _, err = yield self.xenclone("set", name, "target=%dK" % (4 * TARGET),
                                         "limit=%dK" % (4 * TARGET))
        self.checks["target_set"] = rc == 0
        yield self.xenclone("unpause", name)
        info = yield self.s.call("wait", domain=name, timeout=600)
        self.res["under_target"] = {k: info.get(k) for k in (
            "state", "result", "expected", "resident_pages", "target_pages", "evicted_pages",
            "evictions", "paged_out_pages", "faults", "pageout_error")}
        self.checks["target_clone_evicted"] = info["evicted_pages"] > 0
        # Clean pages dropped (nominate + evict, checked against the image).
        self.checks["target_clone_dropped_clean"] = info["evictions"].get("drop-clean", 0) > 0
        self.checks["target_clone_answers_right"] = answered_right([info])

        mine = sorted(workload.pages_written(params, info["clone_id"], info["input"]))
        before = yield self.s.call("page_sums", domain=name, pfns=mine)
        # The first round drops clean pages and finds the written ones; the
        # second pages those out.
        for _ in range(2):
            yield self.xenclone("set", name, "target=%dK" % (4 * LOW_TARGET))
        out = yield self.s.call("info", domain=name)
        after = yield self.s.call("page_sums", domain=name, pfns=mine)
        back = yield self.s.call("info", domain=name)
        self.res["paged"] = {"paged_out": out["paged_out_pages"],
                             "after_reading": back["paged_out_pages"],
                             "evictions": back["evictions"]}
        self.checks["target_clone_paged_out"] = out["paged_out_pages"] > 0
        self.checks["target_clone_paged_back_in_unchanged"] = (
            back["paged_out_pages"] < out["paged_out_pages"] and after == before)
        yield self.xenclone("destroy", name)
        return info

    @defer.inlineCallbacks
    def alone(self, fill):
        """One clone of the image with nothing else running: its launch time
        (request to unpause) and, lazy, its faults on their own."""
        launched = yield self.json("launch", IMAGE, "--fill", fill)
        name = launched["clones"][0]["name"]
        info = yield self.s.call("wait", domain=name, timeout=300)
        self.res["alone_" + fill] = {k: info.get(k) for k in (
            "state", "result", "expected", "launch_ms", "fill_mode", "resident_pages")}
        self.checks["alone_%s_answers_right" % fill] = answered_right([info])
        self.checks["alone_%s_fill_mode" % fill] = info["fill_mode"] == (
            "lazy" if fill == "lazy" else "fill-before-run")
        yield self.xenclone("destroy", name)
        return info

    def save_restore(self):
        """``xl save`` + ``xl restore`` of the rig's Linux PVH domU (the
        project's test guest never answers a suspend request)."""
        out = {"domain": "rig-pvh, 128 MiB Linux"}
        name = "rig-pvh"
        try:
            subprocess.run(["xl", "create", LINUX_CFG], check=True, capture_output=True)
            console = "/var/log/xen/console/guest-%s.log" % name
            deadline = time.monotonic() + 120
            while not _marked(console):
                if time.monotonic() > deadline:
                    raise RuntimeError("the Linux domU did not come up in 120 s")
                time.sleep(0.5)
            t = time.monotonic()
            subprocess.run(["xl", "save", name, SAVE], check=True, capture_output=True,
                           timeout=180)
            out["save_s"] = round(time.monotonic() - t, 2)
            t = time.monotonic()
            subprocess.run(["xl", "restore", SAVE], check=True, capture_output=True,
                           timeout=180)
            out["restore_s"] = round(time.monotonic() - t, 2)
            out["save_plus_restore_s"] = round(out["save_s"] + out["restore_s"], 2)
            out["image_mib"] = round(os.path.getsize(SAVE) / 2**20, 1)
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            out["error"] = str(getattr(e, "stderr", None) or e).strip()[-300:]
        finally:
            subprocess.run(["xl", "destroy", name], capture_output=True)
            if os.path.exists(SAVE):
                os.unlink(SAVE)
        return out


def _marked(console):
    try:
        with open(console, "rb") as f:
            return b"XENCLONE-DOMU-UP" in f.read()
    except OSError:
        return False


def main(reactor, conf):
    job = LazyJob(reactor, conf)
    job.res["numbers"] = {}
    return run_job(job)


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
