"""`qw reset SPEC [--hard [--uncheck]] [--task ID]`: put a spec's state back.

    soft (default)  failed, interrupted and skipped tasks back to pending, their attempts
                    and errors cleared (cost and time spent stay: that money was spent).
                    Recorded as `task_reset` events in the last run's journal, so that
                    `qw status` shows it and a replay agrees.
    --hard          qw forgets the spec's state: the snapshot becomes an empty one and the
                    spec reads as never run; a stale live pointer goes too. The runs'
                    journals and transcripts stay in .qw/runs for `qw logs` (and an empty
                    snapshot is what keeps them from being rebuilt from).
    --uncheck       (with --hard) also untick the tasks qw ticked in tasks.md ([x], [-]),
                    every other byte kept; a [~] (blocked) mark is the user's and stays.
    --task ID       only that task (and its subtasks): soft, as above; hard, its record is
                    forgotten and, with --uncheck, its box and its ticked groups unticked.

Every reset holds the spec's lock while it works (LockHeld while a run has it), and first
takes an automatic backup of the spec (`qw backup restore <name>` undoes the reset). A
reset that would change nothing changes nothing and takes no backup.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from qw import __version__
from qw.backup import auto_backup
from qw.errors import UsageError
from qw.journal import atomic_write
from qw.statestore import REPAIR, StateStore
from qw.lock import SpecLock
from qw.specdir import read_text, resolve_spec
from qw.state import (FAILED, PENDING, READY, SKIPPED, RunState, TaskRecord,
                      recover_interrupted)
from qw.stateowner import withdraw_stale
from qw.tasks import TaskList, checkbox_marks, parse_tasks, with_marks

_QW_MARKS = ("x", "-")   # the marks qw writes; --uncheck clears these only


@dataclass(frozen=True)
class ResetResult:
    """What a reset did, for the reporter to show."""

    spec: str
    hard: bool
    task: Optional[str]
    reset: Tuple[str, ...]       # tasks whose recorded state went back to pending
    unchecked: Tuple[str, ...]   # tasks unticked in tasks.md
    forgot: bool                 # the spec's whole state was forgotten (--hard alone)
    backup: Optional[str]        # the automatic backup taken first; None: nothing to do
    warnings: Tuple[str, ...]    # damaged state found (and repaired) on the way

    @property
    def changed(self) -> bool:
        return self.backup is not None


def reset(repo: str, spec_name: str, *, hard: bool = False, uncheck: bool = False,
          task: Optional[str] = None, now: Optional[float] = None) -> ResetResult:
    """Reset spec `spec_name`'s state as the module doc says. UsageError for an unknown
    spec or task, or --uncheck without --hard; LockHeld while a run holds the spec;
    SpecError for an unreadable tasks.md; StateError for state a newer qw wrote."""
    if uncheck and not hard:
        raise UsageError("--uncheck needs --hard", "qw reset",
                         "run `qw reset SPEC --hard --uncheck` to untick tasks.md as well")
    paths = resolve_spec(repo, spec_name)
    spec = paths.name
    qw_dir = os.path.join(repo, ".qw")
    now = time.time() if now is None else now
    lock = SpecLock(os.path.join(qw_dir, "locks", spec + ".lock"))
    lock.acquire({"command": "qw reset", "spec": spec, "qw": __version__})
    try:
        withdraw_stale(qw_dir, spec)   # we hold the lock: any live pointer is a dead run's
        store = StateStore(qw_dir, spec, recover=REPAIR, tasks_path=paths.tasks)
        state = store.load()
        tasks = parse_tasks(read_text(paths.tasks), paths.tasks) \
            if (task is not None or uncheck) else None
        targets = _targets(task, tasks, state, paths.tasks)
        forget = hard and task is None and state is not None
        events = [] if forget else _events(state, targets, hard, now)
        marks = _unticks(tasks, targets, task) if tasks is not None and uncheck else {}
        backup = None
        if events or forget or marks:
            backup = auto_backup(repo, f"reset {spec}", [spec], now).name
            for event in events:
                store.record(event)
            if forget:
                store.forget()
            store.close()
            if marks:
                _untick(paths.tasks, marks)
    finally:
        lock.release()
    return ResetResult(spec, hard, task,
                       tuple(e["task"] for e in events if e["type"] == "task_reset"),
                       tuple(marks), forget, backup, tuple(store.warnings))


def _targets(task: Optional[str], tasks: Optional[TaskList], state: Optional[RunState],
             tasks_path: str) -> Optional[List[str]]:
    """The ids a --task reset covers (the task and its subtasks), None for the whole spec."""
    if task is None:
        return None
    known = tasks.by_id if tasks is not None else {}
    if task not in known and (state is None or task not in state.tasks):
        raise UsageError(f"spec has no task {task}", tasks_path,
                         "check the task number with `qw status SPEC`")
    ids, queue = [], [task]
    while queue:
        current = queue.pop(0)
        ids.append(current)
        if current in known:
            queue.extend(known[current].children)
    return ids


def _events(state: Optional[RunState], targets: Optional[List[str]], hard: bool,
            now: float) -> List[Dict[str, object]]:
    """The events that reset the recorded state: a dead run's running tasks interrupted
    first (we hold the lock, so the run that left them running is gone), then task_reset."""
    if state is None:
        return []
    events: List[Dict[str, object]] = []
    wanted = set(targets) if targets is not None else set(state.tasks)
    for event in recover_interrupted(state, now):
        if event["task"] in wanted:
            events.append(event)
    interrupted = {e["task"] for e in events}
    for rec in state.tasks.values():
        if rec.id not in wanted:
            continue
        if hard:
            due = rec != TaskRecord(rec.id, rec.title)
        else:
            due = rec.status in (FAILED, SKIPPED) or rec.id in interrupted or (
                rec.status in (PENDING, READY) and (rec.attempts > 0 or rec.error is not None))
        if due:
            events.append({"type": "task_reset", "t": now, "task": rec.id, "hard": hard})
    return events


def _unticks(tasks: TaskList, targets: Optional[List[str]],
             task: Optional[str]) -> Dict[str, str]:
    """The marks --uncheck writes: the targets' ticks, and the ticked groups above the one
    task (a group is done only while all of it is)."""
    ids = list(targets) if targets is not None else [t.id for t in tasks]
    parent = tasks.by_id[task].parent if task is not None and task in tasks.by_id else None
    while parent is not None:
        ids.append(parent)
        parent = tasks.by_id[parent].parent
    return {i: " " for i in ids if i in tasks.by_id and tasks.by_id[i].mark in _QW_MARKS}


def _untick(path: str, marks: Dict[str, str]) -> None:
    """Write `marks` into tasks.md, re-read now (under the lock), every other byte kept."""
    text = read_text(path)
    present = checkbox_marks(text, path)
    new = with_marks(text, {present[task_id][1]: mark for task_id, mark in marks.items()
                            if task_id in present})
    if new != text:
        atomic_write(path, new.encode("utf-8"))
