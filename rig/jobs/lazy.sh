#!/bin/sh
# The rig's lazy job, on the MEM_PAGING hypervisor: the real daemon with
# fill = auto (lazy here); lazy.py blesses the project's guest, launches 3
# lazy clones, holds one to a target, and measures lazy against
# fill-before-run and xl save + xl restore.  Results: lazy-results.json.
set -eu
. "$RIG_PROJECT/rig/jobs/daemon.sh"
daemon
trap 'kill $DAEMON 2>/dev/null || true' EXIT
rc=0
python3 "$RIG_PROJECT/rig/jobs/lazy.py" "$W/xenclone.conf" > lazy-results.json || rc=$?
cat lazy-results.json
exit $rc
