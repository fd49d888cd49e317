#!/bin/sh
# The memory-server domain's grants on real Xen (rig/jobs/grant.py).
# Results: grant-results.json in $RIG_OUT.
set -eu
. "$RIG_PROJECT/rig/jobs/pyenv.sh"
python3 "$RIG_PROJECT/rig/jobs/grant.py" > grant.out
