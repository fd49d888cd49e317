"""The command's exit codes and its one error type.

    0 done, 1 the operation failed, 2 bad usage or config,
    3 the daemon cannot be reached
"""

EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3


class CliError(Exception):
    """Printed as ``xenclone: <message>``, then exit ``code``: never a traceback."""

    def __init__(self, message, code=EXIT_FAILED):
        super().__init__(message)
        self.code = code
