"""``python tests/helpers/hold_lock.py FOLDER [NAME]``: take the writer's lock on FOLDER (as ``train`` and
``prepare`` do), print ``LOCKED`` and block until killed — a second writer for tests, in its own process."""

from __future__ import annotations

import sys

from llama_avsr.io import LOCK_NAME, exclusive_lock

if __name__ == "__main__":
    name = sys.argv[2] if len(sys.argv) > 2 else LOCK_NAME
    with exclusive_lock(sys.argv[1], "a test process", name=name):
        sys.stdout.write("LOCKED\n")
        sys.stdout.flush()
        sys.stdin.read()
