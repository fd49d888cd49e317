"""dom0 side of the rig's net job (issue 18's acceptance): the rig's PVH
domU with a vif on xenbr0 and an ext4 disk (rig/domu/pvh-net.cfg), made by
plain xl, blessed by name and cloned 4 times, filled as $XENCLONE_FILL says
(before-run on stock Xen, lazy on the patched one); prints one JSON object
and exits non-zero if a check failed.

    python3 net.py CONF

From dom0, over HTTP (the guest's /cgi-bin/id): each clone answers at its
own address with its own clone id and hostname and 16 fresh random bytes;
each writes a file on its disk that no other clone and not the master
sees; the master, resumed, answers at its old address with its disk
unchanged by the clones.  The identity agent's handshake is awaited by
``launch --wait-identity``; the overlays go with ``destroy``.
"""

import functools
import http.server
import os
import re
import socket
import statistics
import threading
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from linux import Job, console, main, run, since, wait_console, xl_names  # noqa: E402

MASTER, CFG, CLONES = "rig-net", "/mnt/rig/domu/pvh-net.cfg", 4
LEASES = "/var/lib/misc/dnsmasq.leases"
IMAGE = "/tmp/rig-net.img"       # the master's disk (net.sh)
IDENTITY_WAIT = 300         # s: the agents' handshake under TCG
FILL = os.environ.get("XENCLONE_FILL", "before-run")
DAEMON_LOG = os.environ.get("XENCLONE_LOG", "xenclone-net-daemon.log")


def ask(ip, query="", timeout=90):
    """The guest's answer as a dict (``files`` a sorted list), or
    ``{"error": why, "s": seconds}``."""
    t = time.monotonic()
    try:
        with urllib.request.urlopen("http://%s/cgi-bin/id%s" % (ip, query),
                                    timeout=timeout) as r:
            text = r.read().decode(errors="replace")
    except OSError as e:
        return {"error": str(e), "s": since(t)}
    answer = dict(line.split(" ", 1) if " " in line else (line, "")
                  for line in text.splitlines() if line)
    answer["files"] = sorted(answer.get("files", "").split())
    answer["s"] = since(t)
    return answer


def answered(answer):
    return bool(answer) and "error" not in answer


# What dom0 and a guest that does not answer say about its network and disk.
DOM0_LOOKS = (("ip", "-br", "addr"), ("ip", "neigh"), ("bridge", "fdb", "show", "br", "xenbr0"),
              ("ip", "-s", "link"), ("cat", "/proc/net/snmp"))
GUEST_LOOK = ("echo DBG-BEGIN; cat /sys/class/net/eth0/address; ip addr; ip route; ip neigh; "
              "cat /proc/net/dev /proc/net/tcp /proc/net/tcp6 /proc/net/snmp; ps; "
              "cat /tmp/agent.log /tmp/udhcpc.log; dmesg | tail -30; "
              "cat /sys/block/xvda/inflight; ls /mnt/disk; echo DBG-LS-$((6*7)); "
              "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 20 10.99.0.1 8080; "
              "echo DBG-DOM0-$((6*7)); "
              "printf 'GET /cgi-bin/id HTTP/1.0\\r\\n\\r\\n' | nc -w 30 127.0.0.1 80; "
              "echo DBG-WGET-$((6*7))\n")
# Then, as a guess at stale state: the link bounced, a new lease.
GUEST_KICK = ("ip neigh flush dev eth0; ip link set eth0 down; ip link set eth0 up; "
              "udhcpc -i eth0 -n -q -t 5; ip addr; echo DBG-KICK-$((6*7))\n")


class _Pong(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"dom0 answers\n")


@functools.cache
def dom0_http():
    """dom0's own answer on the bridge (port 8080), for a guest's look."""
    server = http.server.ThreadingHTTPServer(("10.99.0.1", 8080), _Pong)
    threading.Thread(target=server.serve_forever, daemon=True).start()


def connect(ip):
    t = time.monotonic()
    try:
        socket.create_connection((ip, 80), 20).close()
        return "connected in %s s" % since(t)
    except OSError as e:
        return "%s after %s s" % (e, since(t))


def dom0_look(ip):
    look = {" ".join(c): run(*c).stdout[-4000:] for c in DOM0_LOOKS}
    look["tcp 80"] = connect(ip) if ip else None
    return look


def backend_look(domid):
    return "".join(run("xenstore-ls", "-f", path % domid).stdout
                   for path in ("/local/domain/0/backend/vif/%d", "/local/domain/0/backend/qdisk/%d",
                                "/local/domain/0/backend/vbd/%d", "/local/domain/%d/device"))


