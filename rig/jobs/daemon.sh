# Sourced by the rig's daemon jobs (clone.sh, lazy.sh): the real xenclone
# daemon (twistd) with the Xen backend, its config in $W/xenclone.conf, and
# daemon() to start it ($DAEMON is its pid).  $XENCLONE_EXTRA_CONF is
# appended to the config; $XENCLONE_W (default /tmp/xenclone) is its work
# directory, and $XENCLONE_SERVER_DOMAIN_MIB (default 160; 0: images in
# dom0) the memory-server domain's size, $XENCLONE_LOG (default
# xenclone-daemon.log) its log in $RIG_OUT, $XENCLONE_MEMSERVER_TCP
# (default 127.0.0.1:7443; "": none) where its memory server serves TLS,
# $XENCLONE_FILL (default auto) its fill setting.
. "$RIG_PROJECT/rig/jobs/pyenv.sh"
W=${XENCLONE_W:-/tmp/xenclone}
mkdir -p "$W/plugins/twisted"
cp -r "$RIG_PROJECT/twisted/plugins" "$W/plugins/twisted/"
export PYTHONPATH=$PYTHONPATH:$W/plugins
# Every CLI call is a new python under TCG: let it keep the bytecode of the
# package copy in /opt (tmpfs), compiled once.
unset PYTHONDONTWRITEBYTECODE
cat > "$W/xenclone.conf" <<CONF
backend = "xen"
state_dir = "$W/state"
run_dir = "$W/run"
control_socket = "$W/run/control.sock"
xen_guest_kernel = "$RIG_PROJECT/guest/build/guest.elf"
# Images live in a memory-server domain: 160 MiB needs 79 grant frames, past
# Xen's default cap of 64, so boot.sh gives Xen gnttab_max_frames=128.
memserver_domain_mib = ${XENCLONE_SERVER_DOMAIN_MIB:-160}
memserver_tcp = "${XENCLONE_MEMSERVER_TCP-127.0.0.1:7443}"
fill = "${XENCLONE_FILL:-auto}"
${XENCLONE_EXTRA_CONF:-}
CONF

daemon() {
    python3 -c 'from twisted.scripts.twistd import run; run()' -n --pidfile= \
        -l "$RIG_OUT/${XENCLONE_LOG:-xenclone-daemon.log}" xenclone -c "$W/xenclone.conf" &
    DAEMON=$!
}
