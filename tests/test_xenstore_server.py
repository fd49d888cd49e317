"""The embedded XenStore server over real sockets, with real clients:
Debian's xenstore-utils (through XENSTORED_PATH) and pyxs."""

import os
import shutil
import socket
import sys
import tempfile

from twisted.internet import defer, protocol, reactor, task, threads, utils
from twisted.trial import unittest

from xenclone.xenstore.server import XenStoreServer
from xenclone.xenstore.tree import Caller
from xenclone.xenstore.wire import HEADER, Message, Op, parse_strings, split_messages, strings

TOOLS = shutil.which("xenstore-read")
NO_TOOLS = None if TOOLS else "xenstore-utils is not installed (apt-get install xenstore-utils)"
DOM0 = Caller(0)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Raw:
    """A blocking, byte-exact client for one socket (run it in a thread)."""

    def __init__(self, sock):
        self.sock = sock
        self.sock.settimeout(10)
        self.buf = b""
        self.events = []
        self.req = 0

    def call(self, op, *args, tx=0, payload=None):
        self.req += 1
        payload = strings(*args) if payload is None else payload
        self.sock.sendall(Message(op, self.req, tx, payload).encode())
        while True:
            msg = self.next()
            if msg.type == Op.WATCH_EVENT:
                self.events.append(parse_strings(msg.payload))
            elif msg.req_id == self.req:
                if msg.type == Op.ERROR:
                    return "error", parse_strings(msg.payload, 1)[0]
                return "ok", msg.payload

    def next(self):
        while True:
            msgs, _ = split_messages(self.buf)
            if msgs:
                self.buf = self.buf[HEADER.size + len(msgs[0].payload):]
                return msgs[0]
            data = self.sock.recv(65536)
            if not data:
                raise EOFError
            self.buf += data

    def closed(self):
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True


class _Lines(protocol.ProcessProtocol):
    """Collects stdout; ``first`` fires on the first line (a registered watch)."""

    def __init__(self):
        self.out, self.first, self.done = b"", defer.Deferred(), defer.Deferred()

    def outReceived(self, data):
        self.out += data
        if b"\n" in self.out and not self.first.called:
            self.first.callback(None)

    def processEnded(self, reason):
        if not self.first.called:
            self.first.callback(None)
        self.done.callback(reason.value.exitCode)


class ServerCase(unittest.TestCase):
    def setUp(self):
        tmp = tempfile.mkdtemp(prefix="xs-")     # short: AF_UNIX paths are limited
        self.addCleanup(shutil.rmtree, tmp)
        self.path = os.path.join(tmp, "socket")
        self.server = XenStoreServer(reactor, self.path)
        self.store = self.server.store
        self.server.listen()
        self.addCleanup(self.server.stop)
        self.env = dict(os.environ, XENSTORED_PATH=self.path)

    def tool(self, name, *args):
        return utils.getProcessOutputAndValue(shutil.which(name) or name, args, env=self.env)

    @defer.inlineCallbacks
    def ok(self, name, *args):
        out, err, code = yield self.tool(name, *args)
        self.assertEqual(code, 0, (name, args, err))
        return out.decode()

    def raw(self, sock=None):
        if sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(self.path)
        self.addCleanup(sock.close)
        return Raw(sock)


