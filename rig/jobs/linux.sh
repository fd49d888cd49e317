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
JOB=linux
. "$RIG_PROJECT/rig/jobs/domu.sh"
start_daemon
boot_domu
rc=0
python3 "$RIG_PROJECT/rig/jobs/linux.py" "$W/xenclone.conf" > linux-results.json || rc=$?
cat linux-results.json
xl list
exit $rc
