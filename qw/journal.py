"""qw's state on disk (DESIGN §2, §8): atomic file writes, the journal, the snapshot.

    .qw/runs/<run-id>/events.jsonl   journal: one JSON event per line, append-only
    .qw/state/<spec>.json            snapshot: the spec's latest RunState, rewritten atomically

Each transition costs one appended line; the snapshot, which grows with the spec, is
rewritten at most once per `snapshot_interval` and when a run starts or ends. Loading reads
the snapshot and replays the journal lines it has not seen yet, so it is exact either way.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import time
from typing import Any, Callable, Dict, List, Optional

from qw.errors import StateError
from qw.state import RunState

_O_BINARY = getattr(os, "O_BINARY", 0)   # Windows: no newline translation


def atomic_write(path: str, data: bytes, mode: Optional[int] = None) -> None:
    """Replace `path` with `data`: readers see the old bytes or the new, never a mix, even
    across a crash; on failure no temporary file is left. `mode` sets the permission bits
    (a new file is created with them, so 0o600 is never readable by others); by default an
    existing file keeps its mode and a new one gets the umask's."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    chmod_to = mode
    if chmod_to is None:
        try:
            chmod_to = stat.S_IMODE(os.stat(path).st_mode)
        except FileNotFoundError:
            pass
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY,
                 0o666 if mode is None else mode)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if chmod_to is not None:
            os.chmod(tmp, chmod_to)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)


