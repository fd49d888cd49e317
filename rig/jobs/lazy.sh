#!/bin/sh
# The rig's lazy job, on the MEM_PAGING hypervisor: the real daemon with
# fill = lazy (paging.sh); lazy.py blesses the project's guest, launches 3
# lazy clones, holds one to a target, and measures lazy against
# fill-before-run and xl save + xl restore; then lazy clones outlive the
# daemon.  Results: lazy-results.json, lazy-restart-results.json.
set -eu
. "$RIG_PROJECT/rig/jobs/daemon.sh"
daemon
trap 'kill $DAEMON 2>/dev/null || true' EXIT
rc=0
python3 "$RIG_PROJECT/rig/jobs/lazy.py" "$W/xenclone.conf" > lazy-results.json || rc=$?
cat lazy-results.json
# The daemon killed while 2 lazy clones wait, paused, every page evicted: a
# new daemon takes their paging rings back and serves their faults.
python3 "$RIG_PROJECT/rig/jobs/restart.py" "$W/xenclone.conf" before || rc=1
kill -9 $DAEMON
wait $DAEMON 2>/dev/null || true
daemon
python3 "$RIG_PROJECT/rig/jobs/restart.py" "$W/xenclone.conf" after \
    > lazy-restart-results.json || rc=1
cat lazy-restart-results.json
exit $rc
