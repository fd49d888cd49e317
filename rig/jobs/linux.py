"""dom0 side of the rig's Linux job: the rig's Linux PVH domU (made by plain
``xl create``) blessed by name and cloned through the running daemon with
the xl-style CLI, as an operator would; prints one JSON object and exits
non-zero if a check failed.

    python3 linux.py XENCLONE_CONF

What each clone's console must say: ``XENCLONE-CLONE-ID <its id>`` (its
init reads ``xenclone/clone-id`` from its own XenStore home, so its Xen
resume path reconnected XenStore and its console) and a later
``XENCLONE-TICK`` (its timers run).
"""

import json
import os
import re
import subprocess
import sys
import time

MASTER, PV, MADE, HOG = "rig-pvh", "rig-pv", "lx-made", "rig-hog"
CLONES = 2
IDENTITY_WAIT = 2                   # s: launch --wait-identity (no agent in the rig's guest)
LAUNCH_ROUNDS = 4                   # launches that may replace clones TCG killed
BALLOON_MIB = 100                   # the operator's target for the first clone
BALLOON_PAGES = BALLOON_MIB * 256
HOG_LEAVES_MIB = 160                # below the daemon's low watermark (200 MiB, linux.sh)
CFG = "/mnt/rig/domu/pvh.cfg"
CONSOLE = "/var/log/xen/console/guest-%s.log"
CLI = "import sys; from xenclone.cli.main import entry; sys.argv[0] = 'xenclone'; entry()"
T0 = time.monotonic()


def since(t):
    return round(time.monotonic() - t, 2)


def run(*args, timeout=120):
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


def xl_names():
    return [line.split()[0] for line in run("xl", "list").stdout.splitlines()[1:]]


