"""Run the embedded XenStore server on its own.

    python -m xenclone.xenstore --socket PATH [--domain-dir DIR]

Point the real tools at it with ``XENSTORED_PATH=PATH xenstore-ls``.
"""

import argparse
import sys

from twisted.logger import LogLevel, LogLevelFilterPredicate, FilteringLogObserver
from twisted.logger import globalLogBeginner, textFileLogObserver

from xenclone.xenstore.server import XenStoreServer


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m xenclone.xenstore",
                                     description="the embedded XenStore server")
    parser.add_argument("--socket", required=True, help="Unix socket path to listen on")
    parser.add_argument("--domain-dir", help="where INTRODUCE opens each guest's socket")
    parser.add_argument("--debug", action="store_true", help="log every failed request")
    args = parser.parse_args(argv)

    from twisted.internet import reactor
    level = LogLevel.debug if args.debug else LogLevel.info
    globalLogBeginner.beginLoggingTo([FilteringLogObserver(
        textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(level)])])
    server = XenStoreServer(reactor, args.socket, domain_dir=args.domain_dir)
    server.listen()
    reactor.addSystemEventTrigger("before", "shutdown", server.stop)
    reactor.run()


if __name__ == "__main__":
    main()
