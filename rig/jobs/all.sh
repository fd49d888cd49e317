#!/bin/sh
# Every rig job in one boot (a boot's start-up is paid once):
# the smoke job, the memory-server domain's grants, the clone job (the long
# one), the Linux PVH master's, then the net job's (a Linux master with a
# vif and a disk, issue 18).  Exits non-zero if any failed.
rc=0
sh "$RIG_PROJECT/rig/jobs/smoke.sh" || rc=1
sh "$RIG_PROJECT/rig/jobs/grant.sh" || rc=1
sh "$RIG_PROJECT/rig/jobs/clone.sh" || rc=1
sh "$RIG_PROJECT/rig/jobs/linux.sh" || rc=1
sh "$RIG_PROJECT/rig/jobs/net.sh" || rc=1
exit $rc