def console(name):
    try:
        with open(CONSOLE % name, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def triple_faults():
    """Xen's log lines of triple faults (a world switch under QEMU's TCG
    now and then wrecks a Linux domU, even one xenclone never touched:
    rig/README.md)."""
    return [line for line in run("xl", "dmesg").stdout.splitlines() if "Triple fault" in line]


def triple_faulted(domid):
    """Such a guest says nothing of xenclone."""
    mark = re.compile(r"\bd%dv\d+ Triple fault" % domid)
    return any(mark.search(line) for line in triple_faults())


def xen_dump(domid, lines=40):
    """Xen's log lines about a domain (a triple fault's register dump among
    them), for the trial log of a fault that was excused."""
    mark = re.compile(r"\bd%d(v\d+)?\b" % domid)
    return [line for line in run("xl", "dmesg").stdout.splitlines() if mark.search(line)][-lines:]


def wait_for(ok, timeout):
    """Seconds until ``ok()``, or None."""
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        if ok():
            return since(t)
        time.sleep(0.5)
    return None


def xl_mem_mib(name):
    """The domain's memory as xl lists it (its frames, in MiB)."""
    rows = run("xl", "list", name).stdout.splitlines()[1:]
    return int(rows[0].split()[2]) if rows else 0


def xen_free_mib():
    for line in run("xl", "info").stdout.splitlines():
        if line.startswith("free_memory"):
            return int(line.split(":")[1])
    return 0


def target_kib(domid):
    value = run("xenstore-read", "/local/domain/%d/memory/target" % domid).stdout.strip()
    return int(value) if value.isdigit() else None


def wait_console(name, needle, timeout, after=0):
    """Seconds until ``needle`` shows in the console past offset ``after``."""
    return wait_for(lambda: needle in console(name)[after:], timeout)


class Job:
    def __init__(self, conf):
        self.conf = conf
        self.res = {"checks": {}, "timings_s": {}, "clones": [], "errors": {}}
        self.checks = self.res["checks"]

    def xenclone(self, *args, timed=None):
        """The xl-style CLI: (exit code, stdout, stderr)."""
        t = time.monotonic()
        conf = ("-c", self.conf) if self.conf else ()    # None: the default config path
        p = run(sys.executable, "-c", CLI, *conf, *args, timeout=600)
        if timed:
            self.res["timings_s"][timed] = since(t)
        return p.returncode, p.stdout, p.stderr

    def json(self, *args, timed=None):
        rc, out, err = self.xenclone(*(args + ("--json",)), timed=timed)
        if rc != 0:
            raise RuntimeError("xenclone %s: exit %d: %s" % (" ".join(args), rc, err.strip()))
        return json.loads(out)

    def refused(self, label, args, words, code=1):
        """A clear one-line error and the exit code, recorded by label.
        Progress lines (``bless rig-pv: capturing and storing``, shown when
        the daemon takes over POLL_S to refuse) may come before it."""
        rc, out, err = self.xenclone(*args)
        self.res["errors"][label] = {"rc": rc, "stderr": err.strip()}
        errors = [line for line in err.strip().splitlines()
                  if not line.startswith("%s " % args[0])]
        self.checks[label] = (rc == code and all(w in err for w in words)
                              and len(errors) == 1 and "Traceback" not in err)

    def listed(self):
        return {d["name"]: d for d in self.json("list")["domains"]}

    def steps(self):
        self.res["steps_end_s"] = ends = {"daemon_up": since(T0)}
        # Lazy where the hypervisor has MEM_PAGING, filled before run on stock Xen.
        self.fill_mode = self.json("host")["capabilities"]["fill_mode"]
        self.fill = "lazy" if self.fill_mode == "lazy" else "before-run"
        self.res["fill"] = self.fill
        # Refusals and ``xenclone create`` do not depend on the fill: the
        # stock boot checks them, and the MEM_PAGING boot saves its minutes.
        steps = (self.bless, self.launch, self.balloon, self.master_resumes)
        if self.fill == "before-run":
            steps = (self.bad_input,) + steps + (self.create_from_config,)
        for step in steps + (self.clean_up,):
            step()
            ends[step.__name__] = since(T0)

    def bad_input(self):
        self.refused("unknown_domain_refused", ("bless", "no-such-domain"), ["unknown domain"])
        self.refused("dom0_refused", ("bless", "0"), ["Domain-0"])
        # A PV domU (the same kernel booted PV), made paused: refused, untouched.
        p = run("xl", "create", "-p", CFG, 'name="%s"' % PV, 'type="pv"')
        if p.returncode != 0:
            self.res["errors"]["pv_create"] = p.stderr.strip()[-400:]
            self.checks["pv_refused"] = False
            return
        self.refused("pv_refused", ("bless", PV), ["PV domains are not supported"])
        self.checks["pv_left_alone"] = PV in xl_names() and PV not in self.listed()
        run("xl", "destroy", PV)

    def live_master(self, timeout=240):
        """The domid of the master's latest boot once its init loop ticks.
        xl boots again a master that TCG triple-faulted (pvh.cfg has no
        ``on_reboot``), under a new domid."""
        t = time.monotonic()
        while time.monotonic() - t < timeout:
            up = console(MASTER).rfind("XENCLONE-DOMU-UP")
            domid = run("xl", "domid", MASTER).stdout.strip()
            ready = domid.isdigit() and run(
                "xenstore-read", "/local/domain/%s/control/feature-suspend" % domid).returncode == 0
            if up >= 0 and ready and wait_console(MASTER, "XENCLONE-TICK", 15, up) is not None:
                return int(domid)
            time.sleep(0.5)
        raise RuntimeError("%s did not come up in %d s" % (MASTER, timeout))

    def blessed_master(self, attempts=3):
        """Bless the master; a boot that died of a triple fault before or
        during the bless (not xenclone's doing) is listed and its next boot
        blessed."""
        faulted = self.res["master_triple_faults"] = []
        for _ in range(attempts):
            domid = self.live_master()
            try:
                return domid, self.json("bless", MASTER, timed="bless")
            except RuntimeError:
                if not triple_faulted(domid):
                    raise
                faulted.append(domid)
        raise RuntimeError("%s triple-faulted %d times" % (MASTER, attempts))

    def bless(self):
        domid, info = self.blessed_master()
        self.res["bless"] = {k: info.get(k) for k in ("image_id", "npages", "nonzero_pages")}
        self.res["suspend"] = info.get("meta", {}).get("suspend")
        self.checks["blessed"] = info["npages"] == 128 * 256 and self.res["suspend"] is not None
        master = self.listed().get(MASTER, {})
        self.checks["master_listed_suspended"] = (master.get("domid") == domid
                                                  and master.get("state") == "paused"
                                                  and master.get("role") == "master")
        self.res["master_domid"] = domid
        if self.fill == "lazy":
            return
        # Stock Xen: lazy fill is refused before anything is built.
        self.refused("lazy_refused", ("launch", MASTER, "--fill", "lazy"), ["MEM_PAGING"])
        self.checks["nothing_left_after_refusal"] = not [
            n for n in xl_names() if n.startswith(MASTER + ".")]

    def observe(self, clone, t):
        """A launched clone's row: when it printed its id and then ticked."""
        needle = "XENCLONE-CLONE-ID %d " % clone["clone_id"]
        seen = wait_console(clone["name"], needle, 240)
        at = console(clone["name"]).find(needle)
        row = {"name": clone["name"], "domid": clone["domid"], "clone_id": clone["clone_id"],
               "id_seen_s_after_request": since(t) if seen is not None else None,
               "tick_after_id_s": wait_console(clone["name"], "XENCLONE-TICK", 60, at)
               if seen is not None else None}
        row["ids_printed"] = [line.split()[1] for line in console(clone["name"]).splitlines()
                              if line.startswith("XENCLONE-CLONE-ID")]
        info = self.json("info", clone["name"])
        row.update({k: info.get(k) for k in ("launch_ms", "fill_mode", "faults",
                                             "resident_pages", "identity")})
        row["console_tail"] = console(clone["name"])[-1500:]
        return row

    def top_up(self, rows):
        """``rows`` made CLONES long again with fresh clones.  A clone TCG's
        triple fault killed (not xenclone's doing: rig/README.md) is moved
        to ``clones_lost_to_tcg`` with Xen's dump and destroyed; up to
        LAUNCH_ROUNDS launches in all, so a clone xenclone broke still fails
        the checks, and the faults excused are a budget (``tcg_budget``)."""
        lost = self.res.setdefault("clones_lost_to_tcg", [])
        while True:
            dead = [r for r in rows if triple_faulted(r["domid"])]
            for r in dead:
                r["xen_dump"] = xen_dump(r["domid"])
            lost += dead
            for r in dead:
                self.xenclone("destroy", r["name"])
            rows = [r for r in rows if r not in dead]
            if len(rows) == CLONES or self.launches == LAUNCH_ROUNDS:
                return rows
            self.launches += 1
            t = time.monotonic()
            # The rig's guest has no identity agent: the wait must end,
            # each clone reported not renewed (IDENTITY_WAIT is in "launch").
            made = self.json("launch", MASTER, "-n", str(CLONES - len(rows)),
                             "--fill", self.fill, "--wait-identity", str(IDENTITY_WAIT),
                             timed="launch" if self.launches == 1 else None)["clones"]
            rows += [dict(self.observe(c, t), identity_at_launch=c.get("identity"))
                     for c in made]

    def tcg_budget(self):
        """Triple faults excused, a measured budget: the job fails when more
        than one clone launched in four died of one, or a clone id died
        twice (a restore bug that triple-faults now and then would pass a
        job that relaunched without counting)."""
        lost = self.res.get("clones_lost_to_tcg", [])
        launched = len(self.res["clones"]) + len(lost)
        ids = [r["clone_id"] for r in lost]
        self.res["tcg_lost_of_launched"] = [len(lost), launched]
        self.checks["tcg_faults_within_budget"] = (4 * len(lost) <= launched
                                                   and len(ids) == len(set(ids)))

    def launch(self):
        self.launches = 0
        rows = self.res["clones"] = self.top_up([])
        self.res["launches"] = self.launches
        self.tcg_budget()
        every = rows + self.res["clones_lost_to_tcg"]
        self.checks["clones_launched"] = len(rows) == CLONES
        # The lost ones too: a clone that printed another's id was not TCG's doing.
        self.checks["clones_print_their_own_id"] = bool(rows) and all(
            r["ids_printed"] in ([], [str(r["clone_id"])]) for r in every) and all(
            r["ids_printed"] for r in rows)
        self.checks["clones_tick_after_id"] = bool(rows) and all(
            r["tick_after_id_s"] is not None for r in rows)
        self.checks["clones_without_agent_reported"] = bool(rows) and all(
            r["identity_at_launch"] == r["identity"] == "not renewed" for r in rows)
        self.checks["clones_filled_" + self.fill] = bool(rows) and all(
            r["fill_mode"] == self.fill_mode for r in every)
        if self.fill == "lazy":
            # Faulted in: only what the resume and the init loop touched.
            self.checks["lazy_faults_fewer_than_nominal"] = bool(rows) and all(
                0 < (r["faults"] or 0) < 128 * 256 for r in rows)
            lazy = self.json("host")["capabilities"]["lazy"]
            self.res["lazy"] = {
                "fault_service_us": {r["name"]: lazy["by_clone"].get(str(r["domid"]))
                                     for r in rows},
                "setup_nominate_evict_us_per_page": lazy["setup_us_per_page"]}
        # Where they ran: dom0/init keeps guests off dom0's pCPU.
        self.res["vcpu_list"] = run("xl", "vcpu-list").stdout.splitlines()
        names = xl_names()
        self.checks["clones_in_xl_list"] = bool(rows) and all(r["name"] in names for r in rows)

    def balloon(self):
        """Stock Xen: a filled clone's frames are its own, and only its
        balloon driver gives some back.  The operator's target first; then
        real pressure (a paused domain takes all but HOG_LEAVES_MIB of the
        hypervisor's free memory): the daemon lowers both clones' targets
        to their floor (75% of their memory: a 128 MiB Debian guest has 68
        MiB for itself, and at 64 MiB it died of OOM in the rig), and once
        the domain is gone raises them again, the first only to the
        operator's target.  Clones TCG killed since their launch are
        replaced first, and a round that none lived through is run again
        on fresh ones."""
        if self.fill != "before-run" or len(self.res["clones"]) != CLONES:
            return
        survived = False
        for attempt in range(2):
            rows = self.res["clones"] = self.top_up(self.res["clones"])
            self.tcg_budget()
            if len(rows) != CLONES:
                break
            survived = self.balloon_round(rows, attempt)
            if survived:
                break
        self.checks["balloon_clone_survived_tcg"] = survived

    def balloon_round(self, rows, attempt):
        """One round of the balloon step; whether a clone lived through it."""
        out = self.res["balloon"] = {"free_mib_before": xen_free_mib(), "triple_faulted": [],
                                     "attempt": attempt}

        def live():     # a clone TCG triple-faulted is left out, and listed
            out["triple_faulted"] = [r["name"] for r in rows if triple_faulted(r["domid"])]
            return [r for r in rows if r["name"] not in out["triple_faulted"]]

        def settle(ok, timeout):
            return wait_for(lambda: all(ok(r) for r in live()), timeout)

        one, floor = rows[0], 128 * 75 // 100      # balloon_floor_percent
        rc, _, err = self.xenclone("set", one["name"], "target=%dM" % BALLOON_MIB)
        out["operator"] = {"rc": rc, "stderr": err.strip(), "down_s": settle(
            lambda r: r is not one or xl_mem_mib(r["name"]) <= BALLOON_MIB + 2, 120)}
        hog = xen_free_mib() - HOG_LEAVES_MIB
        p = run("xl", "create", "-p", CFG, 'name="%s"' % HOG, "memory=%d" % hog,
                "maxmem=%d" % hog, timeout=300)
        out["hog_mib"], out["hog_rc"] = hog, p.returncode
        out["pressure_down_s"] = settle(lambda r: xl_mem_mib(r["name"]) <= floor + 2, 120)
        out["free_mib_under_pressure"] = xen_free_mib()
        out["targets_under_pressure_kib"] = {r["name"]: target_kib(r["domid"]) for r in live()}
        run("xl", "destroy", HOG)
        # The operator's target is the most the end of pressure gives back.
        want = {one["name"]: BALLOON_MIB, rows[1]["name"]: 128}
        out["back_up_s"] = settle(lambda r: xl_mem_mib(r["name"]) >= want[r["name"]] - 2, 120)
        survivors = live()
        out["mem_mib_after"] = {r["name"]: xl_mem_mib(r["name"]) for r in survivors}
        out["targets_after_kib"] = {r["name"]: target_kib(r["domid"]) for r in survivors}
        ticks = [console(r["name"]).count("XENCLONE-TICK") for r in survivors]
        out["ticks_after"] = wait_for(lambda: all(
            console(r["name"]).count("XENCLONE-TICK") > n for r, n in zip(survivors, ticks)), 60)
        self.checks["balloon_operator_target"] = rc == 0 and out["operator"]["down_s"] is not None
        self.checks["balloon_pressure_lowers_targets"] = (
            p.returncode == 0 and out["pressure_down_s"] is not None
            and set(out["targets_under_pressure_kib"].values()) <= {floor * 1024})
        self.checks["balloon_targets_grow_back"] = out["back_up_s"] is not None and all(
            v == want[n] * 1024 for n, v in out["targets_after_kib"].items())
        self.checks["ballooned_clones_run_on"] = out["ticks_after"] is not None
        return bool(survivors)

    def master_resumes(self):
        before = len(console(MASTER))
        t = time.monotonic()
        rc, _, err = self.xenclone("unpause", MASTER, timed="unpause_master")
        home = "/local/domain/%d/xenclone" % self.res["master_domid"]
        run("xenstore-write", home + "/clone-id", "master")
        run("xenstore-chmod", "-r", home, "n0", "r%d" % self.res["master_domid"])
        seen = wait_console(MASTER, "XENCLONE-CLONE-ID master", 120, before)
        self.res["master_resume"] = {"rc": rc, "stderr": err.strip(),
                                     "id_seen_s": since(t) if seen is not None else None,
                                     "tick_s": wait_console(MASTER, "XENCLONE-TICK", 60,
                                                            before)}
        listed = self.listed()
        self.checks["master_resumed"] = (rc == 0 and seen is not None
                                         and listed[MASTER]["state"] == "running")
        # A clone that printed its id and ticked, then died of TCG's triple
        # fault, is listed, not held against it.
        stopped = [r for r in self.res["clones"]
                   if listed.get(r["name"], {}).get("state") != "running"]
        self.res["clones_triple_faulted_later"] = [
            r["name"] for r in stopped if r["tick_after_id_s"] is not None
            and triple_faulted(r["domid"])]
        self.checks["clones_run_on"] = len(stopped) == len(
            self.res["clones_triple_faulted_later"])

    def create_from_config(self):
        """``xenclone create`` of a Linux kernel: a master of xenclone's own."""
        cfg = os.path.join(os.path.dirname(self.conf), MADE + ".cfg")
        with open(cfg, "w") as f:
            f.write('name = "%s"\nmemory = 128\nkernel = "/mnt/rig/domu/vmlinux"\n'
                    'ramdisk = "/mnt/rig/domu/initrd.cpio"\nextra = "console=hvc0 '
                    'rdinit=/init"\n' % MADE)
        # A boot that TCG triple-faulted before its PV drivers came up fails
        # the create (Xen counts it a reboot): listed, and created again.
        self.res["create_triple_faults"] = []
        for _ in range(3):
            seen = len(triple_faults())
            rc, out, err = self.xenclone("create", cfg, timed="create_linux_master")
            self.res["create"] = {"rc": rc, "out": out.strip(), "stderr": err.strip()}
            if rc == 0 or "(Xen reason 1)" not in err or len(triple_faults()) == seen:
                break
            self.res["create_triple_faults"].append(triple_faults()[-1])
        made = self.listed().get(MADE, {})
        up = wait_console(MADE, "XENCLONE-DOMU-UP", 120) if rc == 0 else None
        # The domain xenclone made runs; its kernel's own boot is checked
        # unless TCG's triple fault (not xenclone's doing) cut it short.
        faulted = up is None and "domid" in made and triple_faulted(made["domid"])
        self.res["create"]["triple_fault"] = faulted
        self.checks["created_linux_master"] = (rc == 0 and made.get("state") == "running"
                                               and (up is not None or faulted))
        bad = cfg + ".vkb"
        with open(bad, "w") as f:
            f.write('name = "lx-vkb"\nkernel = "/mnt/rig/domu/vmlinux"\n'
                    'vkb = ["backend-type=linux"]\n')
        self.refused("vkb_refused", ("create", bad), ["vkb:", "only vif and disk"], code=2)
        self.checks["nothing_left_after_vkb"] = "lx-vkb" not in xl_names()

    def clean_up(self):
        for r in self.res["clones"]:
            self.xenclone("destroy", r["name"])
        self.xenclone("discard", MASTER, "--force")
        self.xenclone("destroy", MASTER)
        self.xenclone("destroy", MADE)
        run("xl", "destroy", HOG)
        left = [n for n in xl_names() if n.startswith(MASTER) or n in (PV, MADE, HOG)]
        self.res["left_in_xl_list"] = left
        self.checks["nothing_left"] = not left
        # For a look at a guest that stopped: Xen logs a triple fault as a reboot.
        self.res["xen_triple_faults"] = triple_faults()


def main(job):
    """Run ``job``'s steps, print its results and exit as they say."""
    try:
        job.steps()
    except Exception as e:          # keep every fact gathered so far
        job.res["error"] = repr(e)
        job.checks["completed"] = False
    job.res["total_s"] = since(T0)
    job.res["ok"] = all(job.checks.values())
    print(json.dumps(job.res, indent=1, sort_keys=True))
    return 0 if job.res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(Job(sys.argv[1])))
