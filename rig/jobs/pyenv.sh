# Sourced by rig jobs that need the project's Python dependencies: they
# come from the project's venv (.venv, made by `make setup`), read-only over
# the project share, the same versions the test suite runs, for the same
# python3.11 ABI.  Debian 12's own packages are older than setup.cfg asks
# (twisted 22.4 < 23.8, attrs 22.2 < 23, zope.interface 5.5 < 6,
# cryptography 38 < 41).
SITE=$RIG_PROJECT/.venv/lib/python3.11/site-packages
[ -d "$SITE" ] || { echo "rig job: no $SITE: run make setup first"; exit 1; }
export PYTHONPATH=$PYTHONPATH:$SITE
