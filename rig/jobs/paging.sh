#!/bin/sh
# Every job of the MEM_PAGING boot: the probe, lazy fill of the project's
# guest, then the Linux job with lazy clones.
rc=0
sh "$RIG_PROJECT/rig/jobs/probe.sh" || rc=1
sh "$RIG_PROJECT/rig/jobs/lazy.sh" || rc=1
sh "$RIG_PROJECT/rig/jobs/linux.sh" || rc=1
exit $rc
