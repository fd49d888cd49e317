"""CRIU as a peer: which CRIU works on this kernel, and why it is not run.

Debian 12's CRIU 3.17 fails here ("vdso: Unexpected rt vDSO area bounds").
Debian 13's (trixie) CRIU 4.1.1 needs glibc 2.38, newer than Debian 12's,
so it cannot be installed; ``bench/get-criu.sh`` unpacks it with its own
libraries into a private root instead, where ``criu check`` passes and a
dump and restore of a process work.  The bench records what it finds and
why CRIU is not among the peers yet.
"""

import os
import subprocess

PRIVATE_ROOT = os.environ.get("XENCLONE_CRIU_ROOT", "/var/cache/xenclone-bench/criu-root")


def command():
    """argv prefix running a CRIU: the private trixie one, else the system's."""
    loader = os.path.join(PRIVATE_ROOT, "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    if os.path.exists(loader):
        libs = ":".join(os.path.join(PRIVATE_ROOT, d) for d in
                        ("usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu"))
        return [loader, "--library-path", libs, os.path.join(PRIVATE_ROOT, "usr/sbin/criu")]
    for d in ("/usr/sbin", "/usr/bin"):
        if os.path.exists(os.path.join(d, "criu")):
            return [os.path.join(d, "criu")]
    return None


def status():
    argv = command()
    if argv is None:
        return {"found": None, "run": False,
                "why": "no CRIU: Debian 12's 3.17 fails on this kernel (vDSO bounds); "
                       "bench/get-criu.sh unpacks Debian 13's 4.1.1 privately"}
    version = subprocess.run(argv + ["--version"], capture_output=True, text=True).stdout
    check = subprocess.run(argv + ["check"], capture_output=True, text=True)
    return {"found": " ".join(argv[-1:]), "version": version.strip().replace("\n", " "),
            "check": (check.stdout + check.stderr).strip().splitlines()[-1:],
            "run": False,
            "why": "not run as a peer yet: criu check, a dump and concurrent eager "
                   "restores of one image (each in its own PID namespace, the dumped "
                   "task a session leader in it, its pipes swapped with --inherit-fd) "
                   "worked by hand here; restores with --restore-detached and "
                   "--lazy-pages (lazy-pages daemon per work dir) exited at once, "
                   "not yet understood"}