class RealToolTests(ServerCase):
    skip = NO_TOOLS

    @defer.inlineCallbacks
    def test_write_then_read(self):
        yield self.ok("xenstore-write", "/vm/name", "web", "/vm/memory", "1024")
        self.assertEqual(self.store.read(DOM0, "/vm/name"), b"web")
        self.assertEqual((yield self.ok("xenstore-read", "/vm/memory")), "1024\n")
        out, err, code = yield self.tool("xenstore-read", "/vm/missing")
        self.assertNotEqual(code, 0)
        self.assertEqual((yield self.ok("xenstore-exists", "/vm/name")), "")

    @defer.inlineCallbacks
    def test_ls_output(self):
        self.store.write(DOM0, "/local/domain/3/name", b"guest")
        self.store.set_perms(DOM0, "/local/domain/3", ["n3", "r0"])
        self.store.write(DOM0, "/local/domain/3/memory/target", b"65536")
        out = yield self.ok("xenstore-ls", "/local/domain")
        self.assertEqual(out, '3 = ""\n name = "guest"\n memory = ""\n  target = "65536"\n')
        out = yield self.ok("xenstore-ls", "-f", "/local/domain/3")
        self.assertEqual(out.splitlines(), ['/local/domain/3/name = "guest"',
                                            '/local/domain/3/memory = ""',
                                            '/local/domain/3/memory/target = "65536"'])
        out = yield self.ok("xenstore-ls", "-p", "/local/domain")
        self.assertTrue(out.splitlines()[0].endswith("(n3,r0)"), out)

    @defer.inlineCallbacks
    def test_long_directory_is_read_in_parts(self):
        names = ["child-%06d" % i for i in range(600)]      # ~7 KiB of names
        for name in names:
            self.store.write(DOM0, "/big/" + name, b"")
        out = yield self.ok("xenstore-list", "/big")
        self.assertEqual(out.split(), names)

    @defer.inlineCallbacks
    def test_watch_sees_a_change(self):
        watcher = _Lines()
        reactor.spawnProcess(watcher, "timeout", ["timeout", "10", shutil.which("xenstore-watch"),
                                                  "-n", "2", "/watched"], env=self.env)
        yield watcher.first                      # registered: it fired once
        yield self.ok("xenstore-write", "/watched/x", "1")
        code = yield watcher.done
        self.assertEqual(code, 0)
        self.assertEqual(watcher.out.decode().split(), ["/watched", "/watched/x"])

    @defer.inlineCallbacks
    def test_rm_and_chmod(self):
        self.store.write(DOM0, "/r/a/b", b"")
        yield self.ok("xenstore-rm", "/r/a")
        self.assertEqual(self.store.directory(DOM0, "/r"), [])
        self.store.write(DOM0, "/c", b"")
        yield self.ok("xenstore-chmod", "/c", "n5", "r6")
        self.assertEqual(self.store.get_perms(DOM0, "/c"), ["n5", "r6"])
        self.assertEqual((yield self.ok("xenstore-ls", "-p", "/")).count("(n5,r6)"), 1)


