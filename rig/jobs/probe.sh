#!/bin/sh
# A short rig job: what the hypervisor offers, as the Xen backend probes it
# (version, HAP, MEM_PAGING).  Results: probe.json in $RIG_OUT.
set -eu
python3 -c 'import json; from xenclone.backends.xen import xenctrl
print(json.dumps(xenctrl.probe(check_paging=True), indent=1, sort_keys=True))' > probe.json
cat probe.json
