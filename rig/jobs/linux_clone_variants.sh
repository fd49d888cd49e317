#!/bin/sh
# linux_clone.sh with a 2-vCPU master and three clone variants (see
# linux_clone.py): same config, non-zero pages only, placeholder kernel.
export LINUX_MASTER_EXTRA='vcpus=2'
export LINUX_CLONE_VARIANTS=same-config,nonzero-only,placeholder
. "$RIG_PROJECT/rig/jobs/linux_clone.sh"
