#!/bin/sh
# The rig's smoke job, run by dom0 (see rig/dom0/init for the environment):
# the toolstack answers, a PVH domU boots, and the project's Xen shim works
# from dom0's Python against it.  Results: results.json in $RIG_OUT.
# Any failure exits non-zero.
set -eu
DOMU=rig-pvh
CONSOLE=/var/log/xen/console/guest-$DOMU.log
now() { cut -d' ' -f1 /proc/uptime; }
since() { echo "$(now) $1" | awk '{printf "%.2f", $1 - $2}'; }
step() { echo "smoke: $*"; }

t=$(now)
xl info > xl-info.txt
grep -q '^xen_minor *: 17$' xl-info.txt || { step "xl info: not Xen 4.17"; exit 1; }
step "xl info ok ($(since "$t") s)"

trap 'xl destroy $DOMU 2>/dev/null || true' EXIT
t=$(now)
xl create "$RIG_FILES/domu/pvh.cfg"
export SMOKE_XL_CREATE_S=$(since "$t")
step "xl create ok ($SMOKE_XL_CREATE_S s)"
# The domU prints its marker on hvc0; xenconsoled logs it.
i=0
until grep -q XENCLONE-DOMU-UP "$CONSOLE" 2>/dev/null; do
    i=$((i + 1))
    [ $i -le 240 ] || { step "no marker from the domU in 120 s"; cat "$CONSOLE" || true; exit 1; }
    sleep 0.5
done
export SMOKE_DOMU_UP_S=$(since "$t")
step "domU up ($SMOKE_DOMU_UP_S s after xl create)"
cp "$CONSOLE" domu-console.log
xl list | tee xl-list.txt

t=$(now)
python3 "$RIG_PROJECT/rig/jobs/smoke.py" "$DOMU" > results.json
step "python checks ok ($(since "$t") s)"
cat results.json

xl destroy $DOMU
trap - EXIT
xl list | grep -q "^$DOMU " && { step "$DOMU still listed after xl destroy"; exit 1; }
step "xl destroy ok"