class StandaloneTests(ServerCase):
    skip = NO_TOOLS

    @defer.inlineCallbacks
    def test_python_m_xenclone_xenstore(self):
        path = self.path + "-standalone"
        proc = _Lines()
        transport = reactor.spawnProcess(
            proc, sys.executable, [sys.executable, "-m", "xenclone.xenstore", "--socket", path],
            env=dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")))
        try:
            for _ in range(500):
                if os.path.exists(path):
                    break
                yield task.deferLater(reactor, 0.01, lambda: None)
            self.env["XENSTORED_PATH"] = path
            yield self.ok("xenstore-write", "/standalone", "yes")
            self.assertEqual((yield self.ok("xenstore-read", "/standalone")), "yes\n")
            self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        finally:
            transport.signalProcess("TERM")
        yield proc.done


class PyxsTests(ServerCase):
    def test_pyxs(self):
        from pyxs import Client
        from pyxs.exceptions import PyXSError

        def session():
            with Client(unix_socket_path=self.path) as c:
                c.write(b"/p/q", b"v1")
                c.transaction()
                c.write(b"/p/r", b"in-tx")
                committed = c.commit()
                with c.monitor() as m:
                    m.watch(b"/p", b"tok")
                    events = m.wait()
                    first = next(events)
                    c.write(b"/p/s", b"1")
                    second = next(events)
                try:
                    c.read(b"/nope")
                except PyXSError as e:
                    missing = e.args[0]
                return (c.read(b"/p/q"), c.list(b"/p"), c.get_perms(b"/p/q"), committed,
                        first, second, missing, c.get_domain_path(3))

        def check(r):
            self.assertEqual(r[:4], (b"v1", [b"q", b"r", b"s"], [b"n0"], True))
            self.assertEqual([tuple(e) for e in r[4:6]], [(b"/p", b"tok"), (b"/p/s", b"tok")])
            self.assertEqual(r[6:], (2, b"/local/domain/3"))
            self.assertEqual(self.store.read(DOM0, "/p/s"), b"1")
        return threads.deferToThread(session).addCallback(check)


class GuestTests(ServerCase):
    def setUp(self):
        ServerCase.setUp(self)
        for domid in (5, 6):
            home = "/local/domain/%d" % domid
            self.store.mkdir(DOM0, home)
            self.store.set_perms(DOM0, home, ["n%d" % domid])
            self.store.write(DOM0, home + "/name", b"dom%d" % domid)    # inherits
        self.store.write(DOM0, "/local/domain/5/console", b"")
        self.store.set_perms(DOM0, "/local/domain/5/console", ["n0", "r5"])

    def test_guest_is_confined(self):
        guest = self.raw(self.server.connection_for_domain(5))

        def session():
            return [
                guest.call(Op.READ, "/local/domain/6/name"),
                guest.call(Op.DIRECTORY, "/local/domain/6"),
                guest.call(Op.READ, "/local/domain/6/missing"),
                guest.call(Op.DIRECTORY, "/local/domain"),
                guest.call(Op.READ, "/tool"),
                guest.call(Op.WRITE, payload=b"/local/domain/6/x\0v"),
                guest.call(Op.WRITE, payload=b"console/x\0v"),
                guest.call(Op.READ, "console"),
                guest.call(Op.WRITE, payload=b"data/x\0mine"),
                guest.call(Op.READ, "/local/domain/5/data/x"),
                guest.call(Op.DIRECTORY, "data"),
                guest.call(Op.INTRODUCE, "7", "0", "0"),
                guest.call(Op.SET_PERMS, "data/x", "n6"),
            ]

        def check(replies):
            self.assertEqual(replies, [
                ("error", "EACCES"), ("error", "EACCES"), ("error", "EACCES"),
                ("error", "EACCES"), ("error", "EACCES"), ("error", "EACCES"),
                ("error", "EACCES"), ("ok", b""),
                ("ok", b"OK\0"), ("ok", b"mine"), ("ok", b"x\0"),
                ("error", "EACCES"), ("error", "EPERM")])
            self.assertEqual(self.store.get_perms(DOM0, "/local/domain/5/data/x"), ["n5"])
        return threads.deferToThread(session).addCallback(check)

    def test_release_disconnects_the_guest(self):
        guest = self.raw(self.server.connection_for_domain(5))
        dom0 = self.raw()

        def session():
            replies = [dom0.call(Op.WATCH, "@releaseDomain", "r"),
                       dom0.call(Op.INTRODUCE, "5", "0", "0"),
                       guest.call(Op.READ, "name"),
                       dom0.call(Op.RELEASE, "5"),
                       dom0.call(Op.IS_DOMAIN_INTRODUCED, "5")]
            return replies, guest.closed(), dom0.events

        def check(result):
            replies, closed, events = result
            self.assertEqual([r[0] for r in replies], ["ok"] * 5)
            self.assertEqual(replies[-1][1], b"F\0")
            self.assertTrue(closed)
            self.assertEqual(events, [["@releaseDomain", "r"]] * 2)
        return threads.deferToThread(session).addCallback(check)


class RobustnessTests(ServerCase):
    def _oversized(self, victim):
        bystander = self.raw()

        def session():
            first = victim.call(Op.READ, "/tool")
            victim.sock.sendall(HEADER.pack(Op.WRITE, 9, 0, 5000) + b"x" * 5000)
            return first, victim.closed(), bystander.call(Op.READ, "/tool")

        def check(result):
            first, closed, other = result
            self.assertIn(first[0], ("ok", "error"))
            self.assertTrue(closed)
            self.assertEqual(other, ("ok", b""))
        return threads.deferToThread(session).addCallback(check)

    def test_oversized_message_closes_only_that_dom0_connection(self):
        return self._oversized(self.raw())

    def test_oversized_message_closes_only_that_guest_connection(self):
        return self._oversized(self.raw(self.server.connection_for_domain(5)))

    def test_messages_split_across_reads(self):
        conn = self.raw()
        self.store.write(DOM0, "/split", b"whole")
        data = Message(Op.READ, 7, 0, strings("/split")).encode() * 2

        def session():
            for i in range(len(data)):
                conn.sock.sendall(data[i:i + 1])
            return conn.next(), conn.next()

        def check(replies):
            self.assertEqual([(m.type, m.req_id, m.payload) for m in replies],
                             [(Op.READ, 7, b"whole")] * 2)
        return threads.deferToThread(session).addCallback(check)

    def test_malformed_requests_get_errors(self):
        conn = self.raw()

        def session():
            return [conn.call(999, "x"),
                    conn.call(Op.READ, payload=b"/\xff\0"),
                    conn.call(Op.WRITE, payload=b"/no-value"),
                    conn.call(Op.WATCH, "/only-path"),
                    conn.call(Op.TRANSACTION_END, "T", tx=42),
                    conn.call(Op.READ, "/tool")]

        def check(replies):
            self.assertEqual(replies, [("error", "EINVAL")] * 4 + [("error", "ENOENT"), ("ok", b"")])
        return threads.deferToThread(session).addCallback(check)
