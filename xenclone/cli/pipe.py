"""A closed output pipe ends the command quietly (``xenclone top | head``).

Python raises BrokenPipeError where a C tool such as xl would just die of
SIGPIPE; the command ends the same way: no message, exit status 141
(128 + SIGPIPE) as a shell reports for xl.  stdout is pointed at /dev/null
first, so the interpreter's last flush at exit cannot raise again.
"""

import os
import signal
import sys

EXIT_PIPE = 128 + signal.SIGPIPE


def closed():
    """Silence stdout for good; the exit code to return."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):     # no real stdout (a test's StringIO): nothing to flush
        pass
    return EXIT_PIPE
