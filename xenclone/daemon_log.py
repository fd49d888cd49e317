"""The daemon's log under twistd, filtered by the config's ``log_level``.

twistd makes its log observer (``--logfile``, ``--syslog``) after the
plugin made the service, and takes an ``ILogObserver`` component of the
application instead if there is one.  So the service tree sits in a
``LevelFilteredDaemon`` that, when twistd adds it to the application,
gives it twistd's own observer behind a ``LogLevelFilterPredicate``:

    makeService -> LevelFilteredDaemon(tree, twistd options, level)
    twistd: setServiceParent(application) -> ILogObserver component
    twistd: AppLogger.start(application)  -> logs through the filter
"""

from twisted.application.service import MultiService
from twisted.logger import FilteringLogObserver, ILogObserver, LogLevel, LogLevelFilterPredicate


def level_filtered(observer, level_name):
    """``observer`` seeing only events at ``level_name`` or above."""
    level = LogLevel.levelWithName(level_name)
    return FilteringLogObserver(observer, [LogLevelFilterPredicate(defaultLogLevel=level)])


def twistd_observer(twistd_options):
    """The observer twistd would make from its own options."""
    from twisted.scripts._twistd_unix import UnixAppLogger
    return UnixAppLogger(twistd_options)._getLogObserver()


class LevelFilteredDaemon(MultiService):
    """Holds the daemon's tree; sets the application's log observer."""

    def __init__(self, tree, level_name, make_observer):
        super().__init__()
        self.level_name = level_name
        self.make_observer = make_observer
        tree.setServiceParent(self)

    def setServiceParent(self, parent):
        if hasattr(parent, "setComponent"):         # twistd's Application
            parent.setComponent(ILogObserver,
                                level_filtered(self.make_observer(), self.level_name))
        return super().setServiceParent(parent)
