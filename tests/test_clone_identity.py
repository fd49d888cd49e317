"""The identity handshake: dom0's nodes (clone_identity.py) and the guest
agent (guest/identity-agent) run against the embedded XenStore through
Debian's xenstore-* tools, its files and commands kept in a temporary root
so the host is not changed."""

import importlib.machinery
import importlib.util
import json
import os
import shutil
import signal
import stat
import struct
import tempfile

from twisted.internet import defer, protocol, reactor, task, utils
from twisted.trial import unittest

from tests.xenstore_helpers import embedded_xenstore
from xenclone.backends.xen import clone_identity, linux
from xenclone.wire import WireError
from xenclone.xenstore.wire import XenStoreError

AGENT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "guest", "identity-agent")
AGENT = os.path.join(AGENT_DIR, "xenclone-identity")
DOMID = 5
BASE = "/local/domain/%d/xenclone" % DOMID


class _EmptyXenStore:
    def read(self, path):
        return defer.fail(XenStoreError("ENOENT"))


class NodesTests(unittest.TestCase):
    def test_entropy_for_this_clone_only_and_before_the_answer(self):
        nodes = clone_identity.identity_nodes(DOMID, ip="10.0.0.5/24", gateway="10.0.0.1",
                                              hostname="web-1")
        perms = {p: ps for p, _, ps in nodes}
        values = {p: v for p, v, _ in nodes}
        self.assertEqual(perms[BASE + "/entropy"], ["n0", "b5"])
        self.assertEqual(len(bytes.fromhex(values[BASE + "/entropy"])), 64)
        self.assertEqual(perms[BASE + "/ip"], ["n0", "r5"])
        self.assertEqual(perms[BASE + "/identity"], ["n0", "b5"])
        self.assertEqual(values[BASE + "/identity"], "")
        again = clone_identity.identity_nodes(DOMID)
        self.assertNotEqual(values[BASE + "/entropy"], again[1][1])
        self.assertNotIn(BASE + "/ip", {p for p, _, _ in again})

    def test_bad_input(self):
        for kw, word in [({"ip": "10.0.0.300/24"}, "not an address"),
                         ({"ip": "10.0.0.5"}, "needs its prefix"),
                         ({"gateway": "gw"}, "not an address"),
                         ({"hostname": "web_1"}, "letters, digits")]:
            e = self.assertRaises(WireError, clone_identity.identity_nodes, DOMID, **kw)
            self.assertIn(word, str(e))

    def test_wait_gives_up_as_not_renewed(self):
        clock, xs = task.Clock(), _EmptyXenStore()
        d = clone_identity.wait_identity(clock, xs, DOMID, timeout=1.0)
        clock.pump([clone_identity.POLL] * 11)
        self.assertEqual(self.successResultOf(d), {"identity": "not renewed"})


class ReseedTests(unittest.TestCase):
    def setUp(self):
        loader = importlib.machinery.SourceFileLoader(
            "xenclone_reseed", os.path.join(AGENT_DIR, "xenclone-reseed"))
        self.reseed = importlib.util.module_from_spec(
            importlib.util.spec_from_loader(loader.name, loader))
        loader.exec_module(self.reseed)

    def test_credits_then_forces_a_reseed(self):
        calls = []
        dev = self.mktemp()
        open(dev, "w").close()
        self.reseed.reseed(b"\xab" * 64, dev, ioctl=lambda fd, req, *arg: calls.append((req, arg)))
        (add, (request,)), (again, rest) = calls
        self.assertEqual(add, 0x40085203)
        self.assertEqual(struct.unpack("ii", request[:8]), (512, 64))
        self.assertEqual(request[8:], b"\xab" * 64)
        self.assertEqual((again, rest), (0x5207, ()))

    @defer.inlineCallbacks
    def test_bad_input_is_a_message(self):
        for text, word in [(b"zz", b"not hex"), (b"abcd", b"at least 32")]:
            out, err, code = yield _run_with_input(
                [os.path.join(AGENT_DIR, "xenclone-reseed")], text)
            self.assertEqual(code, 1)
            self.assertIn(word, err)
            self.assertNotIn(b"Traceback", err)


def _run_with_input(argv, data):
    class P(protocol.ProcessProtocol):
        def __init__(self):
            self.out, self.err, self.done = [], [], defer.Deferred()

        def connectionMade(self):
            self.transport.write(data)
            self.transport.closeStdin()

        def outReceived(self, b):
            self.out.append(b)

        def errReceived(self, b):
            self.err.append(b)

        def processEnded(self, reason):
            self.done.callback((b"".join(self.out), b"".join(self.err),
                                reason.value.exitCode))

    p = P()
    reactor.spawnProcess(p, argv[0], argv, env=None)
    return p.done