def new_run_id(now: float) -> str:
    """A run id like 20261121-071800-ab12: UTC time (so ids sort by start), a random tag."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)) + "-" + secrets.token_hex(2)


def encode_event(event: Dict[str, Any]) -> bytes:
    """One journal line. JSON escapes newlines inside strings, so it is one line."""
    text = json.dumps(event, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.encode("utf-8") + b"\n"


class JournalEvents(list):
    """The events of a journal file, in order; `torn` is the unfinished last line, if any
    (a writer died mid-line; that event never happened)."""

    torn: Optional[bytes] = None


class Journal:
    """An append-only file of JSON lines. An event is in the journal once its newline is.

    Every append is one os.write on an O_APPEND descriptor: nothing waits in a buffer, so a
    killed process loses nothing it appended. fsync (surviving a power cut) happens on
    run_ended and on close, not per event: that would cost milliseconds per transition.
    """

    def __init__(self, path: str):
        self.path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        created = not os.path.exists(self.path)
        self._fd: Optional[int] = os.open(
            self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | _O_BINARY, 0o666)
        if created:
            _fsync_dir(directory)   # the new file's name survives a power cut too
        self._drop_torn_tail()

    def append(self, event: Dict[str, Any]) -> None:
        """Append one event as one line (ValueError/TypeError if it is not JSON-able)."""
        if self._fd is None:
            raise ValueError(f"journal {self.path} is closed")
        _write_all(self._fd, encode_event(event))
        if event.get("type") == "run_ended":
            os.fsync(self._fd)

    def sync(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            finally:
                os.close(self._fd)
                self._fd = None

    @staticmethod
    def read(path: str) -> JournalEvents:
        """Every complete event in the file. A torn last line is left out and reported in
        `.torn`; a bad line before the last is a StateError naming it."""
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")
        events = JournalEvents()
        tail = lines.pop()          # b"" when the file ends with a newline
        for number, line in enumerate(lines, 1):
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            if not isinstance(event, dict):
                raise StateError("the run journal has a line that is not a JSON event",
                                 f"{path}:{number}",
                                 "move the journal aside to load the last snapshot alone")
            events.append(event)
        events.torn = tail or None
        return events

    def _drop_torn_tail(self) -> None:
        """Cut an unfinished last line left by a writer that died, so that the next event
        starts a line of its own instead of gluing onto a fragment."""
        assert self._fd is not None
        size = end = os.fstat(self._fd).st_size
        while end > 0:
            start = max(0, end - 65536)
            os.lseek(self._fd, start, os.SEEK_SET)
            chunk = os.read(self._fd, end - start)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                end = start + newline + 1
                break
            end = start
        if end != size:
            os.ftruncate(self._fd, end)


class StateStore:
    """The persisted state of one spec: snapshot + the current run's journal.

    Not thread-safe; one process (the state owner) writes a spec's store at a time, which
    the spec's run lock guarantees. `clock` and `write_file` are seams for tests.
    """

    def __init__(self, qw_dir: str, spec: str, snapshot_interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 write_file: Callable[[str, bytes], None] = atomic_write):
        self.qw_dir = os.fspath(qw_dir)
        self.spec = spec
        self.snapshot_path = os.path.join(self.qw_dir, "state", spec + ".json")
        self.snapshot_interval = snapshot_interval
        self.state: Optional[RunState] = None   # set by load()
        self.torn: Optional[bytes] = None        # a torn journal line load() skipped
        self._clock = clock
        self._write_file = write_file
        self._journal: Optional[Journal] = None
        self._journal_run: Optional[str] = None
        self._last_snapshot = float("-inf")
        self._dirty = False

    def journal_path(self, run_id: str) -> str:
        return os.path.join(self.qw_dir, "runs", run_id, "events.jsonl")

    def load(self) -> Optional[RunState]:
        """The stored state (snapshot, then the newer events of its run's journal), or None
        if the spec has none. StateError if it cannot be read; it is then left untouched."""
        try:
            with open(self.snapshot_path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            self.state = RunState(self.spec)
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            raise StateError("the state snapshot is not valid JSON", self.snapshot_path,
                             "restore it from .qw/backups, or delete it to forget the "
                             "last run") from None
        state = RunState.from_snapshot(data, where=self.snapshot_path)
        if state.run_id:
            path = self.journal_path(state.run_id)
            if os.path.exists(path):
                events = Journal.read(path)
                self.torn = events.torn
                self._replay_after_snapshot(state, events, path)
        self.state = state
        return state

    def record(self, event: Dict[str, Any]) -> None:
        """Apply the event (ValueError if illegal: then nothing is written), append it to the
        run's journal with the next seq, and refresh the snapshot if it is due."""
        state = self._loaded()
        # Apply exactly what the journal will hold (JSON turns tuples into lists...), so
        # that a replay rebuilds this very state.
        event = json.loads(encode_event(dict(event, seq=state.seq + 1)))
        state.apply(event)
        self._dirty = True
        if event["type"] == "run_started":
            self._switch_journal(state.run_id)
            # Snapshot before the first journal line: the snapshot names the run whose
            # journal load() must replay, so no line of the new run can be missed.
            self._write_snapshot()
            self._journal_for(state.run_id).append(event)
            return
        self._journal_for(state.run_id).append(event)
        if event["type"] == "run_ended" or \
                self._clock() - self._last_snapshot >= self.snapshot_interval:
            self._write_snapshot()

    def progress(self, task_id: str, info: Dict[str, Any]) -> None:
        """Live progress of a running attempt: in memory only."""
        self._loaded().apply({"type": "task_progress", "t": time.time(), "task": task_id,
                              "info": info})

    def flush(self) -> None:
        """Write the snapshot now if anything changed since the last one."""
        if self._dirty:
            self._write_snapshot()

    def close(self) -> None:
        """fsync and close the journal, write the snapshot if it is behind."""
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        self.flush()

    # ----- internals

    def _loaded(self) -> RunState:
        if self.state is None:
            self.load()   # raises StateError (e.g. a newer format): never overwrite that
        assert self.state is not None
        return self.state

    def _replay_after_snapshot(self, state: RunState, events: List[Dict[str, Any]],
                               path: str) -> None:
        for number, event in enumerate(events, 1):
            if (event.get("seq") or 0) <= state.seq:
                continue
            try:
                state.apply(event)
            except ValueError as exc:
                raise StateError(f"the run journal does not follow from the snapshot ({exc})",
                                 f"{path}:{number}",
                                 "move the journal aside to load the last snapshot alone") \
                    from None

    def _switch_journal(self, run_id: Optional[str]) -> None:
        if self._journal is not None and self._journal_run != run_id:
            self._journal.close()
            self._journal = None

    def _journal_for(self, run_id: Optional[str]) -> Journal:
        if self._journal is None:
            assert run_id is not None
            self._journal = Journal(self.journal_path(run_id))
            self._journal_run = run_id
        return self._journal

    def _write_snapshot(self) -> None:
        assert self.state is not None
        os.makedirs(os.path.dirname(self.snapshot_path), exist_ok=True)
        data = json.dumps(self.state.to_snapshot(), ensure_ascii=False,
                          separators=(",", ":"), allow_nan=False).encode("utf-8") + b"\n"
        self._write_file(self.snapshot_path, data)
        self._last_snapshot = self._clock()
        self._dirty = False


def _write_all(fd: int, data: bytes) -> None:
    """os.write until all of `data` is written (a regular file takes it in one call unless
    the disk fills or a signal interrupts; a short write is finished, never dropped)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fsync_dir(directory: str) -> None:
    """Make a rename in `directory` durable (POSIX; Windows has no directory fsync)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass   # some filesystems refuse fsync on a directory; the rename still happened
    finally:
        os.close(fd)
