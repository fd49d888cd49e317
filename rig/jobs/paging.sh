#!/bin/sh
# Every job of the MEM_PAGING boot: the probe, then lazy fill.
rc=0
sh "$RIG_PROJECT/rig/jobs/probe.sh" || rc=1
sh "$RIG_PROJECT/rig/jobs/lazy.sh" || rc=1
exit $rc
