"""The memory server: store, local socket with memfd passing, TLS port."""

import errno
import hashlib
import mmap
import os
import shutil
import stat
import sys
import tempfile

import attr
from twisted.internet import defer, reactor, ssl
from twisted.internet.endpoints import SSL4ClientEndpoint, UNIXClientEndpoint, connectProtocol
from twisted.trial import unittest

from xenclone.image import Capture
from xenclone.interfaces import PAGE_SIZE
from xenclone.memserver.client import MemoryServerClient, RemotePageSource
from xenclone.memserver.mirror import MirroringMemoryServer
from xenclone.memserver.store import ImageStore
from xenclone.wire import ConnectionLost, FrameProtocol, WireError

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import memserver_helpers as H  # noqa: E402

# 1100 pages: crosses two 512-page chunks, one chunk-sized zero run (an
# all-zero chunk), and zero pages at both ends.
NPAGES = 1100
ZERO_RUNS = ((512, 512), (NPAGES - 3, 3))


def _pages_ok(testcase, data, first, zero):
    for i in range(len(data) // PAGE_SIZE):
        testcase.assertEqual(data[i * PAGE_SIZE:(i + 1) * PAGE_SIZE],
                             H.expected_page(first + i, zero), "page %d" % (first + i))


class StoreTests(unittest.TestCase):
    def setUp(self):
        self.dir = self.mktemp()
        self.store = ImageStore(self.dir)
        self.addCleanup(lambda: self.store.close())
        self.cap, self.zero = H.make_capture(NPAGES, zero_runs=ZERO_RUNS)
        self.addCleanup(os.close, self.cap.mem_fd)

    def test_round_trip_survives_restart(self):
        info = self.store.put("img1", self.cap)
        self.assertEqual(info["npages"], NPAGES)
        self.assertEqual(info["nonzero_pages"], NPAGES - len(self.zero))
        self.assertEqual(len(info["generation"]), 12)
        want = H.digest_fd(self.cap.mem_fd, NPAGES)
        self.store.close()

        self.store = ImageStore(self.dir)
        self.assertEqual(self.store.load_all(), [])
        img = self.store.open("img1")
        self.addCleanup(os.close, img.mem_fd)
        self.assertEqual(H.digest_fd(img.mem_fd, NPAGES), want)
        self.assertEqual((img.generation, img.arch, img.vcpu_state, img.meta),
                         (info["generation"], "test-arch", self.cap.vcpu_state, self.cap.meta))
        self.assertEqual([p for p in range(NPAGES) if img.zero[p]], sorted(self.zero))
        _pages_ok(self, self.store.fetch("img1", NPAGES - 64, 64), NPAGES - 64, self.zero)

    def test_zero_pages_are_holes(self):
        self.store.put("img1", self.cap)
        fd = self.store.memfd("img1")
        # The all-zero run at 512..1023 is a hole: data resumes at page 1025.
        self.assertEqual(os.lseek(fd, 512 * PAGE_SIZE, os.SEEK_DATA), 1025 * PAGE_SIZE)
        self.assertEqual(os.lseek(fd, 1 * PAGE_SIZE, os.SEEK_HOLE), 16 * PAGE_SIZE)
        resident = os.fstat(fd).st_blocks * 512
        self.assertEqual(resident, (NPAGES - len(self.zero)) * PAGE_SIZE)
        disk = os.stat(os.path.join(self.dir, "img1", "memory"))
        self.assertLess(disk.st_blocks * 512, disk.st_size)

    def test_memfd_cannot_be_resized(self):
        self.store.put("img1", self.cap)
        e = self.assertRaises(OSError, os.ftruncate, self.store.memfd("img1"), PAGE_SIZE)
        self.assertEqual(e.errno, errno.EPERM)

    def test_errors(self):
        self.store.put("img1", self.cap)
        info, zero = self.store.describe("img1")
        crcs = self.store.crcs("img1", 0, NPAGES)
        self.store.mirror("mirror", info, info["vcpu_state"], zero, "h:1", crcs)
        cases = [
            ("unknown-image", self.store.fetch, ("nope", 0, 1)),
            ("unknown-image", self.store.open, ("nope",)),
            ("unknown-image", self.store.discard, ("nope",)),
            ("out-of-range", self.store.fetch, ("img1", 0, 0)),
            ("out-of-range", self.store.fetch, ("img1", 0, 257)),
            ("out-of-range", self.store.fetch, ("img1", -1, 1)),
            ("out-of-range", self.store.fetch, ("img1", NPAGES - 1, 2)),
            ("out-of-range", self.store.fetch, ("img1", "0", 1)),
            ("out-of-range", self.store.fetch, ("img1", 0, True)),
            ("out-of-range", self.store.fetch, ("img1", 0.0, 1)),
            ("bad-name", self.store.put, ("../etc", self.cap)),
            ("bad-name", self.store.put, (".hidden", self.cap)),
            ("bad-name", self.store.put, ("", self.cap)),
            ("exists", self.store.put, ("img1", self.cap)),
            ("bad-request", self.store.put, ("big", Capture(
                arch="a", vcpu_state=b"", mem_fd=self.cap.mem_fd, npages=NPAGES + 1))),
            ("bad-request", self.store.mirror, ("m", {"npages": 2}, "", b"\0", "h:1", crcs)),
            ("bad-request", self.store.mirror, ("m", info, "not base64!", zero, "h:1", crcs)),
            ("bad-request", self.store.mirror, ("m", info, "", zero, "h:1", crcs[:-4])),
            ("bad-request", self.store.mirror, ("m", info, "", zero[:-1], "h:1", crcs)),
            ("bad-name", self.store.mirror, ("../m", info, "", zero, "h:1", crcs)),
            ("exists", self.store.mirror, ("img1", info, "", zero, "h:1", crcs)),
            ("out-of-range", self.store.crcs, ("img1", 1, NPAGES)),
            ("out-of-range", self.store.crcs, ("img1", 0, 0)),
            ("remote-image", self.store.fetch, ("mirror", 0, 1)),
            ("unknown-image", self.store.describe, ("mirror",)),
            ("stale-image", self.store.fetch, ("img1", 0, 1, "other-generation")),
        ]
        for code, fn, args in cases:
            e = self.assertRaises(WireError, fn, *args)
            self.assertEqual(e.code, code, (fn.__name__, args, str(e)))
        self.assertEqual(sorted(os.listdir(self.dir)), ["img1", "mirror"])

    def test_discard_removes_ram_and_disk(self):
        self.store.put("img1", self.cap)
        self.store.discard("img1")
        self.assertEqual(os.listdir(self.dir), [])
        self.assertEqual(self.store.images(), [])
        self.assertRaises(WireError, self.store.fetch, "img1", 0, 1)
        self.store.put("img1", self.cap)     # the name is free again

    def test_interrupted_bless_is_cleaned(self):
        os.mkdir(os.path.join(self.dir, ".tmp-half"))
        self.store.put("img1", self.cap)
        self.store.close()
        self.store = ImageStore(self.dir)
        self.assertEqual(self.store.load_all(), [])
        self.assertEqual(sorted(os.listdir(self.dir)), ["img1"])
        self.assertEqual([i["image_id"] for i in self.store.images()], ["img1"])


class _ServerCase(unittest.TestCase):
    timeout = 60

    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        # Unix socket paths are limited to 108 bytes: keep it short.
        sockdir = tempfile.mkdtemp(prefix="xcms-")
        self.addCleanup(shutil.rmtree, sockdir, True)
        self.sock = os.path.join(sockdir, "ms.sock")
        self.cap, self.zero = H.make_capture(NPAGES, zero_runs=ZERO_RUNS)
        self.addCleanup(os.close, self.cap.mem_fd)
        self.client = MemoryServerClient(reactor, UNIXClientEndpoint(reactor, self.sock))
        self.addCleanup(self.client.close)

    def start(self, **tcp):
        argv = H.server_argv(os.path.join(self.dir, "store"), self.sock, **tcp)
        return H.spawn_server(reactor, self, argv)


class LocalSocketTests(_ServerCase):
    @defer.inlineCallbacks
    def test_put_open_fetch_restart_discard(self):
        proc = yield self.start()
        self.assertEqual(stat.S_IMODE(os.stat(self.sock).st_mode), 0o600)
        info = yield self.client.put("img1", self.cap)
        self.assertEqual(info["nonzero_pages"], NPAGES - len(self.zero))
        want = H.digest_fd(self.cap.mem_fd, NPAGES)

        img = yield self.client.open("img1")
        self.addCleanup(os.close, img.mem_fd)
        m = mmap.mmap(img.mem_fd, NPAGES * PAGE_SIZE, mmap.MAP_PRIVATE)
        self.addCleanup(m.close)
        self.assertEqual(hashlib.sha256(m).hexdigest(), want)
        self.assertEqual(img.vcpu_state, self.cap.vcpu_state)
        self.assertEqual([p for p in range(NPAGES) if img.zero[p]], sorted(self.zero))
        data = yield self.client.fetch("img1", 1000, 64)
        _pages_ok(self, data, 1000, self.zero)

        yield proc.kill()
        e = yield self.assertFailure(self.client.images(), ConnectionLost)
        self.assertIn("cannot reach", str(e))
        yield self.start()
        self.assertEqual([i["generation"] for i in (yield self.client.images())],
                         [info["generation"]])
        img2 = yield self.client.open("img1")
        self.addCleanup(os.close, img2.mem_fd)
        self.assertEqual(H.digest_fd(img2.mem_fd, NPAGES), want)

        yield self.client.discard("img1")
        e = yield self.assertFailure(self.client.fetch("img1", 0, 1), WireError)
        self.assertEqual(e.code, "unknown-image")
        self.assertEqual(os.listdir(os.path.join(self.dir, "store")), [])

    @defer.inlineCallbacks
    def test_close_while_connecting_leaves_no_link(self):
        yield self.start()
        d = self.client.ping()          # connects: the link is not up yet
        yield self.client.close()
        yield self.assertFailure(d, ConnectionLost)

    @defer.inlineCallbacks
    def test_errors_reach_the_client(self):
        yield self.start()
        yield self.client.put("img1", self.cap)
        for d, code in [(self.client.put("img1", self.cap), "exists"),
                        (self.client.put("no/pe", self.cap), "bad-name"),
                        (self.client.fetch("img1", NPAGES, 1), "out-of-range"),
                        (self.client.open("nope"), "unknown-image"),
                        (self.client.request("put", name="x"), "bad-request"),
                        (self.client.request("frobnicate"), "unknown-op")]:
            e = yield self.assertFailure(d, WireError)
            self.assertEqual(e.code, code, str(e))
        yield self.client.ping()      # the link survived every error

    @defer.inlineCallbacks
    def test_no_server_domain_here(self):
        """Without Xen: status says none runs; start, stop and a bless by
        domid are refused, each saying why."""
        yield self.start()
        status = yield self.client.domain("status")
        self.assertEqual(status, {"running": False, "memory_mib": 0})
        for action in ("start", "stop"):
            e = yield self.assertFailure(self.client.domain(action), WireError)
            self.assertEqual(e.code, "no-server-domain")
            self.assertIn("memserver_domain_mib", str(e))
        by_domid = attr.evolve(self.cap, mem_fd=None, domid=5)
        e = yield self.assertFailure(self.client.put("img1", by_domid), WireError)
        self.assertEqual(e.code, "no-xen")
        e = yield self.assertFailure(self.client.request("put", fds=[self.cap.mem_fd],
                                                         domid=5, name="x"), WireError)
        self.assertEqual(e.code, "bad-request")

    def test_bad_arguments_exit_2(self):
        import subprocess
        for argv in (["--dir", "x"], ["--dir", "x", "--socket", "s", "--tcp", "nohost"],
                     ["--dir", "x", "--socket", "s", "--tcp", "h:1"]):
            r = subprocess.run([sys.executable, "-m", "xenclone.memserver_process"] + argv,
                               capture_output=True, cwd=H.ROOT, timeout=30)
            self.assertEqual(r.returncode, 2, argv)
            self.assertNotIn(b"Traceback", r.stderr)
            self.assertIn(b"error:", r.stderr)


class _TLSCase(_ServerCase):
    """A memory server with a TLS port, holding img1."""

    @defer.inlineCallbacks
    def setUp(self):
        super().setUp()
        self.cert, self.key, self.ca, tok = H.tls_files(os.path.join(self.dir, "tls"),
                                                        ["127.0.0.1"])
        self.token = open(tok).read().strip()
        self.port = H.free_port()
        self.proc = yield self.start(tcp="127.0.0.1:%d" % self.port, token_file=tok,
                                     cert=self.cert, key=self.key)
        yield self.client.put("img1", self.cap)

    def remote(self, token):
        src = RemotePageSource(reactor, "127.0.0.1", self.port, token, open(self.ca, "rb").read())
        self.addCleanup(src.close)
        return src


class TLSTests(_TLSCase):
    @defer.inlineCallbacks
    def raw(self):
        """A TLS link that has said nothing yet; ``closed`` fires on close."""
        closed = defer.Deferred()
        trust = ssl.Certificate.loadPEM(open(self.ca, "rb").read())
        opts = ssl.optionsForClientTLS("127.0.0.1", trustRoot=trust)
        proto = yield connectProtocol(SSL4ClientEndpoint(reactor, "127.0.0.1", self.port, opts),
                                      FrameProtocol(on_close=lambda _: closed.callback(None)))
        proto.closed = closed
        self.addCleanup(proto.transport.loseConnection)
        return proto

    @defer.inlineCallbacks
    def test_good_token_fetches_pages(self):
        src = self.remote(self.token)
        for pfn in (0, 500, NPAGES - 64):
            _pages_ok(self, (yield src.fetch("img1", pfn, 64)), pfn, self.zero)
        self.assertEqual([i["image_id"] for i in (yield src.images())], ["img1"])
        self.assertEqual((yield src.info("img1"))["npages"], NPAGES)

    @defer.inlineCallbacks
    def test_bad_token_refused_and_closed(self):
        e = yield self.assertFailure(self.remote("wrong-token").fetch("img1", 0, 1), WireError)
        self.assertEqual(e.code, "bad-token")
        proto = yield self.raw()
        e = yield self.assertFailure(proto.request("hello", token=self.token[:-1]), WireError)
        self.assertEqual(e.code, "bad-token")
        yield proto.closed.addTimeout(5, reactor)

    @defer.inlineCallbacks
    def test_nothing_before_hello_and_no_local_ops(self):
        proto = yield self.raw()
        e = yield self.assertFailure(proto.request("fetch", image="img1", pfn=0, count=1),
                                     WireError)
        self.assertEqual(e.code, "unauthenticated")
        yield proto.closed.addTimeout(5, reactor)
        proto = yield self.raw()
        yield proto.request("hello", token=self.token)
        for op in ("put", "open", "discard", "ping"):
            e = yield self.assertFailure(proto.request(op, image="img1"), WireError)
            self.assertEqual(e.code, "unknown-op")

    @defer.inlineCallbacks
    def test_bad_frames_close_only_their_link(self):
        src = self.remote(self.token)
        yield src.fetch("img1", 0, 1)
        for junk in (b"\xff\xff\xff\xff\x00\x00\x00\x00",          # oversized header
                     b"\x00\x00\x00\x03\x00\x00\x00\x00{{{",       # not JSON
                     b"\x00\x00\x00\x02\x00\x00\x00\x00[]"):       # not an object
            proto = yield self.raw()
            proto.transport.write(junk)
            yield proto.closed.addTimeout(5, reactor)
            _pages_ok(self, (yield src.fetch("img1", 1, 16)), 1, self.zero)

    @defer.inlineCallbacks
    def test_plain_tcp_gets_nothing(self):
        from twisted.internet.endpoints import TCP4ClientEndpoint
        closed = defer.Deferred()
        proto = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port),
                                      FrameProtocol(on_close=lambda _: closed.callback(None)))
        d = proto.request("hello", token=self.token)
        yield self.assertFailure(d, ConnectionLost)
        yield closed


