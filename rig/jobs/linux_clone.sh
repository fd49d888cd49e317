#!/bin/sh
# Spike (issue 4): a Linux PVH domU as a master.  Boot rig/domu/pvh.cfg,
# wait for its XENCLONE-DOMU-UP marker, then linux_clone.py suspends it
# cooperatively, captures it, makes resumed clones that print their
# clone-id from XenStore, and resumes the master.  See linux_clone.py's
# docstring for what is done and learned.  Results:
# linux-clone-results.json (and dom0 init saves /var/log/xen, xl dmesg).
set -eu
DOMU=rig-pvh
CONSOLE=/var/log/xen/console/guest-$DOMU.log
now() { cut -d' ' -f1 /proc/uptime; }
since() { echo "$(now) $1" | awk '{printf "%.2f", $1 - $2}'; }
trap 'for d in $DOMU lx-clone-1 lx-clone-2 lx-clone-3; do xl destroy $d 2>/dev/null || true; done' EXIT
t=$(now)
# LINUX_MASTER_EXTRA: xl settings for the master (and its clones), ';'-separated
IFS=';'
# shellcheck disable=SC2086
xl create "$RIG_FILES/domu/pvh.cfg" ${LINUX_MASTER_EXTRA:-}
unset IFS
echo "linux-clone: xl create $(since "$t") s"
i=0
until grep -q XENCLONE-DOMU-UP "$CONSOLE" 2>/dev/null; do
    i=$((i + 1))
    [ $i -le 360 ] || { echo "linux-clone: no marker in 180 s"; cat "$CONSOLE" || true; exit 1; }
    sleep 0.5
done
echo "linux-clone: domU up $(since "$t") s after xl create"
rc=0
python3 "$RIG_PROJECT/rig/jobs/linux_clone.py" > linux-clone-results.json || rc=$?
cat linux-clone-results.json
xl list
exit $rc
