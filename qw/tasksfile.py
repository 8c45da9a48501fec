"""Writing tasks.md during a run: make the checkboxes say what the run knows, keep every
other byte.

Only the runner writes tasks.md, while it holds the spec's lock (DESIGN §3). Each write
re-reads the file first (a child may have edited it despite being told not to), flips only
the boxes that disagree with the run, and replaces the file atomically. A child that ticks a
box itself is overruled: a box is `[x]` exactly when qw saw the task succeed.

A child may also be half-way through rewriting the file when qw reads it. Mid-run, a file
that does not parse or lacks tasks the run knows is left alone (the next write or the final
one puts the marks right); only the final write, when no child is left, goes ahead anyway.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from typing import AbstractSet, Dict, Iterable, List, Optional, Tuple

from qw.errors import SpecError
from qw.journal import atomic_write
from qw.specdir import read_text
from qw.tasks import checkbox_marks, with_marks

# What the run knows of a task (or group), as sync_marks takes it.
DONE, RUNNING, OPEN = "done", "running", "open"


def wanted_mark(current: str, state: str, in_progress: bool) -> str:
    """The checkbox a task in `state` should show, given the one it shows now.

    done: `x`. running: `-` with `[spec] mark_in_progress`, else as it is unless it says
    done. open (pending, failed, skipped): `x` and our own `-` are cleared; a user's `~`
    (blocked) or `-` stays.
    """
    if state == DONE:
        return "x"
    if state == RUNNING and in_progress:
        return "-"
    if current == "x" or (in_progress and current == "-"):
        return " "
    return current


@dataclass(frozen=True)
class MarkResult:
    written: bool                    # the file was rewritten
    postponed: Optional[str] = None  # why nothing was written now (a mid-run write only)
    missing: Tuple[str, ...] = ()    # tasks no longer in the file (a final write only)


def sync_marks(path: str, states: Dict[str, str], *, in_progress: bool,
               final: bool) -> MarkResult:
    """Make tasks.md's boxes agree with `states` ({task or group id: DONE|RUNNING|OPEN}).

    Mid-run (`final` False) a file that does not parse, or lacks one of the tasks, is not
    touched: `postponed` says why. The final write goes ahead with what is there and
    reports the tasks it could not find; a file that does not parse then raises SpecError.
    """
    return TasksFile(path).sync(states, in_progress=in_progress, final=final)


class TasksFile:
    """tasks.md as one run writes it, again and again.

    Scanning a large tasks.md costs far more than writing it (0.4 s at 10,000 tasks), and
    the runner writes after every attempt. So the file remembers what it last wrote: while
    the file on disk is still that one (same inode, size and modification time to the
    nanosecond), the known mark offsets are reused; anything else re-reads and re-scans.
    """

    def __init__(self, path: str):
        self.path = path
        self._known: Optional[Tuple[tuple, str, Dict[str, Tuple[str, int]]]] = None

    def sync(self, states: Dict[str, str], *, in_progress: bool, final: bool) -> MarkResult:
        """sync_marks, for this file."""
        try:
            text, present = self._current()
        except SpecError as error:
            if final:
                raise
            return MarkResult(False, postponed=str(error))
        missing = tuple(t for t in states if t not in present)
        if missing and not final:
            return MarkResult(False, postponed=f"tasks {', '.join(missing)} are not in it")
        changes = {}
        for task_id, state in states.items():
            if task_id in present:
                current, offset = present[task_id]
                mark = wanted_mark(current, state, in_progress)
                if mark != current:
                    changes[offset] = (task_id, mark)
        if changes:
            text = with_marks(text, {offset: mark for offset, (_, mark) in changes.items()})
            atomic_write(self.path, text.encode("utf-8"))
            # Only once written: `present` may be the one remembered (see _current).
            for offset, (task_id, mark) in changes.items():
                present[task_id] = (mark, offset)
            self._known = (_signature(self.path), text, present)
        return MarkResult(bool(changes), missing=missing)

    def _current(self) -> Tuple[str, Dict[str, Tuple[str, int]]]:
        """The file's text and marks: those remembered (not a copy: sync changes them only
        along with the file) while the file is the one last written, else read again."""
        if self._known is not None and self._known[0] == _signature(self.path):
            return self._known[1], self._known[2]
        self._known = None
        text = read_text(self.path)
        return text, checkbox_marks(text, self.path)


def _signature(path: str) -> Optional[tuple]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class RunMarks:
    """The checkboxes one run owes tasks.md, written in batches.

    The runner says which tasks changed (`changed`); a write sends only those and the
    groups holding them, so its cost does not grow with the spec. Mid-run writes are spaced
    by SPACING times the last write's duration (a large tasks.md costs milliseconds to
    write and fsync; a run of instant tasks would otherwise spend its time there), so
    `due` may say "not yet": the runner then records a task's `task_done` only after the
    write that ticks it, as before.
    """

    SPACING = 10.0

    def __init__(self, tasks_file: "TasksFile", ancestors: Dict[str, Iterable[str]],
                 groups: Dict[str, Iterable[str]], in_progress: bool):
        self.tasks_file = tasks_file
        self.ancestors = ancestors
        self.groups = groups
        self.in_progress = in_progress
        self.dirty: Dict[str, str] = {}      # task -> DONE | RUNNING | OPEN, not yet written
        self.not_before = float("-inf")      # monotonic time the next mid-run write may start

    def changed(self, task_id: str, state: str) -> None:
        self.dirty[task_id] = state

    def due(self, now: float) -> bool:
        """Something is waiting to be written and the spacing allows it (monotonic `now`)."""
        return bool(self.dirty) and now >= self.not_before

    def write(self, finished: AbstractSet[str], now: float) -> MarkResult:
        """Write the changed tasks' marks and their groups' (`finished`: every task done so
        far, before or during the run). Mid-run: see TasksFile.sync."""
        states, self.dirty = self.dirty, {}
        for group_id in {g for t in states for g in self.ancestors.get(t, ())}:
            states[group_id] = DONE if all(leaf in finished for leaf in self.groups[group_id]) \
                else OPEN
        result = None
        try:
            result = self.tasks_file.sync(states, in_progress=self.in_progress, final=False)
            return result
        finally:
            if result is None or result.postponed:   # owed still: the next write tries
                states.update(self.dirty)
                self.dirty = states
            took = time.monotonic() - now
            self.not_before = now + took * (1 + self.SPACING)


def group_states(groups: Dict[str, Iterable[str]], states: Dict[str, str],
                 done: Iterable[str]) -> Dict[str, str]:
    """The state of each group holding a task of `states`: DONE when every one of its
    tasks is done (`done` holds those finished before the run), else OPEN."""
    finished = set(done) | {t for t, s in states.items() if s == DONE}
    out = {}
    for group_id, leaves in groups.items():
        leaves = tuple(leaves)
        if any(leaf in states for leaf in leaves):
            out[group_id] = DONE if all(leaf in finished for leaf in leaves) else OPEN
    return out


def remove_stale_temps(path: str) -> List[str]:
    """Remove the temporary files a writer killed inside atomic_write left beside `path`
    (`.<name>.<8 hex>.tmp`); their names. Only while holding the spec's lock: no other
    writer of `path` can be half-way then."""
    directory, name = os.path.split(os.path.abspath(path))
    stale = re.compile(r"\.%s\.[0-9a-f]{8}\.tmp\Z" % re.escape(name))
    removed = []
    for entry in sorted(os.listdir(directory)):
        if stale.match(entry):
            try:
                os.remove(os.path.join(directory, entry))
            except OSError:
                continue   # not ours to insist on: the next run tries again
            removed.append(entry)
    return removed
