"""What qw's workers and state owner are forked from, on Linux: multiprocessing's fork
server imports this.

A run starts its processes through a fork server (qw.pool.process_context): one fresh
interpreter, started with the first worker, that imports this module and then forks a
process for each request. A fork costs milliseconds where a spawned interpreter's start and
imports cost a hundred or more (DESIGN §8: a run at -j 16 starts 17 of them, the state
owner's on the way to the first task). The server is a clean process, not a fork of the
runner: it holds none of the runner's threads, locks or files, which is why DESIGN §1 asks
for spawn. Elsewhere they are spawned as before.

Importing this module is for the fork server alone. It gives the server the run's sys.path
and the user's environment back (qw.pool._start_fork_server says why they differ), imports
what the processes need (the probe and its psutil included), so that each fork starts with
it, and makes the server ignore SIGTERM. multiprocessing already makes it ignore SIGINT; a
SIGTERM to the process group (a service manager stopping qw) is for the runner to act on
(DESIGN §1), and if it killed the server, the pool would take every worker for dead, since
it learns of their exits through the server. The forks inherit the setting, which workers
and the state owner choose anyway.
"""

from __future__ import annotations

import os
import sys


def _as_the_run_has_it() -> None:
    """This server's sys.path and environment as qw.pool._start_fork_server found them in
    the run: first, before any other import, so that nothing is looked up in the user's
    working directory, and so that the forks inherit the user's PYTHONPATH."""
    path = os.environ.pop("QW_FORKHOST_SYS_PATH", None)   # qw.pool.FORKHOST_SYS_PATH
    if path is not None:
        sys.path[:] = path.split("\x1f")
    for name in ("PYTHONPATH", "PYTHONSAFEPATH"):
        old = os.environ.pop("QW_FORKHOST_SAVED_" + name, None)   # qw.pool.FORKHOST_SAVED
        if old is None:
            continue
        if old.startswith("="):
            os.environ[name] = old[1:]
        else:
            os.environ.pop(name, None)


_as_the_run_has_it()

import ctypes        # noqa: E402,F401  (the guards forked from workers: become_subreaper)
import signal        # noqa: E402

import qw.claude     # noqa: E402,F401  (imported for the forks, as worker._warm_up would)
import qw.outcome    # noqa: E402,F401
import qw.proctree   # noqa: E402,F401
import qw.stateowner  # noqa: E402,F401
import qw.worker     # noqa: E402,F401
from qw import probe  # noqa: E402

signal.signal(signal.SIGTERM, signal.SIG_IGN)
# The probe too, psutil with it: every worker needs it from USAGE_EVERY_S into its first
# child, and eight importing it at that moment (~35 ms of CPU each) held up the ends of
# the first children by a tenth of a second on 2 cores.
probe.shared_probe()
