"""``twistd xenclone``: options and the service maker."""

import faulthandler
import signal
import sys

from twisted.python import usage

from xenclone.config import ConfigError, load_daemon_config
from xenclone.config_file import config_path


class Options(usage.Options):
    optParameters = [["config", "c", None, "xenclone.conf (xl.cfg syntax); default: "
                      "$XENCLONE_CONFIG, else /etc/xen/xenclone.conf if it exists, "
                      "else built-in defaults"]]

    def postOptions(self):
        try:
            self["settings"] = load_daemon_config(config_path(self["config"]))
        except (ConfigError, OSError) as e:
            raise usage.UsageError(str(e))


def makeService(options):
    from twisted.internet import reactor

    from xenclone import daemon_lock
    from xenclone.daemon_log import LevelFilteredDaemon, twistd_observer
    from xenclone.service import make_service
    settings = options["settings"]
    try:
        locks = daemon_lock.take(settings)
    except (daemon_lock.AlreadyRunning, OSError) as e:
        # Before anything is touched: no socket, no helper, no state.
        print("xenclone: cannot start: %s" % e, file=sys.stderr)
        sys.exit(2)
    # An operator's (or the rig's) look inside a daemon that seems stuck:
    # kill -USR2 writes every thread's stack to stderr (the journal).
    faulthandler.register(signal.SIGUSR2, file=sys.__stderr__, all_threads=True)
    tree = make_service(settings, reactor)
    daemon_lock.LockHolder(locks).setServiceParent(tree)
    # options.parent: twistd's own options (--logfile, --syslog, --nodaemon).
    return LevelFilteredDaemon(tree, settings["log_level"],
                               lambda: twistd_observer(options.parent))