def guest_look(name, domid, say=GUEST_LOOK, until="DBG-WGET-42", wait=90):
    """What the guest's console shell (rig/domu/init) prints for ``say``."""
    tty = run("xenstore-read", "/local/domain/%d/console/tty" % domid).stdout.strip()
    before = len(console(name))
    try:
        fd = os.open(tty, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
        os.write(fd, say.encode())
        os.close(fd)
    except OSError as e:
        return "no console shell: %s (%r)" % (e, tty)
    wait_console(name, until, wait, after=before)
    return console(name)[before:]


def overlay_ms():
    """Each clone's overlay creation as the daemon logged it (clone_devices.py)."""
    try:
        with open(DAEMON_LOG) as f:
            return [float(m) for m in re.findall(r"overlays made in ([0-9.]+) ms", f.read())]
    except OSError:
        return []


def each(fn, items):
    """``fn`` over ``items`` at once: each waits on a guest or a CLI call,
    seconds under TCG."""
    with ThreadPoolExecutor(max(len(items), 1)) as pool:
        return list(pool.map(fn, items))


def disk_files(image):
    """The files on an ext4 image's root, read from dom0 (debugfs)."""
    out = run("debugfs", "-R", "ls", image).stdout.split()
    return sorted(set(out) - {".", "..", "lost+found"} - {w for w in out if w.isdigit()
                                                             or w.startswith("(")})


def macs(name):
    """The domain's vif MACs, as ``xl network-list`` gives them."""
    rows = run("xl", "network-list", name).stdout.splitlines()[1:]
    return [row.split()[2] for row in rows if len(row.split()) > 2]


class NetJob(Job):
    def steps(self):
        ends = self.res["steps_end_s"] = {}
        t0 = time.monotonic()
        for step in (self.master_up, self.bless, self.launch, self.clones_answer,
                     self.master_resumes, self.clean_up):
            step()
            ends[step.__name__] = since(t0)

    def master_up(self):
        p = run("xl", "create", CFG)
        self.res["xl_create"] = {"rc": p.returncode, "stderr": p.stderr[-800:]}
        up = wait_console(MASTER, "XENCLONE-NET-UP", 300)
        # The console shell's prompt may come first on the line.
        said = re.search(r"XENCLONE-NET-UP (\d+\.\d+\.\d+\.\d+)/", console(MASTER))
        self.res["master_console"] = console(MASTER)[-1500:]
        self.master_ip = said.group(1) if said and up is not None else None
        self.master = ask(self.master_ip) if self.master_ip else None
        self.res["master_before"] = self.master
        if self.master_ip and not answered(self.master):
            self.res["master_look"] = {"dom0": dom0_look(self.master_ip),
                                       "guest": guest_look(MASTER, int(run(
                                           "xl", "domid", MASTER).stdout.strip()), wait=60)}
        self.checks["master_up_with_lease"] = answered(self.master) and bool(self.master["ip"])

    def bless(self):
        rc, out, err = self.xenclone("bless", MASTER, timed="bless")
        self.res["bless"] = {"rc": rc, "stderr": err.strip()[-800:]}
        self.checks["blessed_with_devices"] = rc == 0
        snaps = "/tmp/xenclone-net/state/disks/%s" % MASTER
        self.res["snapshot_files"] = sorted(os.listdir(snaps)) if os.path.isdir(snaps) else None

    def launch(self):
        t = time.monotonic()
        made = self.json("launch", MASTER, "-n", str(CLONES), "--fill", FILL,
                         "--wait-identity", str(IDENTITY_WAIT), timed="launch")["clones"]
        self.res["launch_s"] = since(t)
        self.res["fill"] = FILL
        self.res["clones"] = made
        for c in made:
            c["macs"] = macs(c["name"])
        # What info says of one (every CLI call is seconds under TCG).
        made[0]["info"] = self.json("info", made[0]["name"])
        self.checks["info_shows_identity"] = made[0]["info"].get("identity") == "renewed"
        ms = overlay_ms()
        self.res["overlay_create_ms"] = ms
        self.res["overlay_create_ms_median"] = statistics.median(ms) if ms else None
        self.checks["identity_renewed"] = all(c.get("identity") == "renewed" for c in made)
        seconds = [c["identity_s"] for c in made if c.get("identity_s") is not None]
        self.res["identity_renewed_s_median"] = statistics.median(seconds) if seconds else None

    def lease_ip(self, mac):
        try:
            with open(LEASES) as f:
                rows = [line.split() for line in f]
        except OSError:
            return None
        found = [r[2] for r in rows if len(r) > 2 and r[1].lower() == mac.lower()]
        return found[-1] if found else None

    def clones_answer(self):
        """Each clone answers at its lease's address (its network), then
        writes a file on its disk; once all wrote, each sees its own only."""
        clones = self.res["clones"]

        def first(c):
            c["ip"] = self.lease_ip(c["macs"][0]) if c["macs"] else None
            c["answer_first"] = ask(c["ip"]) if c["ip"] else None
            c["answer"] = ask(c["ip"], "?write=clone-%d" % c["clone_id"]) \
                if answered(c["answer_first"]) else None

        def after(c):
            c["answer_after"] = ask(c["ip"]) if answered(c["answer"]) else None

        each(first, clones)
        each(after, clones)
        kicked = False
        for c in clones:
            if not answered(c["answer_after"]):
                dom0_http()
                c["look"] = {"dom0": dom0_look(c["ip"]), "backends": backend_look(c["domid"]),
                             "guest": guest_look(c["name"], c["domid"], wait=60)}
            if not answered(c["answer_after"]) and not kicked:     # one is enough
                kicked = True
                c["look"]["kick"] = guest_look(c["name"], c["domid"], GUEST_KICK,
                                               "DBG-KICK-42", 60)
                c["look"]["after_kick"] = ask(self.lease_ip(c["macs"][0]))
            c["console_tail"] = console(c["name"])[-3000:]
        answering = [c for c in clones if answered(c["answer"]) and answered(c["answer_after"])]
        self.res["summary"] = summary = {
            "net_clones_answering": len(answering),
            "distinct_ips": len({c["ip"] for c in answering}),
            "distinct_macs": len({tuple(c["macs"]) for c in clones}),
            "rng_distinct": len({c["answer"]["random"] for c in answering}
                                | {self.master["random"] if answered(self.master) else None})
            == len(answering) + 1,
            "disk_isolated": len(answering) == CLONES and all(
                c["answer_after"]["files"] == ["clone-%d" % c["clone_id"]] for c in answering),
            "identity_renewed_s_median": self.res["identity_renewed_s_median"],
            "overlay_create_ms_median": self.res["overlay_create_ms_median"]}
        self.checks["net_clones_answering"] = summary["net_clones_answering"] == CLONES
        self.checks["distinct_ips_and_macs"] = (summary["distinct_ips"] == CLONES
                                                and summary["distinct_macs"] == CLONES)
        self.checks["own_clone_id_and_hostname"] = bool(answering) and all(
            c["answer"]["clone_id"] == str(c["clone_id"])
            and c["answer"]["hostname"].endswith("-%d" % c["clone_id"]) for c in answering)
        self.checks["rng_distinct"] = summary["rng_distinct"]
        self.checks["disk_isolated"] = summary["disk_isolated"]

    def master_resumes(self):
        rc, _, err = self.xenclone("unpause", MASTER)
        self.res["unpause"] = {"rc": rc, "stderr": err.strip()}
        deadline = time.monotonic() + 120
        after = None
        while time.monotonic() < deadline and after is None:
            after = ask(self.master_ip, timeout=10) if self.master_ip else None
            after = after if answered(after) else None
            time.sleep(2)
        self.res["master_after"] = after
        ok = bool(after) and answered(self.master) and after["ip"] == self.master["ip"] and \
            after["files"] == self.master["files"] and after["clone_id"] == "none"
        self.res["summary"]["master_ok"] = ok
        self.checks["master_ok"] = ok

    def clean_up(self):
        names = [c["name"] for c in self.res["clones"]]
        done = each(lambda i: self.xenclone("destroy", names[i], *(("--keep-disks",) if i == 0
                                                                   else ())), range(len(names)))
        kept = [line.split()[1] for line in done[0][1].splitlines()
                if line.strip().startswith("kept")] if done else []
        self.res["kept_disks"] = kept
        rc, _, err = self.xenclone("discard", MASTER)
        self.checks["discard_refused_while_kept"] = rc == 1 and "depend" in err
        for path in kept or ():
            os.unlink(path)
        rc, _, err = self.xenclone("discard", MASTER)
        self.res["discard"] = {"rc": rc, "stderr": err.strip()}
        self.checks["discarded"] = rc == 0
        self.xenclone("destroy", MASTER)
        # Its disk's own file, as dom0 reads it: nothing of the clones'.
        self.res["master_disk_files"] = files = disk_files(IMAGE)
        self.checks["master_disk_untouched"] = files == (self.master or {}).get("files")
        left = [n for n in xl_names() if n.startswith(MASTER)]
        self.res["left_in_xl_list"] = left
        self.checks["nothing_left"] = not left


if __name__ == "__main__":
    sys.exit(main(NetJob(sys.argv[1])))
