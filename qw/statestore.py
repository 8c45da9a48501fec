"""A spec's state on disk (DESIGN §2, §8): the snapshot and its run's journal, as one store.

    .qw/runs/<run-id>/events.jsonl   journal (qw.journal): one JSON event per line
    .qw/state/<spec>.json            snapshot: the spec's latest RunState, rewritten atomically

A transition costs one appended line; the snapshot is rewritten when a run starts or ends,
else at most once per `snapshot_interval` or SNAPSHOT_SPACING times its last write's time.
Loading reads the snapshot and replays the journal lines it has not seen yet: exact anyway.
The snapshot says how much of the journal it covers, so that a read-only look reads only
the newer lines.

Damage is detected, never trusted: journal lines and the snapshot carry checksums
(qw.journal, qw.state). `StateStore.load` meets damage as `recover` says:

    STRICT     a StateError naming the damage (a torn last line excepted: a writer died
               mid-line, that event never happened). The default.
    IN_MEMORY  rebuild the state in memory and touch no file: for readers that do not hold
               the spec's lock (`qw status`). Such a store is read-only.
    REPAIR     set the damaged files aside as .qw/backups/corrupt-<utc>-<name>, rebuild,
               and write the rebuilt state back: only while holding the spec's lock.

A rebuild takes the snapshot if sound, replays its run's journal (without a sound snapshot:
the spec's newest journal) up to the first bad line — later lines may depend on the lost
one, so they are not trusted — then marks done every task tasks.md has checked. A file from
a newer qw is refused in every mode and left as it is. At most one warning line per load.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from qw.errors import QwError, StateError
from qw.journal import (FIX_REBUILD, Journal, JournalEvents, Writer, atomic_write,
                        bad_line_error, encode_event, newest_run_of, write_error)
from qw.state import (DONE, INTERRUPTED, PENDING, RunState, Damaged, decode_snapshot,
                      encode_snapshot)

_PLAIN_TYPES = (str, int, float, bool, type(None))

SNAPSHOT_SPACING = 10.0   # a big state must not hold the state owner's lock most of the time
STRICT, IN_MEMORY, REPAIR = "strict", "in_memory", "repair"
RECOVER_MODES = (STRICT, IN_MEMORY, REPAIR)


class StateStore:
    """The persisted state of one spec: snapshot + the current run's journal.

    Not thread-safe; one process (the state owner) writes a spec's store at a time, which
    the spec's run lock guarantees. `recover` is how load() meets damage (module doc);
    `tasks_path` is the spec's tasks.md, which a rebuild consults. `clock`, `write_file`,
    `journal_write` and `wall_clock` are seams for tests.
    """

    def __init__(self, qw_dir: str, spec: str, snapshot_interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 write_file: Callable[[str, bytes], None] = atomic_write, *,
                 recover: str = STRICT, tasks_path: Optional[str] = None,
                 journal_write: Writer = os.write,
                 wall_clock: Callable[[], float] = time.time):
        if recover not in RECOVER_MODES:
            raise ValueError(f"recover must be one of {RECOVER_MODES}, not {recover!r}")
        self.qw_dir = os.fspath(qw_dir)
        self.spec = spec
        self.snapshot_path = os.path.join(self.qw_dir, "state", spec + ".json")
        self.snapshot_interval = snapshot_interval
        self.recover = recover
        self.tasks_path = tasks_path
        self.state: Optional[RunState] = None   # set by load()
        self.torn: Optional[bytes] = None        # a torn journal line load() skipped
        self.warnings: List[str] = []            # at most one line, from the last load()
        self.set_aside: List[str] = []           # where load() put damaged files (REPAIR)
        self._clock, self._wall_clock = clock, wall_clock
        self._write_file, self._journal_write = write_file, journal_write
        self._journal: Optional[Journal] = None
        self._journal_run: Optional[str] = None
        self._snapshot_due, self._dirty = float("-inf"), False

    def journal_path(self, run_id: str) -> str:
        return os.path.join(self.qw_dir, "runs", run_id, "events.jsonl")

    def load(self) -> Optional[RunState]:
        """The stored state (snapshot, then the newer events of its run's journal), or None
        if the spec has none (never run, or forgotten). Damage is met as `recover` says;
        a file from a newer qw is a StateError in every mode, and is left untouched."""
        self.warnings, self.set_aside, self.torn = [], [], None
        damage: List[str] = []
        state, snapshot_damaged = self._load_snapshot(damage)
        if state is not None and state.run_id is None:   # forgotten: see forget()
            self.state = state
            return None
        run_id = state.run_id if state is not None else None
        if run_id is None and self.recover != STRICT:
            run_id = newest_run_of(self.qw_dir, self.spec)
            if run_id is not None and not snapshot_damaged:
                damage.append(f"{self._show(self.snapshot_path)}: missing")
        if state is None:
            state = RunState(self.spec)
        events, cut, path = None, None, self.journal_path(run_id) if run_id else ""
        if path and os.path.exists(path):
            # A read-only look (`qw status`, the dashboard) reads only the lines the
            # snapshot does not cover, when it says where they start: a 10,000-task run's
            # journal is megabytes. A run reads all of it, so that damage anywhere is found
            # (and repaired) while the snapshot still covers it.
            covered = state.journal_bytes if state.run_id == run_id and \
                self.recover == IN_MEMORY else None
            events = Journal.scan(path, start=covered or 0)
            self.torn = events.torn
            cut = self._replay(state, events, path, damage)
        if damage:
            self._rebuilt(state, damage, snapshot_damaged, path, events, cut)
        self.state = state
        return state if state.run_id is not None else None

    def record(self, event: Dict[str, Any]) -> None:
        """Apply the event (ValueError if illegal: then nothing is written), append it to the
        run's journal with the next seq, and refresh the snapshot if it is due. StateError
        (a full disk...) if it cannot be journaled: then it is not applied either."""
        state = self._writable()
        event = dict(event, seq=state.seq + 1)
        encoded = encode_event(event)
        # Apply exactly what the journal will hold (JSON turns tuples into lists...), so
        # that a replay rebuilds this very state. An event of plain values reads back as
        # it is: decoding it again would only cost time.
        if not _plain(event):
            event = json.loads(encoded)
        point, dirty = state.savepoint(event), self._dirty
        state.apply(event)
        self._dirty = True
        try:
            if event["type"] == "run_started":
                self._switch_journal(state.run_id)
                # Snapshot before the first journal line: the snapshot names the run whose
                # journal load() must replay, so no line of the new run can be missed.
                self._write_snapshot()
            self._journal_for(state.run_id).append(event, encoded)
        except StateError:
            state.rollback(point)   # not on disk, so not in the state either
            self._dirty = dirty
            if event["type"] == "run_started":
                self._try_snapshot()   # best effort: the snapshot may name the new run
            raise
        if event["type"] == "run_ended" or self._clock() >= self._snapshot_due:
            self._try_snapshot()

    def progress(self, task_id: str, info: Dict[str, Any]) -> None:
        """Live progress of a running attempt: in memory only."""
        self._loaded().apply({"type": "task_progress", "t": time.time(), "task": task_id,
                              "info": info})

    def forget(self) -> None:
        """Forget the spec's state: it loads as never run from now on. The journals stay
        (history, `qw logs`); an empty snapshot marks them as not to be rebuilt from."""
        seq = self._writable().seq
        self._switch_journal(None)
        self.state = RunState(self.spec)
        self.state.seq = seq   # seqs keep rising across runs
        self._write_snapshot()

    def flush(self) -> None:
        """Write the snapshot now if anything changed since the last one (StateError if it
        cannot be written: the journal still holds every event)."""
        if self._dirty:
            self._write_snapshot()

    def close(self) -> None:
        """Write the snapshot if it is behind (while the journal is open, so that the
        snapshot says how much of it it covers), then fsync and close the journal."""
        try:
            self.flush()
        finally:
            if self._journal is not None:
                journal, self._journal = self._journal, None
                journal.close()

    # ----- loading and rebuilding

    def _load_snapshot(self, damage: List[str]) -> Tuple[Optional[RunState], bool]:
        try:
            with open(self.snapshot_path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return None, False
        try:
            return decode_snapshot(raw, self.snapshot_path), False
        except Damaged as bad:
            if self.recover == STRICT:
                raise StateError(f"the state snapshot is damaged ({bad.reason})",
                                 self.snapshot_path, FIX_REBUILD) from None
            damage.append(f"{self._show(self.snapshot_path)}: {bad.reason}")
            return None, True

    def _replay(self, state: RunState, events: JournalEvents, path: str,
                damage: List[str]) -> Optional[int]:
        """Apply the journal's events newer than `state`; the index of the first event that
        does not apply (the journal is cut there on repair), or None."""
        if events.bad_line is not None:
            if self.recover == STRICT:
                raise bad_line_error(events, path)
            damage.append(f"{self._show(path)}:{events.bad_line}: {events.bad_reason}")
        elif events.torn:
            damage.append(f"{self._show(path)}:{events.line_count + 1}: torn last line")
        for index, event in enumerate(events):
            if (event.get("seq") or 0) <= state.seq:
                continue
            try:
                state.apply(event)
            except ValueError as exc:
                where = f"{path}:{events.lines[index]}"
                if self.recover == STRICT:
                    raise StateError(f"the run journal does not follow from the snapshot "
                                     f"({exc})", where, FIX_REBUILD) from None
                damage.append(f"{self._show(where)}: does not follow ({exc})")
                return index
        return None

    def _rebuilt(self, state: RunState, damage: List[str], snapshot_damaged: bool,
                 path: str, events: Optional[JournalEvents], cut: Optional[int]) -> None:
        """Finish a rebuild: tasks.md's checked tasks are done; repair the files if asked;
        say what happened in one warning line."""
        if state.run_id is not None:
            self._mark_checked_done(state)
        what = f"spec {self.spec}: damaged state ({'; '.join(damage)})"
        if self.recover != REPAIR:   # STRICT: only a torn last line gets here
            self.warnings.append(f"{what}; ignored that line" if self.recover == STRICT else
                                 f"{what}; showing the state rebuilt from the run journal and "
                                 f"tasks.md (`qw reset {self.spec}` repairs the files)")
            return
        from qw.backup import set_aside   # backup imports this module

        now = self._wall_clock()
        try:
            if events is not None and (events.bad_line or events.torn or cut is not None):
                keep = events.starts[cut] if cut is not None else events.good_end
                with open(path, "rb") as f:
                    data = f.read()
                run = os.path.basename(os.path.dirname(path))
                self.set_aside.append(set_aside(self.qw_dir, path, f"{run}-events.jsonl",
                                                now, copy=True))
                atomic_write(path, data[:keep])
            if snapshot_damaged:
                self.set_aside.append(set_aside(self.qw_dir, self.snapshot_path,
                                                self.spec + ".json", now))
        except OSError as exc:
            raise write_error(exc, exc.filename or self.qw_dir) from None
        # Nothing rebuilt: an empty snapshot, so that this journal is not tried again.
        self.state = state if state.run_id is not None else RunState(self.spec)
        self._write_snapshot()
        moved = ", ".join(self._show(p) for p in self.set_aside)
        action = ("rebuilt the state from the run journal and tasks.md"
                  if state.run_id is not None else "nothing to rebuild it from")
        self.warnings.append(f"{what}; " + (f"set aside as {moved}; " if moved else "") + action)

    def _mark_checked_done(self, state: RunState) -> None:
        if not self.tasks_path:
            return
        from qw.specdir import read_text
        from qw.tasks import parse_tasks

        try:
            tasks = parse_tasks(read_text(self.tasks_path), self.tasks_path)
        except QwError:   # a broken tasks.md: the journal alone, then
            return
        mark_checked_done(state, [t.id for t in tasks if t.status == DONE], self._wall_clock())

    def _show(self, path: str) -> str:
        """`path` (inside .qw/) as the user sees it: relative to the repository."""
        return os.path.relpath(path, os.path.dirname(os.path.abspath(self.qw_dir)))

    # ----- writing

    def _loaded(self) -> RunState:
        if self.state is None:
            self.load()   # raises StateError (e.g. a newer format): never overwrite that
        assert self.state is not None
        return self.state

    def _writable(self) -> RunState:
        if self.recover == IN_MEMORY:
            raise ValueError("this state store was loaded in memory only: it is read-only")
        return self._loaded()

    def _switch_journal(self, run_id: Optional[str]) -> None:
        if self._journal is not None and self._journal_run != run_id:
            journal, self._journal = self._journal, None
            journal.close()

    def _journal_for(self, run_id: Optional[str]) -> Journal:
        if self._journal is None:
            assert run_id is not None
            path = self.journal_path(run_id)
            try:
                self._journal = Journal(path, {"spec": self.spec, "run_id": run_id},
                                        write=self._journal_write)
            except OSError as exc:
                raise write_error(exc, path) from None
            self._journal_run = run_id
        return self._journal

    def _write_snapshot(self) -> None:
        assert self.state is not None
        began = self._clock()
        try:
            os.makedirs(os.path.dirname(self.snapshot_path), exist_ok=True)
            journal = self._journal if self._journal_run == self.state.run_id else None
            covered = journal.size if journal is not None else None
            self._write_file(self.snapshot_path, encode_snapshot(self.state, covered))
        except OSError as exc:
            raise write_error(exc, self.snapshot_path) from None
        took = self._clock() - began
        self._snapshot_due = began + took + max(self.snapshot_interval, SNAPSHOT_SPACING * took)
        self._dirty = False

    def _try_snapshot(self) -> None:
        # The journal holds every event; flush() and close() report a failure.
        with contextlib.suppress(StateError):
            self._write_snapshot()


def live_pointer_path(qw_dir: str, spec: str) -> str:
    """The pointer a live run's state owner keeps to itself (qw.stateowner): there only
    while a run of the spec is live, so its absence answers "is one live?" cheaply."""
    return os.path.join(qw_dir, "state", spec + ".live")


def mark_checked_done(state: RunState, checked: Iterable[str], now: float) -> List[str]:
    """Apply what a rebuild knows from tasks.md: every task of `state` in `checked` (ticked
    there) is done, an open attempt of it ended as interrupted first. Returns the ids it
    changed. (The runner ticks a task before it records task_done, so a lost task_done
    is found again here.)"""
    changed = []
    for task_id in checked:
        rec = state.tasks.get(task_id)
        if rec is None or rec.status == DONE:
            continue
        if rec.attempt_open:
            state.apply({"type": "task_status", "t": now, "task": task_id, "status": PENDING,
                         "reason": INTERRUPTED})
        state.apply({"type": "task_status", "t": now, "task": task_id, "status": DONE,
                     "reason": "checked in tasks.md"})
        changed.append(task_id)
    return changed


def _plain(event: Dict[str, Any]) -> bool:
    """Every key a str and every value a str, int, float, bool or None (exactly those
    types: a subclass may encode otherwise), so that JSON gives the event back as it is."""
    return all(type(k) is str and type(v) in _PLAIN_TYPES for k, v in event.items())
