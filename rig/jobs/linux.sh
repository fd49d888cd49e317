#!/bin/sh
# The rig's Linux job (issue 4): the rig's Linux PVH domU (rig/domu/pvh.cfg,
# made by plain xl as an administrator would) blessed and cloned through
# the real daemon and the xl-style CLI; linux.py checks what each clone's
# console says.  Its own daemon, images in dom0 (a 128 MiB master), no TLS
# port (the clone job's memory server, which outlives its daemon, holds it).
# Results: linux-results.json in $RIG_OUT; the daemon's log:
# xenclone-linux-daemon.log.
set -eu
export XENCLONE_W=/tmp/xenclone-linux XENCLONE_SERVER_DOMAIN_MIB=0 XENCLONE_MEMSERVER_TCP=
export XENCLONE_LOG=xenclone-linux-daemon.log
# Watermarks on the hypervisor's free memory that the balloon step's
# pressure (linux.py) crosses both ways, whatever the other jobs left.
export XENCLONE_EXTRA_CONF="low_watermark_mib = 200
high_watermark_mib = 300"
. "$RIG_PROJECT/rig/jobs/daemon.sh"
DOMU=rig-pvh
CONSOLE=/var/log/xen/console/guest-$DOMU.log
now() { cut -d' ' -f1 /proc/uptime; }

# The daemon is up once its control socket is; false if it died first.
daemon_up() {
    daemon
    i=0
    until [ -S "$W/run/control.sock" ]; do
        kill -0 "$DAEMON" 2>/dev/null || return 1
        i=$((i + 1))
        [ $i -le 600 ] || return 1
        sleep 0.5
    done
}

trap '[ -z "${DAEMON:-}" ] || kill $DAEMON 2>/dev/null; xl destroy $DOMU 2>/dev/null || true' EXIT
# Its helpers outlive a daemon that gave up on them (a loaded host): once more.
daemon_up || { echo "linux: the daemon did not start; once more"; daemon_up; } ||
    { echo "linux: no daemon"; tail -20 "$RIG_OUT/$XENCLONE_LOG"; exit 1; }
# The domU boots after the daemon's start, not beside it: 3 of 5 first boots
# beside it died of a triple fault early on under TCG (rig/README.md).
# The smoke job's domU had the same name: its console log is not ours.
rm -f "$CONSOLE"
t=$(now)
xl create "$RIG_FILES/domu/pvh.cfg"
i=0
until grep -q XENCLONE-DOMU-UP "$CONSOLE" 2>/dev/null; do
    i=$((i + 1))
    [ $i -le 360 ] || { echo "linux: no marker in 180 s"; cat "$CONSOLE" || true; exit 1; }
    sleep 0.5
done
echo "linux: $DOMU up $(echo "$(now) $t" | awk '{printf "%.1f", $1 - $2}') s after xl create"
rc=0
python3 "$RIG_PROJECT/rig/jobs/linux.py" "$W/xenclone.conf" > linux-results.json || rc=$?
cat linux-results.json
xl list
exit $rc
