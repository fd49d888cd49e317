"""A blocking QMP client: enough to drive QEMU's migration from the bench."""

import json
import socket
import time


class QMPError(Exception):
    pass


class QMP:
    def __init__(self, path, timeout=30.0):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.005)
        self.sock.settimeout(timeout)
        self.file = self.sock.makefile("rb")
        self._read()                    # the greeting
        self.execute("qmp_capabilities")

    def _read(self):
        line = self.file.readline()
        if not line:
            raise QMPError("QEMU closed its monitor")
        return json.loads(line)

    def execute(self, command, **arguments):
        msg = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            reply = self._read()
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise QMPError("%s: %s" % (command, reply["error"].get("desc")))
            # an event: ignored, the bench polls state instead

    def capabilities(self, **caps):
        self.execute("migrate-set-capabilities", capabilities=[
            {"capability": name.replace("_", "-"), "state": on} for name, on in caps.items()])

    def wait_migration(self, states=("completed",), timeout=600.0, poll=0.002):
        """query-migrate until its status is one of ``states``."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.execute("query-migrate")
            status = info.get("status")
            if status in states:
                return info
            if status in ("failed", "cancelled"):
                raise QMPError("migration %s: %s" % (status, info.get("error-desc")))
            if time.monotonic() > deadline:
                raise QMPError("migration still %s after %d s" % (status, timeout))
            time.sleep(poll)

    def close(self):
        self.file.close()
        self.sock.close()
