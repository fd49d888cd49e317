"""dom0 side of the rig's daemon-restart check, in two halves around a
``kill -9`` of the daemon (rig/jobs/clone.sh does the killing):

    python3 restart.py XENCLONE_CONF before    # master, image, 2 paused clones
    python3 restart.py XENCLONE_CONF after     # a new daemon: clones taken back?

``after`` prints one JSON object (checks, ok) and exits non-zero if a check
failed.  Everything goes through the xl-style CLI, as an operator's would.
"""

import json
import os
import subprocess
import sys
import time

MASTER, IMAGE = "rmaster", "rimg"
CLI = "import sys; from xenclone.cli.main import entry; sys.argv[0] = 'xenclone'; entry()"


def xenclone(conf, *args):
    proc = subprocess.run([sys.executable, "-c", CLI, "-c", conf] + list(args),
                          capture_output=True, text=True, env=os.environ)
    if proc.returncode:
        raise RuntimeError("xenclone %s: exit %d: %s" % (" ".join(args), proc.returncode,
                                                         proc.stderr.strip()))
    return json.loads(proc.stdout) if "--json" in args else proc.stdout


def published(path, seconds=30):
    """``xenstore-read path`` once it has a value (None if it never does)."""
    for _ in range(seconds):
        proc = subprocess.run(["xenstore-read", path], capture_output=True, text=True)
        if proc.returncode == 0:
            return proc.stdout.strip()
        time.sleep(1)
    return None


def before(conf):
    cfg = os.path.join(os.path.dirname(conf), "rmaster.cfg")
    with open(cfg, "w") as f:
        f.write('name = "%s"\nmemory = 16\n' % MASTER)
    xenclone(conf, "create", cfg)
    xenclone(conf, "bless", MASTER, "--name", IMAGE)
    out = xenclone(conf, "launch", IMAGE, "-n", "2", "--paused")
    print(json.dumps({"clones": [line.split()[1] for line in out.splitlines()]}))


def after(conf):
    checks = {}
    res = {"checks": checks}
    for _ in range(120):          # the new daemon starts: its socket answers
        try:
            listed = xenclone(conf, "list", "--json")["domains"]
            break
        except RuntimeError:
            time.sleep(1)
    else:
        raise RuntimeError("the restarted daemon does not answer")
    names = {d["name"]: d for d in listed}
    clones = sorted(n for n in names if n.startswith(IMAGE + "."))
    checks["clones_taken_back"] = len(clones) == 2 and all(
        names[n]["state"] == "paused" for n in clones)
    checks["master_taken_back"] = MASTER in names
    # The new daemon publishes them again in the real xenstored.
    checks["state_republished"] = all(
        published("/tool/xenclone/clones/%d/state" % names[n]["domid"]) == "paused"
        for n in clones)
    answers = []
    for name in clones:
        xenclone(conf, "unpause", name)
        info = xenclone(conf, "wait", name, "--timeout", "300", "--json")
        answers.append({k: info.get(k) for k in ("name", "state", "result", "expected")})
    res["answers"] = answers
    checks["answers_right"] = len(answers) == 2 and all(
        a["state"] == "done" and a["result"] == a["expected"] for a in answers)
    # The image outlived the daemon too (in the memory-server domain).
    listed = {i["image_id"]: i for i in xenclone(conf, "images", "--json")["images"]}
    checks["image_kept_in_server_domain"] = "server_domain" in listed.get(IMAGE, {})
    name = xenclone(conf, "launch", IMAGE, "--json")["clones"][0]["name"]
    info = xenclone(conf, "wait", name, "--timeout", "300", "--json")
    res["launched_after_restart"] = {k: info.get(k) for k in ("name", "state", "result",
                                                               "expected")}
    checks["image_launches_after_restart"] = (info["state"] == "done"
                                              and info["result"] == info["expected"])
    clones.append(name)
    for name in clones:
        xenclone(conf, "destroy", name)
    xenclone(conf, "discard", IMAGE, "--force")
    xenclone(conf, "destroy", MASTER)
    return res


def main():
    conf, half = sys.argv[1], sys.argv[2]
    if half == "before":
        before(conf)
        return 0
    try:
        res = after(conf)
    except RuntimeError as e:
        res = {"checks": {"completed": False}, "error": str(e)}
    res["ok"] = all(res["checks"].values())
    print(json.dumps(res, indent=1, sort_keys=True))
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
