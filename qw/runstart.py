"""What `qw run` settles before its loop starts: which tasks it will not run, whether the
claude command exists, and what a killed earlier run left behind.

Each check here fails the run before anything is started or written, or clears the ground
so that a task cannot run twice at once (DESIGN §6: nothing qw started outlives it, not
even a run killed by SIGKILL).
"""

from __future__ import annotations

import os
import time
from typing import Dict

from qw.claude import build_command, build_env
from qw.errors import ConfigError, LockHeld
from qw.proctree import kill_marked
from qw.proctree import resolve_command   # the very lookup start_child does
from qw.stateowner import withdraw_stale

# A run killed by SIGKILL leaves its state owner writing the last snapshot for a moment;
# the next run waits this long for it rather than race it.
STALE_OWNER_WAIT_S = 10.0


def parked_tasks(plan, targets, asked) -> Dict[str, str]:
    """Targets marked `[~]` blocked (unless asked for by --task), and every target that
    needs one of them, each with the reason it will not run."""
    by_id = {t.id: t for t in plan.tasks}
    parked: Dict[str, str] = {}
    for tid in targets:
        task = by_id[tid]
        if task.status == "blocked" and tid not in asked:
            parked[tid] = "[~] blocked" + (f": {task.blocked_reason}" if task.blocked_reason
                                           else "")
    stack = list(parked)
    while stack:
        blocked = stack.pop()
        for dependent in plan.dependents.get(blocked, ()):
            if dependent in targets and dependent not in parked:
                parked[dependent] = f"needs blocked task {blocked}"
                stack.append(dependent)
    return parked


def check_claude_command(repo: str, config) -> None:
    """ConfigError unless the claude executable can be found: otherwise every attempt of
    every task would fail the same way, each after its retries."""
    command = build_command(config.claude)[0]
    env = build_env(os.environ, config.claude, run_id="-", task_id="-", attempt=0)
    try:
        resolve_command(command, env, repo)
    except FileNotFoundError:
        raise ConfigError(f"the claude command {command!r} was not found",
                          "[claude] command",
                          "install Claude Code (`claude` on PATH), or set [claude] command "
                          "or QW_CLAUDE to its path; `qw doctor` checks it") from None


def sweep_previous_run(run_id: str, reporter) -> None:
    """Kill what the spec's last run left, if it was killed: its guards may still be
    stopping a child that ignores SIGINT, and a task must not run twice at once."""
    killed = kill_marked(run_id)
    if killed:
        reporter.note(f"killed {len(killed)} process{'es' if len(killed) > 1 else ''} left "
                      f"by the previous run {run_id}: {', '.join(map(str, killed))}")


def wait_for_stale_owner(qw_dir: str, spec: str) -> None:
    """Clear what a killed run left advertised, once its state owner has exited."""
    deadline = time.monotonic() + STALE_OWNER_WAIT_S
    while True:
        try:
            withdraw_stale(qw_dir, spec)
            return
        except LockHeld:
            if time.monotonic() > deadline:
                raise
            # Another process's exit, with no handle to wait on: look again shortly.
            time.sleep(0.05)
