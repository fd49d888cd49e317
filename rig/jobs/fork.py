"""dom0 side of the rig's fork job: Linux clones as VM forks of an image
domain, on the project's patched Xen, through the running daemon and the
xl-style CLI, measured against ``xl save``/``xl restore`` of the same domU
in the same boot; prints one JSON object and exits non-zero if a check
failed.

    python3 fork.py

Its CLI calls name no config: they find the daemon through
/etc/xen/xenclone.conf, as an administrator's would (fork.sh puts it there),
and every operation must show in the daemon's log with who asked, what,
which domain, the result and how long it took.

Steps: bless the rig's Linux domU (an image domain appears), resume it and
``xl save``/``xl restore`` it (the peer), one fork clone (launch time, id
read back), the hypervisor's first-touch fill from dom0, 8 fork clones at
once each writing a few MiB (the hypervisor memory they cost), a reset, bad
input, and destroy/discard leaving nothing behind.
"""

import bisect
import json
import os
import re
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from linux import (CFG, MASTER, T0, Job, console, main, run, since,  # noqa: E402
                   triple_faults, wait_console, wait_for, xen_free_mib, xl_names)

CLONES = 8
WRITE_MIB = 2
SAVE = "/tmp/fork-peer.save"
RESTORED_ID = 9999
GEN2 = "gen2"
LOG = "xenclone-fork-daemon.log"      # fork.sh's, in $RIG_OUT (the job's directory)
FILL_BATCH, FILL_BATCHES = 512, 6
# The pressure step: forks that write while a hog domain leaves the
# hypervisor HOG_LEAVES_MIB above the low watermark (fork.sh's); their
# writes take it below, and the daemon gives back what the high watermark
# lacks (8 MiB above the low one: the forks keep most of what they hold,
# and page out, not thrash, under TCG).
PRESSURE_CLONES, PRESSURE_MIB = 4, 8
LOW_WATERMARK_MIB, HOG_LEAVES_MIB = 64, 24
HOG = "xenclone-hog"
TWO_VCPUS = "rig-pvh-2v"        # the same domU with 2 vCPUs


def xs_write(domid, leaf, value):
    path = "/local/domain/%d/xenclone/%s" % (domid, leaf)
    run("xenstore-write", path, str(value))
    run("xenstore-chmod", path, "n0", "r%d" % domid)


def _said(text, marker):
    """The md5 a clone's console gave after ``marker``, or None."""
    m = re.search(re.escape(marker) + r" ([0-9a-f]{32})", text)
    return m.group(1) if m else None


def guest_stack(domid, xenctx="/usr/lib/xen-4.17/bin/xenctx"):
    """Each vCPU's registers and stack (``xenctx``), kernel addresses
    named from dom0's /proc/kallsyms: the domU runs dom0's kernel, entered
    without the decompressor, so without KASLR."""
    out = run(xenctx, "-C", "-S", str(domid)).stdout
    try:
        with open("/proc/kallsyms") as f:
            syms = sorted((int(a, 16), n) for a, _, n, *_ in (line.split() for line in f))
    except OSError:
        return out.splitlines()
    addrs = [a for a, _ in syms]

    def name(m):
        a = int(m.group(0), 16)
        i = bisect.bisect_right(addrs, a) - 1
        if i < 0 or not addrs[i]:
            return m.group(0)
        return "%s(%s+%#x)" % (m.group(0), syms[i][1], a - addrs[i])
    return [re.sub(r"ffffffff[89a-f][0-9a-f]{7}", name, line) for line in out.splitlines()]


def domid_of(name):
    out = run("xl", "domid", name).stdout.strip()
    return int(out) if out.isdigit() else None