class AgentTests(unittest.TestCase):
    """The agent's whole pass, with a guest's files under a temporary root."""

    @defer.inlineCallbacks
    def setUp(self):
        if not shutil.which("xenstore-watch"):
            raise unittest.SkipTest("xenstore-utils is not installed")
        yield embedded_xenstore(self)
        self.root = tempfile.mkdtemp(prefix="xenclone-agent-")
        self.addCleanup(shutil.rmtree, self.root, True)
        for d in ("etc", "sys/class/net/eth0/device", "sys/class/net/lo", "usr/sbin", "run",
                  "var/lib/dhcp"):
            os.makedirs(os.path.join(self.root, d))
        self.put("etc/hostname", "web\n")
        self.put("etc/machine-id", "0" * 31 + "1\n")
        self.put("etc/hosts", "127.0.0.1\tlocalhost\n127.0.1.1\tweb\n")
        self.put("usr/sbin/dhclient", "")
        os.chmod(self.path("usr/sbin/dhclient"), stat.S_IRWXU)
        self.put("run/dhclient.eth0.pid", "1234\n")
        self.put("var/lib/dhcp/dhclient.eth0.leases", "lease { fixed-address 10.0.0.2; }\n")
        self.env = dict(os.environ, XENSTORED_PATH=self.server.path, XENCLONE_AGENT_ROOT=self.root,
                        XENCLONE_AGENT_XS=BASE)

    def path(self, name):
        return os.path.join(self.root, name)

    def put(self, name, text):
        with open(self.path(name), "w") as f:
            f.write(text)

    def read(self, name):
        with open(self.path(name)) as f:
            return f.read()

    @defer.inlineCallbacks
    def make_clone(self, clone_id, **kw):
        yield clone_identity.write_identity(self.client, DOMID, **kw)
        yield linux.write_clone_id(self.client, DOMID, clone_id)

    def once(self):
        return utils.getProcessOutputAndValue(AGENT, ["--once"], env=self.env)

    @defer.inlineCallbacks
    def test_clone_renews_its_identity_by_dhcp(self):
        yield self.make_clone(1)
        out, err, code = yield self.once()
        self.assertEqual(code, 0, err)
        answer = yield clone_identity.wait_identity(reactor, self.client, DOMID, timeout=5)
        self.assertEqual(answer["identity"], "renewed", answer)
        detail = answer["detail"]
        self.assertEqual((detail["clone_id"], detail["hostname"], detail["entropy_bytes"],
                          detail["rng"], detail["network"]),
                         ("1", "web-1", 64, "reseeded", "dhclient on eth0"))
        self.assertRegex(detail["machine_id"], "^[0-9a-f]{32}$")
        self.assertEqual(self.read("etc/machine-id"), detail["machine_id"] + "\n")
        self.assertEqual(self.read("etc/hostname"), "web-1\n")
        self.assertIn("127.0.1.1\tweb-1", self.read("etc/hosts"))
        with self.assertRaises(Exception):      # read once: gone
            yield self.client.read(BASE + "/entropy")
        self.assertFalse(os.path.exists(self.path("var/lib/dhcp/dhclient.eth0.leases")))
        self.assertEqual(self.read("commands").splitlines(), [
            "xenclone-reseed (64 bytes)", "hostname web-1", "ip addr flush dev eth0",
            "kill 1234", "dhclient -4 -1 -pf /run/dhclient.eth0.pid "
            "-lf /var/lib/dhcp/dhclient.eth0.leases eth0"])
        # Run again with nothing new: nothing done.
        yield self.once()
        self.assertEqual(len(self.read("commands").splitlines()), 5)

    @defer.inlineCallbacks
    def test_given_address_and_name(self):
        yield self.make_clone(2, ip="10.0.0.7/24", gateway="10.0.0.1", hostname="web-two")
        yield self.once()
        answer = yield clone_identity.wait_identity(reactor, self.client, DOMID, timeout=5)
        self.assertEqual((answer["detail"]["hostname"], answer["detail"]["network"]),
                         ("web-two", "static 10.0.0.7/24 on eth0"))
        self.assertEqual(self.read("commands").splitlines()[2:], [
            "ip addr flush dev eth0", "ip addr add 10.0.0.7/24 dev eth0",
            "ip link set eth0 up", "ip route replace default via 10.0.0.1 dev eth0"])

    @defer.inlineCallbacks
    def test_no_dhcp_client_is_a_failure_said(self):
        os.unlink(self.path("usr/sbin/dhclient"))
        yield self.make_clone(3)
        yield self.once()
        answer = yield clone_identity.wait_identity(reactor, self.client, DOMID, timeout=5)
        self.assertEqual(answer["identity"], "failed")
        self.assertIn("no DHCP client", answer["detail"]["network"])

    @defer.inlineCallbacks
    def test_master_is_left_alone_then_watch_sees_the_clone(self):
        proc = reactor.spawnProcess(_Quiet(), "setsid", ["setsid", AGENT], env=self.env)
        self.addCleanup(_kill_group, proc)
        yield task.deferLater(reactor, 0.5, lambda: None)      # the watch fired: no id
        self.assertFalse(os.path.exists(self.path("commands")))
        yield self.make_clone(4)
        answer = yield clone_identity.wait_identity(reactor, self.client, DOMID, timeout=10)
        self.assertEqual((answer["identity"], answer["detail"]["hostname"]),
                         ("renewed", "web-4"))


class _Quiet(protocol.ProcessProtocol):
    pass


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, TypeError):
        pass
