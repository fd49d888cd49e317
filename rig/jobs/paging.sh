#!/bin/sh
# Every job of the patched Xen's boot (MEM_PAGING, MEM_SHARING and
# xen/patches): the probe, lazy fill of the project's guest and the Linux
# job with lazy clones (their daemons set fill = "lazy": no image domains),
# the fork job, then the net job with lazy clones.
rc=0
sh "$RIG_PROJECT/rig/jobs/probe.sh" || rc=1
XENCLONE_FILL=lazy sh "$RIG_PROJECT/rig/jobs/lazy.sh" || rc=1
XENCLONE_FILL=lazy sh "$RIG_PROJECT/rig/jobs/linux.sh" || rc=1
sh "$RIG_PROJECT/rig/jobs/fork.sh" || rc=1
XENCLONE_FILL=lazy sh "$RIG_PROJECT/rig/jobs/net.sh" || rc=1
exit $rc