class ForkJob(Job):
    def steps(self):
        self.res["steps_end_s"] = ends = {"daemon_up": since(T0)}
        # The pressure step runs after what it needs (a hoarded fork holds
        # the image's pages); the pressure job (pressure.sh) runs only those.
        if os.environ.get("XENCLONE_RIG_PRESSURE"):
            steps = (self.bless, self.one_fork, self.two_vcpus, self.hoard, self.pressure)
        else:
            steps = (self.bless, self.peer_restore, self.one_fork, self.two_vcpus, self.hoard,
                     self.pressure,
                     self.fill_rate, self.eight_forks, self.clone_of_clone, self.reset,
                     self.bad_input, self.clean_up, self.operations_logged)
        for step in steps:
            step()
            ends[step.__name__] = since(T0)

    def bless(self):
        # Homes of this boot's other jobs' domains are not ours to judge.
        self.homes_before = run("xenstore-list", "/local/domain").stdout.split()
        caps = self.json("host")["capabilities"]
        self.checks["fork_offered"] = "fork" in caps["fill_modes"]
        self.res["fork_refused"] = caps.get("fork_refused")
        domid, info = self.blessed_master()
        self.res["master_domid"] = domid
        caps = self.json("host")["capabilities"]
        image_dom = caps["image_domains"].get(MASTER) or {}
        self.res["image_domain"] = image_dom
        self.checks["image_domain_made"] = image_dom.get("name") in xl_names()
        self.checks["auto_is_fork"] = caps["fill_mode"] == "fork"
        images = self.json("images")["images"]
        self.res["images"] = images

    def peer_restore(self):
        """The master runs on; xl saves it and restores it: the peer."""
        self.refused("reset_of_master_refused", ("reset", MASTER), ["is a master"])
        rc, _, err = self.xenclone("unpause", MASTER)
        self.checks["master_resumed"] = rc == 0
        wait_console(MASTER, "XENCLONE-TICK", 60, len(console(MASTER)))
        t = time.monotonic()
        p = run("xl", "save", MASTER, SAVE, timeout=300)
        self.res["timings_s"]["xl_save"] = since(t)
        if p.returncode != 0:
            self.res["errors"]["xl_save"] = p.stderr.strip()[-300:]
            self.checks["peer_restored"] = False
            return
        self.xenclone("destroy", MASTER)        # the daemon forgets the saved master
        mark = len(console(MASTER))
        t = time.monotonic()
        p = run("xl", "restore", SAVE, timeout=300)
        self.res["restore_s"] = since(t)
        domid = domid_of(MASTER)
        self.checks["peer_restored"] = p.returncode == 0 and domid is not None
        if domid is None:
            self.res["errors"]["xl_restore"] = p.stderr.strip()[-300:]
            return
        xs_write(domid, "clone-id", RESTORED_ID)
        seen = wait_console(MASTER, "XENCLONE-CLONE-ID %d" % RESTORED_ID, 120, mark)
        self.res["restore_id_seen_s"] = round(since(t), 2) if seen is not None else None
        run("xl", "destroy", MASTER)
        os.unlink(SAVE)

    def launched(self, *args, timed):
        out = self.json("launch", MASTER, "--fill", "fork", *args, timed=timed)
        return out["clones"]

    def one_fork(self):
        t = time.monotonic()
        clone = self.launched(timed="fork_1_clone")[0]
        name, cid = clone["name"], clone["clone_id"]
        seen = wait_for(lambda: "XENCLONE-CLONE-ID %d" % cid in console(name), 120)
        self.res["fork_id_seen_s"] = round(since(t), 2) if seen is not None else None
        info = self.json("info", name)
        self.res["one"] = {k: info.get(k) for k in ("domid", "launch_ms", "fill_mode", "state")}
        self.checks["fork_prints_its_id"] = seen is not None
        self.checks["fork_fill_mode"] = info.get("fill_mode") == "fork"
        self.checks["fork_in_xl_list"] = name in xl_names()
        self.checks["fork_ticks"] = wait_console(name, "XENCLONE-TICK", 60,
                                                 console(name).find("XENCLONE-CLONE-ID")) is not None
        self.one = clone

    def two_vcpus(self):
        """A master with 2 vCPUs: its fork resumes both (each registers its
        vcpu_info again), prints its id and ticks; then it and its image go."""
        p = run("xl", "create", CFG, 'name="%s"' % TWO_VCPUS, "vcpus=2", timeout=300)
        up = wait_console(TWO_VCPUS, "XENCLONE-TICK", 240) if p.returncode == 0 else None
        rc, _, err = self.xenclone("bless", TWO_VCPUS) if up is not None else (1, "", p.stderr)
        r = self.res["two_vcpus"] = {"bless_rc": rc, "stderr": err.strip()[-300:]}
        clone = self.json("launch", TWO_VCPUS, "--fill", "fork")["clones"][0] if rc == 0 else {}
        name = clone.get("name")
        seen = name and wait_for(lambda: "XENCLONE-CLONE-ID %d" % clone["clone_id"]
                                 in console(name), 120)
        rows = run("xl", "vcpu-list", name).stdout.splitlines()[1:] if name else []
        r["vcpu_list"] = rows
        self.checks["two_vcpu_fork_prints_its_id"] = bool(seen)
        # A vCPU the guest did not bring back up stays down: "p" in its state.
        self.checks["two_vcpu_fork_runs_both"] = len(rows) == 2 and all(
            len(row.split()) > 4 and "p" not in row.split()[4] for row in rows)
        self.checks["two_vcpu_fork_ticks"] = bool(seen) and wait_console(
            name, "XENCLONE-TICK", 90, console(name).find("XENCLONE-CLONE-ID")) is not None
        self.xenclone("discard", TWO_VCPUS, "--force")
        self.xenclone("destroy", TWO_VCPUS)
        run("xl", "destroy", TWO_VCPUS)

    def hoard(self):
        """A hoard fills a fork's pages ahead of its touches, shared with
        the image domain: Xen's shared count grows, its own frames barely."""
        name = self.one["name"]
        before = self.json("info", name)["hypervisor"]
        rc, _, err = self.xenclone("hoard", name, "--wait", timed="hoard")
        after = self.json("info", name)["hypervisor"]
        self.res["hoard"] = {"before": before, "after": after, "rc": rc, "stderr": err[-300:]}
        self.checks["hoard_fills_shared"] = (
            rc == 0 and after["shared"] - before["shared"] > 10000
            and after["own"] - before["own"] < 1000)

    def fill_rate(self):
        """First-touch fill, seen from dom0: foreign maps of a paused
        fork's pages (none touched yet) make Xen fill them from the image
        domain, as the guest's own first touches do."""
        from xenclone.backends.xen import libxc
        clone = self.launched("--paused", timed="fork_paused")[0]
        fm = libxc.ForeignMemory()
        times = []
        try:
            for b in range(FILL_BATCHES):
                first = 16384 + b * FILL_BATCH
                t = time.perf_counter()
                with fm.map(clone["domid"], range(first, first + FILL_BATCH),
                            writable=False):
                    pass
                times.append((time.perf_counter() - t) * 1e6 / FILL_BATCH)
            self.refill(fm, clone["domid"], 16384)
        finally:
            fm.close()
            self.xenclone("destroy", clone["name"])
        self.res["fork_fill_us_per_batch"] = [round(x, 2) for x in times]
        self.res["fork_fill_us_median"] = round(statistics.median(times), 2)

    def refill(self, fm, domid, pfn):
        """A page taken from a fork (as a drop would) is filled again from
        the image domain on its next touch: the same bytes, shared again."""
        from xenclone.backends.xen.xenctrl import XenCtrl
        image_domid = self.json("host")["capabilities"]["image_domains"][MASTER]["domid"]

        def page(dom):
            with fm.map(dom, [pfn], writable=False) as m:
                return bytes(m.buffer[:4096])

        xc = XenCtrl()
        try:
            before, shared0 = page(domid), xc.domain_info(domid).shr_pages
            xc.decrease_reservation(domid, [pfn])
            shared1 = xc.domain_info(domid).shr_pages
            after, shared2 = page(domid), xc.domain_info(domid).shr_pages
        finally:
            xc.close()
        self.res["refill_shared_pages"] = [shared0, shared1, shared2]
        self.checks["fork_refills_a_dropped_page"] = (
            after == before == page(image_domid) and shared1 == shared0 - 1
            and shared2 == shared0)

    def eight_forks(self):
        free0 = xen_free_mib()
        t = time.monotonic()
        clones = self.launched("-n", str(CLONES), timed="fork_8_clones")
        ids = wait_for(lambda: all("XENCLONE-CLONE-ID %d" % c["clone_id"] in console(c["name"])
                                   for c in clones), 240)
        self.res["fork_8_ids_seen_s"] = round(since(t), 2) if ids is not None else None
        self.checks["eight_print_their_ids"] = ids is not None
        for c in clones:
            xs_write(c["domid"], "write-mib", WRITE_MIB)
        wrote = wait_for(lambda: all("XENCLONE-WROTE" in console(c["name"]) for c in clones),
                         300)
        self.checks["eight_wrote"] = wrote is not None
        time.sleep(2)
        self.res["fork_clones_hv_mib"] = free0 - xen_free_mib()
        self.res["eager_mib"] = CLONES * 128
        self.res["eight"] = [self.json("info", c["name"]) for c in clones]
        self.res["launch_ms"] = [i.get("launch_ms") for i in self.res["eight"]]
        self.eight = clones

    def clone_of_clone(self):
        """A fork clone blessed (it runs on): the new image's domain is a
        fork of the first's holding only the pages that differ."""
        src = self.eight[1]
        self.resumed = (src["name"], len(console(src["name"])))     # checked in clean_up
        info = self.json("bless", src["name"], "--name", GEN2, "--resume", timed="bless_gen2")
        held = self.json("host")["capabilities"]["image_domains"].get(GEN2) or {}
        self.res["gen2_image_domain"] = held
        self.checks["gen2_forks_from_first_image"] = held.get("parent_image") == MASTER
        self.res["clone_of_clone_shared_pages"] = info.get("nonzero_pages", 0) - held.get(
            "pages", 0)
        clone = self.json("launch", GEN2, timed="fork_gen2")["clones"][0]
        self.gen2 = clone
        self.checks["gen2_clone_prints_its_id"] = wait_for(
            lambda: "XENCLONE-CLONE-ID %d" % clone["clone_id"] in console(clone["name"]),
            120) is not None
        self.refused("discard_of_parent_refused", ("discard", MASTER, "--force"),
                     ["discard them first", GEN2])

    def reset(self):
        """A reset clone forgets what it was told and is told again."""
        c = self.eight[0]
        mark = len(console(c["name"]))
        rc, _, err = self.xenclone("reset", c["name"], timed="reset")
        self.res["errors"]["reset"] = err.strip()
        seen = wait_console(c["name"], "XENCLONE-CLONE-ID %d" % c["clone_id"], 120, mark)
        # A tick comes every 10 rounds of its loop: over a minute apart under a loaded TCG.
        ticks = wait_console(c["name"], "XENCLONE-TICK", 180, mark) if seen is not None else None
        self.res["reset_ok"] = self.checks["reset_ok"] = (
            rc == 0 and seen is not None and ticks is not None)
        self.res["reset_hypervisor_after"] = self.json("info", c["name"]).get("hypervisor")

    def pressure(self):
        """The room check on hypervisor memory: a hog domain takes the
        hypervisor's free memory down near the low watermark, then 4 forks
        write more than is left.  The daemon pages written pages out (of
        any clone) to make room; every clone's data reads back as written
        (md5 before and after), and no clone crashes."""
        clones = self.launched("-n", str(PRESSURE_CLONES), timed="fork_pressure_launch")
        wait_for(lambda: all("XENCLONE-CLONE-ID %d" % c["clone_id"] in console(c["name"])
                             for c in clones), 240)
        faults_before = triple_faults()
        hog_mib = xen_free_mib() - LOW_WATERMARK_MIB - HOG_LEAVES_MIB
        with open("/tmp/hog.cfg", "w") as f:
            f.write('name = "%s"\ntype = "pvh"\nmemory = %d\nkernel = "%s"\n'
                    % (HOG, hog_mib, "/mnt/rig/domu/vmlinux"))
        p = run("xl", "create", "-p", "/tmp/hog.cfg", timeout=300)
        r = self.res["pressure"] = {"hog_mib": hog_mib, "hog_rc": p.returncode,
                                    "free_mib_with_hog": xen_free_mib()}
        t = time.monotonic()
        for c in clones:
            xs_write(c["domid"], "write-mib", PRESSURE_MIB)
        wrote = wait_for(lambda: all("XENCLONE-WROTE" in console(c["name"]) for c in clones),
                         420)
        r["write_s"] = since(t)
        if wrote is None:
            self.stuck(r)
            return
        sums = {c["name"]: _said(console(c["name"]), "XENCLONE-WROTE") for c in clones}
        r["free_mib_after_writes"] = xen_free_mib()
        for c in clones:
            xs_write(c["domid"], "verify", 1)
        verified = wait_for(lambda: all("XENCLONE-VERIFY 1" in console(c["name"])
                                        for c in clones), 600)
        again = {c["name"]: _said(console(c["name"]), "XENCLONE-VERIFY 1") for c in clones}
        # Paged out as Xen counts it, and as the daemon's ledger does.
        from xenclone.backends.xen.xenctrl import XenCtrl
        xc = XenCtrl()
        others = getattr(self, "eight", [None])[1:]
        forks = [c["domid"] for c in clones + others]
        r["paged_out_pages"] = sum(xc.domain_info(d).paged_pages for d in forks)
        xc.close()
        infos = [self.json("info", c["name"]) for c in clones + others]
        r["ledger_paged_out_pages"] = sum(i.get("paged_out_pages", 0) for i in infos)
        r["info_hypervisor"] = {i["name"]: i.get("hypervisor") for i in infos}
        r["sums"], r["sums_again"] = sums, again
        run("xl", "destroy", HOG)
        alive = set(xl_names())
        checks = {
            "hog_made": p.returncode == 0,
            "all_wrote": wrote is not None,
            "all_read_back_right": verified is not None and all(
                sums[n] and sums[n] == again[n] for n in sums),
            "daemon_paged_out": r["paged_out_pages"] > 0,
            "no_clone_lost": all(c["name"] in alive for c in clones)
            and triple_faults() == faults_before,
        }
        r["checks"] = checks
        self.res["pressure_ok"] = self.checks["pressure_ok"] = all(checks.values())
        for c in clones:
            self.xenclone("destroy", c["name"])

    def stuck(self, r):
        """What a step that waited in vain leaves to look at: the daemon's
        threads (SIGUSR2: their stacks on its stderr, job.out), its view
        of the host and of each fork (rings included), the hypervisor's
        view of each vCPU (pause_count: paused for a ring, or blocked in
        the guest), and where each fork's kernel is."""
        run("pkill", "-USR2", "-f", "twistd import run")
        r["stuck_host"] = self.json("host")
        names = [n for n in xl_names() if n.startswith(MASTER + ".")]
        r["stuck_info"] = {n: self.json("info", n) for n in names}
        run("xl", "dmesg", "-c")
        run("xl", "debug-keys", "q")
        r["stuck_xen_domains"] = run("xl", "dmesg").stdout.splitlines()
        r["stuck_guest_stacks"] = {n: guest_stack(domid_of(n)) for n in names}
        print(json.dumps(r, indent=1, sort_keys=True), file=sys.stderr, flush=True)
        self.checks["pressure_ok"] = False

    def bad_input(self):
        self.refused("reset_of_unknown_refused", ("reset", "no-such-clone"),
                     ["no-such-clone"])

    def clean_up(self):
        # The blessed clone ticks on after its resume (ticks come a minute
        # or more apart under TCG: looked for this late).
        self.checks["gen2_source_runs_on"] = wait_console(
            self.resumed[0], "XENCLONE-TICK", 180, self.resumed[1]) is not None
        # One through xl, as an administrator would; the rest through xenclone
        # (a discard destroys its image's clones first).
        p = run("xl", "destroy", self.eight[-1]["name"])
        self.res["xl_destroy"] = {"rc": p.returncode, "stderr": p.stderr.strip()[-300:]}
        self.checks["xl_destroy_of_a_fork"] = p.returncode == 0
        rc, _, err = self.xenclone("destroy", self.one["name"])
        self.checks["destroy_of_a_fork"] = rc == 0
        self.xenclone("discard", GEN2, "--force")
        self.xenclone("discard", MASTER, "--force")
        left = [n for n in xl_names() if n.startswith((MASTER, GEN2, "xenclone-image"))]
        self.res["left_in_xl_list"] = left
        self.checks["nothing_left"] = not left
        homes = run("xenstore-list", "/local/domain").stdout.split()
        self.res["xenstore_homes_left"] = homes
        self.checks["no_xenstore_home_left"] = set(homes) <= set(self.homes_before)
        self.res["xen_triple_faults"] = triple_faults()


    def operations_logged(self):
        """The daemon's log: each operation with who, what, domain, result
        and duration (issue 20)."""
        with open(LOG, errors="replace") as f:
            log = f.read()
        lines = [line for line in log.splitlines() if "[xenclone.ops#info]" in line]
        # Where each fork launch's time went (the backend's log).
        self.res["launch_steps_ms"] = [
            {k: float(v) for k, v in zip(("child", "rings", "xenstore"), m)}
            for m in re.findall(r": child ([\d.]+) ms, rings ([\d.]+) ms, xenstore ([\d.]+) ms",
                                log)]
        self.res["ops_logged"] = len(lines)
        for op, target in (("bless", MASTER), ("launch", MASTER), ("reset", "no-such-clone"),
                           ("discard", MASTER)):
            mark = re.compile(r"\] uid=0 pid=\d+: %s %s: \S+.* \(\d+\.\d{3} s\)$"
                              % (op, re.escape(target)))
            self.checks["logged_%s" % op] = any(mark.search(line.rstrip()) for line in lines)


if __name__ == "__main__":
    sys.exit(main(ForkJob(None)))
