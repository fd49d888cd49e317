"""``twistd xenclone``: options and the service maker."""

import sys

from twisted.python import usage

from xenclone.config import ConfigError, load_daemon_config


class Options(usage.Options):
    optParameters = [["config", "c", None, "xenclone.conf (xl.cfg syntax); default: built-in defaults"]]

    def postOptions(self):
        try:
            self["settings"] = load_daemon_config(self["config"])
        except (ConfigError, OSError) as e:
            raise usage.UsageError(str(e))


def makeService(options):
    from twisted.internet import reactor

    from xenclone import daemon_lock
    from xenclone.service import make_service
    try:
        locks = daemon_lock.take(options["settings"])
    except (daemon_lock.AlreadyRunning, OSError) as e:
        # Before anything is touched: no socket, no helper, no state.
        print("xenclone: cannot start: %s" % e, file=sys.stderr)
        sys.exit(2)
    top = make_service(options["settings"], reactor)
    daemon_lock.LockHolder(locks).setServiceParent(top)
    return top
