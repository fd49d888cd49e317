"""systemd's readiness protocol (sd_notify), in plain Python.

With ``Type=notify`` systemd passes ``$NOTIFY_SOCKET``, a Unix datagram
socket (a leading ``@`` is the abstract namespace); the daemon sends
``READY=1`` there once its control socket answers, ``STOPPING=1`` when it
stops.  Without the variable (not under systemd) nothing is sent.
"""

import os
import socket


def notify(state, environ=None):
    """Send ``state`` (e.g. ``"READY=1\\nSTATUS=..."``); True if sent."""
    environ = os.environ if environ is None else environ
    path = environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(state.encode(), path)
        except OSError:
            return False        # readiness is a courtesy: the daemon runs on
    return True
