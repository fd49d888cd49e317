# Sourced by the rig's daemon jobs (clone.sh, lazy.sh): the real xenclone
# daemon (twistd) with the Xen backend, its config in $W/xenclone.conf, and
# daemon() to start it ($DAEMON is its pid).  $XENCLONE_EXTRA_CONF is
# appended to the config.
#
# Python dependencies come from the project's venv (.venv, made by `make
# setup`), read-only over the project share: the same versions the test
# suite runs, for the same python3.11 ABI.  Debian 12's own packages are
# older than setup.cfg asks (twisted 22.4 < 23.8, attrs 22.2 < 23,
# zope.interface 5.5 < 6, cryptography 38 < 41).
SITE=$RIG_PROJECT/.venv/lib/python3.11/site-packages
[ -d "$SITE" ] || { echo "rig: no $SITE: run make setup first"; exit 1; }
W=/tmp/xenclone
mkdir -p "$W/plugins/twisted"
cp -r "$RIG_PROJECT/twisted/plugins" "$W/plugins/twisted/"
export PYTHONPATH=$PYTHONPATH:$W/plugins:$SITE
# Every CLI call is a new python under TCG: let it keep the bytecode of the
# package copy in /opt (tmpfs), compiled once.
unset PYTHONDONTWRITEBYTECODE
cat > "$W/xenclone.conf" <<CONF
backend = "xen"
state_dir = "$W/state"
run_dir = "$W/run"
control_socket = "$W/run/control.sock"
xen_guest_kernel = "$RIG_PROJECT/guest/build/guest.elf"
${XENCLONE_EXTRA_CONF:-}
CONF

daemon() {
    python3 -c 'from twisted.scripts.twistd import run; run()' -n --pidfile= \
        -l "$RIG_OUT/xenclone-daemon.log" xenclone -c "$W/xenclone.conf" &
    DAEMON=$!
}
