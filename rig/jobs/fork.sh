#!/bin/sh
# The rig's fork job (issue 21): the rig's Linux PVH domU blessed into an
# image domain and cloned as VM forks of it, on the project's patched Xen
# (xen/patches), against xl save/restore in the same boot; fork.py
# checks and measures.  Its own daemon, images in dom0, no TLS port.
# Results: fork-results.json in $RIG_OUT; the daemon's log:
# xenclone-fork-daemon.log.
set -eu
export XENCLONE_W=/tmp/xenclone-fork XENCLONE_SERVER_DOMAIN_MIB=0 XENCLONE_MEMSERVER_TCP=
export XENCLONE_LOG=xenclone-fork-daemon.log
# The pressure step's watermarks on the hypervisor's free memory (fork.py's
# LOW_WATERMARK_MIB): its hog leaves a little above the low one.
export XENCLONE_EXTRA_CONF="${XENCLONE_EXTRA_CONF:-low_watermark_mib = 64
high_watermark_mib = 72}"
. "$RIG_PROJECT/rig/jobs/daemon.sh"
JOB=fork
. "$RIG_PROJECT/rig/jobs/domu.sh"
start_daemon
boot_domu
# Its commands find the daemon as an administrator's do: the default path.
mkdir -p /etc/xen
cp "$W/xenclone.conf" /etc/xen/xenclone.conf
rc=0
python3 "$RIG_PROJECT/rig/jobs/fork.py" > fork-results.json || rc=$?
rm -f /etc/xen/xenclone.conf
cat fork-results.json
xl list
exit $rc
