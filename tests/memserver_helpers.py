"""Test helpers for the memory server: captures, a server subprocess, TLS
files, and (run as a script) a remote fetch client for netns tests."""

import hashlib
import json
import os
import socket
import sys

from twisted.internet import defer
from twisted.internet.protocol import ProcessProtocol

from xenclone.image import Capture
from xenclone.interfaces import PAGE_SIZE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
READY = b"memory server ready"


def page_pattern(pfn):
    """The known content of non-zero page ``pfn``: its number, repeated."""
    return (pfn + 1).to_bytes(8, "little") * (PAGE_SIZE // 8)


def make_capture(npages, zero_every=16, zero_runs=(), name="cap"):
    """A Capture whose pages ``pfn % zero_every == 0`` or in ``zero_runs``
    ((first, count) pairs) are all zero; the rest follow ``page_pattern``."""
    zero = set(range(0, npages, zero_every))
    for first, count in zero_runs:
        zero.update(range(first, first + count))
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.ftruncate(fd, npages * PAGE_SIZE)
    batch = 256
    for base in range(0, npages, batch):
        chunk = b"".join(bytes(PAGE_SIZE) if p in zero else page_pattern(p)
                         for p in range(base, min(npages, base + batch)))
        os.pwrite(fd, chunk, base * PAGE_SIZE)
    cap = Capture(arch="test-arch", vcpu_state=b"\x00regs\xff" * 10, mem_fd=fd,
                  npages=npages, meta={"master": "m1", "n": npages})
    return cap, zero


def expected_page(pfn, zero):
    return bytes(PAGE_SIZE) if pfn in zero else page_pattern(pfn)


def digest_fd(fd, npages):
    return hashlib.sha256(os.pread(fd, npages * PAGE_SIZE, 0)).hexdigest()


def free_port(host="127.0.0.1"):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerProcess(ProcessProtocol):
    """A memory server subprocess; ``ready`` fires once it listens."""

    def __init__(self):
        self.ready = defer.Deferred()
        self.ended = defer.Deferred()
        self.output = b""
        self.running = True

    def childDataReceived(self, fd, data):
        self.output += data
        if READY in self.output and not self.ready.called:
            self.ready.callback(self)

    def processEnded(self, reason):
        self.running = False
        if not self.ready.called:
            out = self.output.decode(errors="replace")
            self.ready.errback(RuntimeError("server exited:\n" + out))
        self.ended.callback(reason.value.exitCode)

    def kill(self, signal="KILL"):
        if self.running:
            self.transport.signalProcess(signal)
        return self.ended


def server_argv(directory, sock, tcp=None, token_file=None, cert=None, key=None):
    argv = [sys.executable, "-m", "xenclone.memserver_process", "--dir", directory,
            "--socket", sock]
    if tcp:
        argv += ["--tcp", tcp, "--token-file", token_file, "--cert", cert, "--key", key]
    return argv


def spawn_server(reactor, testcase, argv, timeout=30):
    """Start ``argv``; Deferred[ServerProcess] once ready.  Killed at cleanup."""
    proc = ServerProcess()
    env = dict(os.environ, PYTHONPATH=ROOT)
    reactor.spawnProcess(proc, argv[0], argv, env=env, path=ROOT)
    testcase.addCleanup(proc.kill)
    return proc.ready.addTimeout(timeout, reactor)


def tls_files(directory, hosts, token=b"s3cret-token-0123456789"):
    """(cert, key, ca, token_file) paths in ``directory``."""
    from xenclone.memserver.tls import write_server_files
    os.makedirs(directory, exist_ok=True)
    cert, key, ca, tok = (os.path.join(directory, n)
                          for n in ("cert.pem", "key.pem", "ca.pem", "token"))
    write_server_files(cert, key, ca, hosts)
    with open(tok, "wb") as f:
        f.write(token + b"\n")
    return cert, key, ca, tok


def _remote_fetch(host, port, token_file, ca, image, npages):
    """Script mode: fetch every page over TLS, print one JSON line of digests."""
    from twisted.internet import reactor, task
    from xenclone.memserver.client import RemotePageSource

    with open(token_file) as f, open(ca, "rb") as c:
        src = RemotePageSource(reactor, host, int(port), f.read().strip(), c.read())

    @defer.inlineCallbacks
    def run(_):
        digests = []
        for pfn in range(0, int(npages), 64):
            data = yield src.fetch(image, pfn, min(64, int(npages) - pfn))
            digests += [hashlib.sha256(data[i:i + PAGE_SIZE]).hexdigest()
                        for i in range(0, len(data), PAGE_SIZE)]
        print(json.dumps({"digests": digests}))
        src.close()

    task.react(run)


if __name__ == "__main__":
    _remote_fetch(*sys.argv[1:])
