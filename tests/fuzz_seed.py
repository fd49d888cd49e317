"""The seed of a fuzz run's random pass."""

import os
import secrets


def fuzz_seed():
    """``XENCLONE_FUZZ_SEED`` (to replay a failure), else a fresh one, so
    every run tries cases no run tried before."""
    return int(os.environ.get("XENCLONE_FUZZ_SEED") or secrets.randbits(64))
