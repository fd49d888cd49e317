"""TLS page fetch between two network namespaces this test creates.

The server runs in one namespace, the client in another, joined by a veth
pair with private addresses that exist only inside those namespaces.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

from twisted.internet import defer, reactor, utils
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.trial import unittest

from xenclone.memserver.client import MemoryServerClient

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import memserver_helpers as H  # noqa: E402

SERVER_IP, CLIENT_IP = "10.213.0.1", "10.213.0.2"
NPAGES = 700


def _ip(*args):
    subprocess.run(["ip"] + list(args), check=True, capture_output=True, timeout=30)


class NetnsTLSTests(unittest.TestCase):
    timeout = 90

    def setUp(self):
        if os.geteuid() != 0:
            raise unittest.SkipTest("network namespaces need root")
        if shutil.which("ip") is None:
            raise unittest.SkipTest("the ip command (Debian package iproute2) is missing")
        tag = "%d%s" % (os.getpid() % 100000, os.urandom(2).hex())
        self.ns_server, self.ns_client = "xcms-s-" + tag, "xcms-c-" + tag
        for ns in (self.ns_server, self.ns_client):
            _ip("netns", "add", ns)
            self.addCleanup(_ip, "netns", "del", ns)     # takes the veth pair with it
        veth_s, veth_c = "xs" + tag, "xc" + tag          # names must stay under 16 bytes
        _ip("link", "add", veth_s, "netns", self.ns_server, "type", "veth",
            "peer", "name", veth_c, "netns", self.ns_client)
        for ns, dev, addr in ((self.ns_server, veth_s, SERVER_IP),
                              (self.ns_client, veth_c, CLIENT_IP)):
            _ip("-n", ns, "addr", "add", addr + "/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        sockdir = tempfile.mkdtemp(prefix="xcms-")
        self.addCleanup(shutil.rmtree, sockdir, True)
        self.sock = os.path.join(sockdir, "ms.sock")

    @defer.inlineCallbacks
    def test_fetch_across_namespaces(self):
        cert, key, ca, tok = H.tls_files(os.path.join(self.dir, "tls"), [SERVER_IP])
        argv = ["ip", "netns", "exec", self.ns_server] + H.server_argv(
            os.path.join(self.dir, "store"), self.sock, tcp="%s:7443" % SERVER_IP,
            token_file=tok, cert=cert, key=key)
        yield H.spawn_server(reactor, self, [shutil.which("ip")] + argv[1:])

        # The Unix socket is a path, so it is reachable from any namespace.
        client = MemoryServerClient(reactor, UNIXClientEndpoint(reactor, self.sock))
        self.addCleanup(client.close)
        cap, zero = H.make_capture(NPAGES, zero_every=7)
        self.addCleanup(os.close, cap.mem_fd)
        yield client.put("netimg", cap)

        out, err, code = yield utils.getProcessOutputAndValue(
            shutil.which("ip"), ["netns", "exec", self.ns_client, sys.executable,
                                 os.path.join(H.ROOT, "tests", "memserver_helpers.py"),
                                 SERVER_IP, "7443", tok, ca, "netimg", str(NPAGES)],
            env=dict(os.environ, PYTHONPATH=H.ROOT), path=H.ROOT)
        self.assertEqual(code, 0, err.decode(errors="replace"))
        got = json.loads(out.decode().strip().splitlines()[-1])["digests"]
        want = [hashlib.sha256(H.expected_page(p, zero)).hexdigest() for p in range(NPAGES)]
        self.assertEqual(got, want)
