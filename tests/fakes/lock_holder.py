"""Holds a SpecLock: `lock_holder.py LOCKPATH RUN_ID` prints "locked", then blocks on stdin
until the test closes it (release) or kills this process (a dead holder)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from qw.lock import SpecLock  # noqa: E402

with SpecLock(sys.argv[1]).acquire({"run_id": sys.argv[2], "argv": ["qw", "run", "x"]}):
    print("locked", flush=True)
    sys.stdin.read()