class MirrorTests(_TLSCase):
    """Another host's image launched here: this host's own memory server
    (a second process) records it as a mirror, and its pages come over TLS."""

    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        sockdir = tempfile.mkdtemp(prefix="xcms-")
        self.addCleanup(shutil.rmtree, sockdir, True)
        self.here_sock = os.path.join(sockdir, "here.sock")
        self.here_dir = os.path.join(self.dir, "here")
        self.here_proc = yield self.start_here()
        here = MemoryServerClient(reactor, UNIXClientEndpoint(reactor, self.here_sock))
        self.addCleanup(here.close)
        self.remote_src = self.remote(self.token)
        self.servers = MirroringMemoryServer(here, self.remote_src)

    def start_here(self):
        return H.spawn_server(reactor, self, H.server_argv(self.here_dir, self.here_sock))

    @defer.inlineCallbacks
    def test_launching_a_remote_image_mirrors_it_and_fetches_over_tls(self):
        image = yield self.servers.open("img1")
        self.addCleanup(os.close, image.mem_fd)
        self.assertEqual(image.origin, {"server": self.remote_src.address, "image": "img1"})
        self.assertEqual([p for p in range(NPAGES) if image.zero[p]], sorted(self.zero))
        self.assertEqual(image.cached_pages(), [])        # pages come as clones fault
        _pages_ok(self, (yield self.servers.fetch("img1", 500, 64)), 500, self.zero)
        # Known here across a restart of this host's memory server.
        yield self.here_proc.kill()
        yield self.start_here()
        [listed] = yield self.servers.images()
        self.assertEqual((listed["image_id"], listed["origin"]["server"]),
                         ("img1", self.remote_src.address))
        # This host never serves a mirror's pages itself.
        e = yield self.assertFailure(self.servers.local.fetch("img1", 0, 1), WireError)
        self.assertEqual(e.code, "remote-image")

    @defer.inlineCallbacks
    def test_unknown_everywhere_and_stale_generation(self):
        e = yield self.assertFailure(self.servers.open("nope"), WireError)
        self.assertEqual(e.code, "unknown-image")
        self.assertIn(self.remote_src.address, str(e))
        image = yield self.servers.open("img1")
        os.close(image.mem_fd)
        # The remote image blessed again under its name: the mirror is stale.
        yield self.client.discard("img1")
        yield self.client.put("img1", self.cap)
        e = yield self.assertFailure(self.servers.fetch("img1", 1, 1), WireError)
        self.assertEqual(e.code, "stale-image")
