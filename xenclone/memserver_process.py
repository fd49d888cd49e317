"""The memory server process: parse the command line, make the image
store, then serve it (``memserver/server.py``) until stopped.

    python -m xenclone.memserver_process --dir DIR --socket PATH
        [--tcp HOST:PORT --token-file F --cert F --key F
         --max-links N --max-unauth-links N --hello-timeout S --stall-timeout S]
        [--xen [--server-domain-mib N --server-kernel F]]

The store is plain (images in dom0 memfds) unless ``--xen``: then the Xen
backend's, which reads masters by domid and may keep images in a
memory-server domain.  This module wires the floors together, so the
memory server itself never imports a backend.
"""

import argparse
import os
import sys

from twisted.internet import defer
from twisted.logger import Logger

from xenclone.helper_gate import take_secret
from xenclone.memserver.remote_link import LinkLimits
from xenclone.memserver.server import serve, tls_options
from xenclone.memserver.store import ImageStore
from xenclone.wire import WireError

log = Logger(namespace="xenclone.memserver")

READY = "memory server ready"       # the log line helpers wait for
DEFAULT_LIMITS = LinkLimits()


def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m xenclone.memserver_process",
                                description="Serve blessed images' pages.")
    p.add_argument("--dir", required=True, help="image store directory")
    p.add_argument("--socket", required=True, help="local Unix socket path")
    p.add_argument("--tcp", metavar="HOST:PORT", help="also serve pages over TLS")
    p.add_argument("--token-file", help="access token for TCP clients")
    p.add_argument("--cert", help="TLS certificate (PEM); made with a CA beside it if absent")
    p.add_argument("--key", help="TLS private key (PEM)")
    p.add_argument("--max-links", type=int, default=DEFAULT_LIMITS.max_links, metavar="N",
                   help="most TLS links open at once")
    p.add_argument("--max-unauth-links", type=int, default=DEFAULT_LIMITS.max_unauth,
                   metavar="N", help="most TLS links open that have not said hello")
    p.add_argument("--hello-timeout", type=float, default=DEFAULT_LIMITS.hello_timeout,
                   metavar="S", help="seconds a TLS link has to say hello")
    p.add_argument("--stall-timeout", type=float, default=DEFAULT_LIMITS.stall_timeout,
                   metavar="S", help="seconds a TLS peer may leave its replies unread")
    p.add_argument("--xen", action="store_true", help="bless Xen domains by domid")
    p.add_argument("--server-domain-mib", type=int, default=0, metavar="N",
                   help="keep images in a memory-server domain of N MiB (Xen)")
    p.add_argument("--server-kernel", help="the server domain's (never run) PVH kernel")
    a = p.parse_args(argv)
    a.tcp_addr = None
    if a.tcp:
        host, _, port = a.tcp.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            p.error("--tcp wants HOST:PORT, got %r" % a.tcp)
        if not (a.token_file and a.cert and a.key):
            p.error("--tcp needs --token-file, --cert and --key")
        try:
            with open(a.token_file, "rb") as f:
                a.token = f.read().strip()
        except OSError as e:
            p.error("cannot read token file: %s" % e.strerror)
        if len(a.token) < 16:
            p.error("the token in %s is shorter than 16 bytes" % a.token_file)
        a.tcp_addr = (host.strip("[]"), int(port))
    elif a.token_file or a.cert or a.key:
        p.error("--token-file, --cert and --key only go with --tcp")
    if min(a.max_links, a.max_unauth_links) < 1 or min(a.hello_timeout, a.stall_timeout) <= 0:
        p.error("link caps must be at least 1 and timeouts above 0")
    a.limits = LinkLimits(a.max_links, a.max_unauth_links, a.hello_timeout, a.stall_timeout)
    if a.server_domain_mib and not (a.xen and a.server_kernel):
        p.error("--server-domain-mib needs --xen and --server-kernel")
    return a


def _make_store(reactor, args):
    """(store, server-domain life or None): images in dom0, or on Xen the
    backend's store, which blesses domains by domid."""
    if not args.xen:
        return ImageStore(args.dir), None
    from xenclone.backends.xen.server_domain_life import xen_image_store
    return xen_image_store(reactor, args.dir, args.server_domain_mib, args.server_kernel)


def main(argv=None):
    args = _parse(argv)
    secret = take_secret()
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)

    tls = None
    try:
        store, life = _make_store(reactor, args)
        if args.tcp_addr:
            if not os.path.exists(args.cert) and not os.path.exists(args.key):
                from xenclone.memserver.tls import write_server_files
                ca = os.path.join(os.path.dirname(os.path.abspath(args.cert)), "ca.pem")
                write_server_files(args.cert, args.key, ca, [args.tcp_addr[0], "localhost"])
                log.info("made a TLS certificate; clients must trust {ca}", ca=ca)
            tls = tls_options(args.cert, args.key)
    except Exception as e:
        print("memory server: cannot start: %s" % (e,), file=sys.stderr)
        return 1

    status = []

    @defer.inlineCallbacks
    def start():
        if life is not None:
            # Before the images load: those in a server domain that still
            # runs are kept, those of one that is gone are dropped.
            try:
                yield life.start()
            except WireError as e:
                life.error = str(e)
                log.critical("no memory-server domain: {why}", why=life.error)
        for name, why in store.load_all():
            log.error("image {image_id} not loaded: {why}", image_id=name, why=why)
        log.info("loaded {count} images from {dir}", count=len(store.images()), dir=args.dir)
        ports = yield serve(reactor, store, args.socket, args.tcp_addr,
                            getattr(args, "token", None), tls, life, args.limits, secret)
        log.info(READY + " on {where}", where=", ".join(str(p.getHost()) for p in ports))

    def failed(f):
        log.critical("cannot start: {why}", why=f.getErrorMessage())
        status.append(1)
        reactor.stop()

    reactor.callWhenRunning(lambda: start().addErrback(failed))
    reactor.run()
    return status[0] if status else 0


if __name__ == "__main__":
    sys.exit(main())
