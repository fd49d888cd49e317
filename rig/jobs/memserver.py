"""dom0 side of the rig's memory-server-domain job, run by clone.sh with the
daemon up (config from daemon.sh: memserver_domain_mib, memserver_tcp):

- a master blessed into the server domain, dom0's MemAvailable before and
  after, its XenStore node; 3 clones filled through grant maps, answers;
- bad input: an unknown image, a page out of range, a bad token, an image
  too big for the server domain; a clone launched after them answers;
- a second daemon (its own state, no server domain) mirrors the image over
  TLS with the token, and its clone answers;
- lifecycle: stop refused while the domain holds images, discard frees its
  frames and node, stop --force, start again.

    python3 memserver.py XENCLONE_CONF     # prints JSON, exits 1 on a failed check
"""

import fcntl
import json
import os
import socket
import struct
import subprocess
import sys
import time

from twisted.internet import defer, task

from clone import Job, run_job, xl_names
from xenclone import workload
from xenclone.config import load_daemon_config
from xenclone.memserver.client import RemotePageSource
from xenclone.wire import WireError

MASTER, IMAGE, MIB, CLONES = "smaster", "simg", 32, 3
SECOND = "/tmp/xenclone-second"
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 1


def loopback_up():
    """The rig's dom0 init leaves lo down (and has no ip(8)): TLS to
    127.0.0.1 needs it up."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        name = b"lo".ljust(16, b"\0")
        flags, = struct.unpack_from("H", fcntl.ioctl(s, SIOCGIFFLAGS, name + bytes(24)), 16)
        fcntl.ioctl(s, SIOCSIFFLAGS, name + struct.pack("H", flags | IFF_UP) + bytes(22))


def mem_available_kib():
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))


def xenstore_read(path):
    proc = subprocess.run(["xenstore-read", path], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


class MemserverJob(Job):
    @defer.inlineCallbacks
    def steps(self):
        self.settings = load_daemon_config(self.conf)
        loopback_up()
        yield self.bless_into_server()
        yield self.clones_answer(CLONES, "from_server_domain")
        yield self.bad_input_of_issue()
        yield self.clones_answer(1, "after_bad_input")
        yield self.second_daemon_over_tls()
        yield self.lifecycle()

    @defer.inlineCallbacks
    def create(self, name, mib):
        cfg = os.path.join(os.path.dirname(self.conf), name + ".cfg")
        with open(cfg, "w") as f:
            f.write('name = "%s"\nmemory = %d\n' % (name, mib))
        rc, out, err = yield self.xenclone("create", cfg)
        if rc:
            raise RuntimeError("create %s: %s" % (name, err.strip()))

    @defer.inlineCallbacks
    def bless_into_server(self):
        before_status = yield self.json("memserver", "status")
        self.res["server_before"] = before_status
        self.checks["server_domain_running"] = before_status["running"]
        yield self.create(MASTER, MIB)
        before = mem_available_kib()
        t = time.monotonic()
        image = self.res["image"] = yield self.json("bless", MASTER, "--name", IMAGE)
        took = time.monotonic() - t
        change = mem_available_kib() - before
        status = self.res["server_after"] = yield self.json("memserver", "status")
        figures = self.res.setdefault("figures", {})
        figures.update(dom0_mem_available_change_kib=change,
                       image_nonzero_kib=image["nonzero_pages"] * 4,
                       bless_s=round(took, 2),
                       bless_pages_s=round(image["npages"] / took))
        # dom0 may lose page tables and the image's metadata, not its pages.
        self.checks["image_not_in_dom0"] = -change < image["nonzero_pages"] * 4 // 8
        where = image.get("server_domain") or {}
        self.checks["image_in_server_domain"] = (
            where.get("domid") == status["domid"]
            and before_status["free_pages"] - status["free_pages"] == image["npages"])
        node = xenstore_read("%s/%s" % (status["xenstore"], IMAGE))
        self.res["xenstore_node"] = node
        self.checks["image_published_in_xenstore"] = node == "%d %d" % (
            where.get("first_ref", -1), image["npages"])
        self.params = workload.Params(**image["meta"]["params"])

    @defer.inlineCallbacks
    def clones_answer(self, n, label, conf=None):
        args = ("-c", conf) if conf else ()
        t = time.monotonic()
        rc, out, err = yield self.xenclone(*args, "launch", IMAGE, "-n", str(n), "--json")
        if rc:
            self.res.setdefault("errors", {})[label] = err.strip()
            self.checks["clones_answer_" + label] = False
            return
        names = [c["name"] for c in json.loads(out)["clones"]]
        infos = []
        for name in names:
            infos.append((yield self.json(*args, "wait", name, "--timeout", "300")))
        self.res["timings_s"]["launch_to_answers_" + label] = round(time.monotonic() - t, 2)
        self.res.setdefault("answers", {})[label] = [
            {k: i.get(k) for k in ("name", "state", "result", "expected")} for i in infos]
        self.checks["clones_answer_" + label] = len(infos) == n and all(
            i["state"] == "done" and i["result"] == i["expected"]
            == workload.expected_result(self.params, i["clone_id"], i["input"]) for i in infos)
        for name in names:
            yield self.xenclone(*args, "destroy", name)

    @defer.inlineCallbacks
    def refused(self, label, args, words):
        rc, out, err = yield self.xenclone(*args)
        self.res.setdefault("bad_input", {})[label] = [rc, err.strip()]
        self.checks["clear_error: " + label] = (
            rc == 1 and "Traceback" not in err and all(w in err for w in words))

    @defer.inlineCallbacks
    def bad_input_of_issue(self):
        yield self.refused("unknown image", ("launch", "no-such-image"), ["no-such-image"])
        yield self.refused("page out of range", ("page", IMAGE, "100000"), ["outside image"])
        status = yield self.json("memserver", "status")
        big = status["free_pages"] // 256 + 8
        yield self.create("bigmaster", big)
        yield self.refused("image past the server domain's grants",
                           ("bless", "bigmaster", "--name", "bigimg"),
                           ["bigimg", "memserver_domain_mib"])
        yield self.xenclone("destroy", "bigmaster")
        after = yield self.json("memserver", "status")
        self.checks["refused_bless_left_nothing"] = (
            after["free_pages"] == status["free_pages"] and "bigimg" not in after["images"])
        host, _, port = self.settings["memserver_tcp"].rpartition(":")
        with open(os.path.join(self.settings["state_dir"], "tls", "ca.pem"), "rb") as f:
            ca = f.read()
        source = RemotePageSource(self.reactor, host, int(port), "x" * 64, ca,
                                  request_timeout=30)
        try:
            yield source.fetch(IMAGE, 0, 1)
            self.checks["bad_token_refused"] = False
        except WireError as e:
            self.res.setdefault("bad_input", {})["bad token"] = [e.code, str(e)]
            self.checks["bad_token_refused"] = e.code == "bad-token"
        finally:
            yield source.close()

    @defer.inlineCallbacks
    def second_daemon_over_tls(self):
        """Another host's daemon, as far as it can tell: its own state and
        memory server, the image only reachable over TLS with the token."""
        s = self.settings
        os.makedirs(SECOND, exist_ok=True)
        conf = os.path.join(SECOND, "xenclone.conf")
        with open(conf, "w") as f:
            f.write('backend = "xen"\nstate_dir = "%s/state"\nrun_dir = "%s/run"\n'
                    'control_socket = "%s/run/control.sock"\nxenstore = "off"\n'
                    'xen_guest_kernel = "%s"\nmemserver_remote = "%s"\n'
                    'memserver_remote_ca = "%s/tls/ca.pem"\n'
                    'memserver_remote_token_file = "%s"\n'
                    % (SECOND, SECOND, SECOND, s["xen_guest_kernel"], s["memserver_tcp"],
                       s["state_dir"], s["memserver_token_file"]))
        daemon = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
             "--pidfile=", "-l", os.path.join(os.environ["RIG_OUT"], "second-daemon.log"),
             "xenclone", "-c", conf])
        try:
            for _ in range(600):
                if os.path.exists(os.path.join(SECOND, "run", "control.sock")):
                    break
                yield task.deferLater(self.reactor, 0.2, lambda: None)
            yield self.clones_answer(1, "second_daemon_over_tls", conf)
            rc, out, _ = yield self.xenclone("-c", conf, "images", "--json")
            mirrored = {i["image_id"]: i for i in json.loads(out)["images"]} if rc == 0 else {}
            self.res["second_daemon_image"] = mirrored.get(IMAGE)
            self.checks["second_daemon_mirrors_over_tls"] = (
                (mirrored.get(IMAGE) or {}).get("origin", {}).get("server") == s["memserver_tcp"])
        finally:
            daemon.terminate()
            daemon.wait(60)

    @defer.inlineCallbacks
    def lifecycle(self):
        yield self.refused("stop while it holds images", ("memserver", "stop"),
                           [IMAGE, "would be lost", "--force"])
        before = yield self.json("memserver", "status")
        yield self.xenclone("discard", IMAGE, "--force")
        after = yield self.json("memserver", "status")
        self.checks["discard_frees_frames_and_node"] = (
            after["free_pages"] > before["free_pages"] and IMAGE not in after["images"]
            and xenstore_read("%s/%s" % (after["xenstore"], IMAGE)) is None)
        yield self.xenclone("destroy", MASTER)
        stopped = self.res["stopped"] = yield self.json("memserver", "stop", "--force")
        self.checks["stop_force_destroys_the_domain"] = (
            not stopped["running"] and "xenclone-memserver" not in xl_names())
        started = self.res["started_again"] = yield self.json("memserver", "start")
        self.checks["start_again"] = (started["running"] and started["images"] == []
                                      and "xenclone-memserver" in xl_names())


def main(reactor, conf):
    return run_job(MemserverJob(reactor, conf))


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
