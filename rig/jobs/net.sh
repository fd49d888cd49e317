#!/bin/sh
# The rig's net job (issue 18): a Linux master with a vif on dom0's bridge
# and a disk (ext4 in a file), its clones each given their own, and their
# identity renewed by the guest agent.  dom0 gets the bridge (xenbr0,
# 10.99.0.1/24) and dnsmasq's DHCP on it; the master is
# rig/domu/pvh-net.cfg, made by plain xl; net.py checks from dom0.
# Results: net-results.json in $RIG_OUT; logs: xenclone-net-daemon.log,
# dnsmasq.log.
set -eu
export XENCLONE_W=/tmp/xenclone-net XENCLONE_SERVER_DOMAIN_MIB=0 XENCLONE_MEMSERVER_TCP=
export XENCLONE_LOG=xenclone-net-daemon.log XENCLONE_FILL=${XENCLONE_FILL:-before-run}
. "$RIG_PROJECT/rig/jobs/daemon.sh"
JOB=net
. "$RIG_PROJECT/rig/jobs/domu.sh"
# domu.sh's clean-up, and dnsmasq's and the net master's.
trap '[ -z "${DAEMON:-}" ] || kill $DAEMON 2>/dev/null || true; xl destroy rig-net 2>/dev/null || true
      kill "$(cat /run/dnsmasq.pid 2>/dev/null)" 2>/dev/null || true' EXIT
modprobe -a xen-netback xen-blkback bridge loop
ip link add xenbr0 type bridge
ip addr add 10.99.0.1/24 dev xenbr0
ip link set xenbr0 up
mkdir -p /var/lib/misc
dnsmasq --interface=xenbr0 --bind-interfaces --port=0 --user=root \
    --dhcp-range=10.99.0.10,10.99.0.250,12h --dhcp-leasefile=/var/lib/misc/dnsmasq.leases \
    --pid-file=/run/dnsmasq.pid --log-dhcp --log-facility="$RIG_OUT/dnsmasq.log"
truncate -s 64M /tmp/rig-net.img
mkfs.ext4 -q -F /tmp/rig-net.img
start_daemon
rc=0
python3 "$RIG_PROJECT/rig/jobs/net.py" "$W/xenclone.conf" > net-results.json || rc=$?
cat net-results.json
xl list
exit $rc
