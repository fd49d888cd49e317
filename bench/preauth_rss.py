"""What 64 hostile strangers on a memory server's TLS port cost it: VmRSS
before and while they hold their links (``selftests/hostile_links.py``: silent,
trickling, oversized frames, 60 MiB floods).  The server runs from the
source tree ``--tree`` (default this one), so a tree before the link limits
can be measured the same way.  Prints JSON.

    .venv/bin/python bench/preauth_rss.py [--tree DIR] [--links 64]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from xenclone.memserver.tls import write_server_files
from xenclone.selftests import hostile_links

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tree", default=HERE, help="source tree whose memory server runs")
    p.add_argument("--links", type=int, default=64)
    a = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="xc-preauth-")
    try:
        cert, key, ca, token = (os.path.join(tmp, n) for n in ("c.pem", "k.pem", "ca.pem", "t"))
        write_server_files(cert, key, ca, ["127.0.0.1"])
        with open(token, "w") as f:
            f.write("0123456789abcdef0123\n")
        port = _free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "xenclone.memserver_process", "--dir", tmp + "/store",
             "--socket", tmp + "/ms.sock", "--tcp", "127.0.0.1:%d" % port,
             "--token-file", token, "--cert", cert, "--key", key],
            cwd=a.tree, env=dict(os.environ, PYTHONPATH=a.tree),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            while b"memory server ready" not in server.stdout.readline():
                if server.poll() is not None:
                    raise SystemExit("the memory server did not start")
            time.sleep(0.5)
            before = hostile_links.rss_kib(server.pid)
            t0 = time.monotonic()
            socks = hostile_links.open_links("127.0.0.1", port, ca, a.links)
            time.sleep(0.5)
            during = hostile_links.rss_kib(server.pid)
            hostile_links.close_links(socks)
        finally:
            server.kill()
        print(json.dumps({"tree": a.tree, "links": a.links, "rss_before_kib": before,
                          "rss_during_kib": during,
                          "growth_mib": round((during - before) / 1024, 1),
                          "seconds": round(time.monotonic() - t0, 1)}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
