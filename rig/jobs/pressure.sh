#!/bin/sh
# The fork job's steps up to its pressure step (issue 21's pressure_ok), and
# that step: a hog domain takes the hypervisor's free memory near the low
# watermark while 4 fork clones write more than is left.  For working on
# that step (about 6 minutes a boot, the pager's decisions in the log); CI
# runs it inside fork.sh.  On a stall it leaves the daemon's threads in
# job.out and its view (host, each fork, rings and vCPUs) in
# fork-results.json's "pressure".
#   rig/boot.sh --xen $(xen/build.sh --rig | tail -1) --job rig/jobs/pressure.sh --out DIR
export XENCLONE_RIG_PRESSURE=1
# fork.sh's watermarks, and every decision of the pager in the log.
export XENCLONE_EXTRA_CONF="low_watermark_mib = 64
high_watermark_mib = 72
log_level = \"debug\""
. "$RIG_PROJECT/rig/jobs/fork.sh"
