"""The Xen backend against real Xen: the QEMU rig (rig/README.md).

Builds the rig (rig/build.sh; cached under /var/cache/xenclone-rig, so
only the first run pays for debootstrap), boots Xen 4.17 under QEMU with an
initramfs dom0, and runs rig/jobs/smoke.sh there: ``xl create`` of a PVH
domU, then the project's own shim from dom0's Python (probe, pause and HVM
context, a foreign map of the domU's page that holds the kernel banner).

It runs by default, as CI must; set XENCLONE_SKIP_RIG=1 to skip it (it
needs root, about 2.5 GiB of RAM for QEMU and a minute or two).
"""

import atexit
import functools
import json
import os
import shutil
import signal
import subprocess
import tempfile

from twisted.trial import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RIG = os.path.join(ROOT, "rig")
# Generous but bounded: from scratch (packages, debootstrap) takes about a
# minute here, a boot with the smoke job under a minute; a loaded CI machine
# may be several times slower.
BUILD_TIMEOUT = 900
BOOT_TIMEOUT = 600


def skip_reason():
    if os.environ.get("XENCLONE_SKIP_RIG") == "1":
        return "XENCLONE_SKIP_RIG=1: the real-Xen rig is skipped"
    return None


def _run(cmd, timeout):
    """Run ``cmd`` in its own session; on timeout kill the whole group
    (QEMU included), never just the script."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        rc, err = "timeout", err + "\n(killed after %d s)" % timeout
    return subprocess.CompletedProcess(cmd, rc, out, err)


@functools.cache
def rig_run():
    """Build and boot once per test run; every test reads the same result.

    Returns (build, boot, out directory, results or None).
    """
    build = _run([os.path.join(RIG, "build.sh")], BUILD_TIMEOUT)
    out = tempfile.mkdtemp(prefix="xenclone-rig-test.")
    if build.returncode != 0:
        return build, None, out, None
    # boot.sh ends QEMU itself at --timeout; ours is the backstop.
    boot = _run([os.path.join(RIG, "boot.sh"), "--no-build",
                 "--job", os.path.join(RIG, "jobs", "smoke.sh"),
                 "--out", out, "--timeout", str(BOOT_TIMEOUT - 60)],
                BOOT_TIMEOUT)
    results = None
    try:
        with open(os.path.join(out, "results.json")) as f:
            results = json.load(f)
    except (OSError, ValueError):
        pass
    if boot.returncode == 0 and results and results.get("ok"):
        # Keep the output only when something needs looking at.
        atexit.register(shutil.rmtree, out, True)
    return build, boot, out, results


class XenRigTests(unittest.TestCase):
    """Real Xen 4.17 in QEMU, driven by the project's shim from dom0."""

    def setUp(self):
        reason = skip_reason()
        if reason:
            raise unittest.SkipTest(reason)
        self.build, self.boot, self.out, self.results = rig_run()

    def _tail(self, proc):
        return "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])

    def requireResults(self):
        self.assertEqual(self.build.returncode, 0,
                         "rig/build.sh failed:\n" + self._tail(self.build))
        self.assertIsNotNone(
            self.results, "no results.json from the rig (output in %s):\n%s"
            % (self.out, self._tail(self.boot)))
        return self.results

    def test_smoke_job_passes(self):
        """The job exits 0 and every check it made passed."""
        results = self.requireResults()
        failed = [k for k, ok in results["checks"].items() if not ok]
        self.assertEqual(failed, [], "failed checks (output in %s)" % self.out)
        self.assertEqual(self.boot.returncode, 0,
                         "rig/boot.sh exited %s (output in %s):\n%s"
                         % (self.boot.returncode, self.out,
                            self._tail(self.boot)))

    def test_xen_version(self):
        probe = self.requireResults()["probe"]
        self.assertEqual(probe["xen"], "present")
        self.assertTrue(probe["version"].startswith("4.17"), probe["version"])
        self.assertIn("hap", probe["capabilities"])

    def test_stock_xen_has_no_mem_paging(self):
        """Debian's Xen is built without MEM_PAGING, and the probe says so."""
        self.assertIs(self.requireResults()["probe"]["mem_paging"], False)

    def test_pvh_domu_created(self):
        results = self.requireResults()
        domu = results["domu"]
        self.assertEqual(domu["type"], "pvh")
        self.assertGreater(domu["domid"], 0)
        self.assertIn(domu["domid"], [d["domid"] for d in results["domains"]])
        self.assertGreater(domu["hvm_context_bytes"], 0)

    def test_foreign_map(self):
        """dom0 maps the domU's frame and sees the guest kernel's banner."""
        fmap = self.requireResults()["foreign_map"]
        self.assertRegex(fmap["sha256"], "^[0-9a-f]{64}$")
        self.assertTrue(fmap["banner_seen"], fmap)
        missing = self.results["foreign_map_missing"]
        self.assertTrue(missing["raised"], missing)
