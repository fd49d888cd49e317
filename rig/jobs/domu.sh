# Sourced (after daemon.sh) by the jobs that clone the rig's Linux PVH domU
# (linux.sh, fork.sh): $DOMU and its console log, the daemon started and
# waited for, then the domU booted from rig/domu/pvh.cfg.  $JOB names the
# job in messages.
DOMU=rig-pvh
CONSOLE=/var/log/xen/console/guest-$DOMU.log
now() { cut -d' ' -f1 /proc/uptime; }
trap '[ -z "${DAEMON:-}" ] || kill $DAEMON 2>/dev/null; xl destroy $DOMU 2>/dev/null || true' EXIT

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

# Its helpers outlive a daemon that gave up on them (a loaded host): once more.
start_daemon() {
    daemon_up || { echo "$JOB: the daemon did not start; once more"; daemon_up; } ||
        { echo "$JOB: no daemon"; tail -20 "$RIG_OUT/$XENCLONE_LOG"; exit 1; }
}

# The domU boots after the daemon's start, not beside it: 3 of 5 first boots
# beside it died of a triple fault early on under TCG (rig/README.md).  An
# earlier job's domU had the same name: its console log is not ours.
boot_domu() {
    rm -f "$CONSOLE"
    t=$(now)
    xl create "$RIG_FILES/domu/pvh.cfg"
    i=0
    until grep -q XENCLONE-DOMU-UP "$CONSOLE" 2>/dev/null; do
        i=$((i + 1))
        [ $i -le 360 ] || { echo "$JOB: no marker in 180 s"; cat "$CONSOLE" || true; exit 1; }
        sleep 0.5
    done
    echo "$JOB: $DOMU up $(echo "$(now) $t" | awk '{printf "%.1f", $1 - $2}') s after xl create"
}
