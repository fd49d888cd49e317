"""Which daemon config file the daemon and the command read.

    the file named (--config / -c)
    else $XENCLONE_CONFIG
    else /etc/xen/xenclone.conf, when it exists (as xl reads /etc/xen/xl.conf)
    else none: the built-in defaults

The daemon and ``xenclone`` resolve it the same way, so that a command
finds the control socket of a daemon started with the same file.
"""

import os

DEFAULT_PATH = "/etc/xen/xenclone.conf"
ENV = "XENCLONE_CONFIG"


def config_path(named=None, environ=None, default=None):
    """The path to read, or None for the built-in defaults."""
    environ = os.environ if environ is None else environ
    default = DEFAULT_PATH if default is None else default
    if named:
        return named
    if environ.get(ENV):
        return environ[ENV]     # named explicitly: a missing file is an error
    return default if os.path.exists(default) else None
