"""The VMM host process: its socket, for the daemon that started it.

    python -m xenclone.backends.kvm.vmmhost_main --socket PATH
        [--guest-kernel F] [--xenstore-dir D]

One VMM host per socket (``helper_gate.one_server``); a link is served once
it said hello with this start's secret (``helper_gate``), and the newest
such link gets the VMs' events.
"""

import argparse
import sys

from twisted.internet.protocol import Factory

from xenclone.backends.kvm.vmmhost import VmmHost, default_guest_kernel
from xenclone.helper_gate import GatedLink, one_server, take_secret


class _Factory(Factory):
    def __init__(self, host, secret):
        self.host = host
        self.secret = secret

    def buildProtocol(self, addr):
        return GatedLink(self.host, self.secret, on_trusted=self._trusted)

    def _trusted(self, proto):
        self.host.link = proto   # the newest daemon connection gets events


def main(argv=None):
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    parser = argparse.ArgumentParser(prog="xenclone-vmmhost")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--guest-kernel", default=default_guest_kernel())
    parser.add_argument("--xenstore-dir", help="the XenStore server's per-domain sockets")
    args = parser.parse_args(argv)
    secret = take_secret()
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    try:
        one_server(args.socket)
    except OSError as e:
        print("VMM host: cannot start: %s" % e, file=sys.stderr)
        return 1
    host = VmmHost(reactor, args.guest_kernel, args.xenstore_dir)
    reactor.listenUNIX(args.socket, _Factory(host, secret), mode=0o600)
    reactor.run()


if __name__ == "__main__":
    sys.exit(main())
