"""Fixtures shared by the test modules (helpers they import live in runhelpers.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from types import SimpleNamespace

import pytest

from runhelpers import processes_with


@pytest.fixture
def marker():
    """A run id for the processes a test starts (QW_RUN_ID in `env`, `entry` as it reads in
    their environment). After the test, the test fails if any of them is still alive (they
    get a few seconds to exit, then are killed)."""
    import uuid

    run_id = "test-" + uuid.uuid4().hex
    entry = "QW_RUN_ID=" + run_id
    yield SimpleNamespace(run_id=run_id, entry=entry,
                          env=dict(os.environ, QW_RUN_ID=run_id, QW_TASK_ID="1"))
    deadline = time.monotonic() + 5.0
    while processes_with(entry) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = processes_with(entry)
    if left:
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        pytest.fail("processes left behind by the test: %s" % left)
