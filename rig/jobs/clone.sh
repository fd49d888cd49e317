#!/bin/sh
# The rig's clone job, run by dom0: the real xenclone daemon (twistd) with
# the Xen backend; clone.py creates a PVH master from the project's guest,
# blesses it and launches 3 clones through the xl-style CLI, and checks
# every answer; then the daemon restart and the memory-server domain jobs.
# Results: clone-, xenstore-, restart- and memserver-results.json in $RIG_OUT.
#
# The daemon's setup: daemon.sh.
set -eu
. "$RIG_PROJECT/rig/jobs/daemon.sh"
daemon
trap 'kill $DAEMON 2>/dev/null || true' EXIT
rc=0
python3 "$RIG_PROJECT/rig/jobs/clone.py" "$W/xenclone.conf" > clone-results.json || rc=$?
cat clone-results.json
# The XenStore control plane against the real xenstored, with Debian's
# xenstore-* tools: the same selftest as on the embedded server.
python3 -c 'import sys; from xenclone.cli.main import entry; sys.argv[0] = "xenclone"; entry()' \
    -c "$W/xenclone.conf" selftest --json xenstore > xenstore-selftest.json || rc=1
python3 -c 'import json, sys; r = json.load(open(sys.argv[1]))["xenstore"]
print(json.dumps(dict(r, ok=r["passed"]), indent=1))' xenstore-selftest.json \
    > xenstore-results.json || rc=1
cat xenstore-results.json
# The daemon killed while clones wait, paused: a new one takes them back.
python3 "$RIG_PROJECT/rig/jobs/restart.py" "$W/xenclone.conf" before || rc=1
kill -9 $DAEMON
wait $DAEMON 2>/dev/null || true
daemon
python3 "$RIG_PROJECT/rig/jobs/restart.py" "$W/xenclone.conf" after > restart-results.json || rc=1
cat restart-results.json
# Images in the memory-server domain (daemon.sh configures one).
python3 "$RIG_PROJECT/rig/jobs/memserver.py" "$W/xenclone.conf" > memserver-results.json || rc=1
cat memserver-results.json
exit $rc
