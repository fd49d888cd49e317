"""``xenclone demo`` and ``xenclone selftest``: whole jobs against a daemon
(``scenarios.py`` runs them), scratch daemons and hostile peers to test on."""
