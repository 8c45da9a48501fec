"""qw's state on disk (DESIGN §2, §8): atomic file writes, the journal, the snapshot.

    .qw/runs/<run-id>/events.jsonl   journal: one JSON event per line, append-only
    .qw/state/<spec>.json            snapshot: the spec's latest RunState, rewritten atomically

A transition costs one appended line; the snapshot is rewritten when a run starts or ends,
else at most once per `snapshot_interval` or SNAPSHOT_SPACING times its last write's time.
Loading reads the snapshot and replays the journal lines it has not seen yet: exact anyway.

Damage is detected, never trusted: a journal line ends with "c", the crc32 of the line
without it; a store's journal opens with a header line (format, spec, run); a snapshot
holds a sha256 of its body (qw.state). `StateStore.load` meets damage as `recover` says:

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
import errno
import json
import os
import re
import secrets
import stat
import time
import zlib
from typing import Any, Callable, Dict, List, Optional, Tuple

from qw.errors import QwError, StateError
from qw.state import (DONE, RunState, Damaged, decode_snapshot, encode_snapshot,
                      mark_checked_done, refuse_newer)

JOURNAL_FORMAT = 1
SNAPSHOT_SPACING = 10.0   # a big state must not hold the state owner's lock most of the time
STRICT, IN_MEMORY, REPAIR = "strict", "in_memory", "repair"
RECOVER_MODES = (STRICT, IN_MEMORY, REPAIR)

_O_BINARY = getattr(os, "O_BINARY", 0)   # Windows: no newline translation
_CHECKSUM_TAIL = re.compile(rb',"c":(\d{1,10})\}\Z')
_FIX_REBUILD = "run `qw reset SPEC` to rebuild the state from what is sound, or restore a " \
               "backup (`qw backup list`)"
Writer = Callable[[int, bytes], int]


def atomic_write(path: str, data: bytes, mode: Optional[int] = None) -> None:
    """Replace `path` with `data`: readers see the old bytes or the new, never a mix, even
    across a crash; on failure no temporary file is left. `mode` sets the permission bits
    (a new file is created with them, so 0o600 is never readable by others); by default an
    existing file keeps its mode and a new one gets the umask's."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    chmod_to = mode
    if chmod_to is None:
        with contextlib.suppress(FileNotFoundError):
            chmod_to = stat.S_IMODE(os.stat(path).st_mode)
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
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def new_run_id(now: float) -> str:
    """A run id like 20261121-071800-ab12: UTC time (so ids sort by start), a random tag."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)) + "-" + secrets.token_hex(2)


def write_error(exc: OSError, path: str) -> StateError:
    """The user's view of a failed write: a full disk says so and what to do."""
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return StateError(f"disk full writing {path}", None, "free space and run again")
    return StateError(f"cannot write {path} ({exc.strerror or exc})", None,
                      "check that .qw/ is writable")


def encode_event(event: Dict[str, Any]) -> bytes:
    """One event as JSON on one line (JSON escapes newlines inside strings), no checksum."""
    text = json.dumps(event, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.encode("utf-8") + b"\n"


def encode_line(event: Dict[str, Any]) -> bytes:
    """One journal line: `encode_event` with the crc32 of that text added as "c", last."""
    if not event:
        raise ValueError("an event has at least a type")
    body = encode_event(event)[:-1]
    return body[:-1] + b',"c":%d}\n' % zlib.crc32(body)


def decode_line(line: bytes) -> Dict[str, Any]:
    """The event on one journal line (without its "c"). Damaged if it fails its checksum or
    is not a JSON object; a line without "c" is taken as it is (older lines have none)."""
    match = _CHECKSUM_TAIL.search(line)
    if match:
        line = line[:match.start()] + b"}"
        if zlib.crc32(line) != int(match.group(1)):
            raise Damaged("checksum mismatch")
    try:
        event = json.loads(line)
    except ValueError:
        event = None
    if not isinstance(event, dict):
        raise Damaged("not a JSON event")
    return event


class JournalEvents(list):
    """A journal file's events, in order, up to its first bad line (`bad_line`, `bad_reason`;
    nothing after it is read). `torn`: an unfinished last line (a writer died mid-line; that
    event never happened). `lines[i]`/`starts[i]`: event i's line number and byte offset;
    `good_end`: the offset past the last line read; `line_count`: lines read, header too."""

    torn: Optional[bytes] = None
    bad_line: Optional[int] = None
    bad_reason: Optional[str] = None
    good_end = 0
    line_count = 0

    def __init__(self) -> None:
        super().__init__()
        self.lines: List[int] = []
        self.starts: List[int] = []


class Journal:
    """An append-only file of JSON lines. An event is in the journal once its newline is.

    Every append is one os.write on an O_APPEND descriptor: nothing waits in a buffer, so a
    killed process loses nothing it appended. fsync (surviving a power cut) happens on
    run_ended and on close, not per event: that would cost milliseconds per transition.
    A failed append (a full disk) cuts what it wrote: the file stays whole lines. `header`
    (spec, run_id) opens a new file; `write` is a seam for tests (os.write's signature).
    """

    def __init__(self, path: str, header: Optional[Dict[str, Any]] = None,
                 write: Writer = os.write):
        self.path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        created = not os.path.exists(self.path)
        self._write = write
        self._fd: Optional[int] = os.open(
            self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | _O_BINARY, 0o666)
        try:
            if created:
                fsync_dir(directory)   # the new file's name survives a power cut too
            self._refuse_newer()        # before cutting anything in it
            self._drop_torn_tail()
            self._size = os.fstat(self._fd).st_size
            if self._size == 0 and header is not None:
                self._append_line(encode_line(
                    {"journal": "qw", "format": JOURNAL_FORMAT, **header}))
        except BaseException:
            self._release()
            raise

    def append(self, event: Dict[str, Any]) -> None:
        """Append one event as one line (ValueError/TypeError if it is not JSON-able;
        StateError, with the file unchanged, if it cannot be written)."""
        if self._fd is None:
            raise ValueError(f"journal {self.path} is closed")
        self._append_line(encode_line(event))
        if event.get("type") == "run_ended":
            self.sync()

    def sync(self) -> None:
        try:
            if self._fd is not None:
                os.fsync(self._fd)
        except OSError as exc:
            raise write_error(exc, self.path) from None

    def close(self) -> None:
        try:
            self.sync()
        finally:
            self._release()

    @staticmethod
    def read(path: str) -> JournalEvents:
        """Every complete event in the file. A torn last line is left out and reported in
        `.torn`; a damaged line, or a file from a newer qw, is a StateError naming it."""
        events = Journal.scan(path)
        if events.bad_line is not None:
            raise _bad_line(events, path)
        return events

    @staticmethod
    def scan(path: str) -> JournalEvents:
        """The file's events up to its first bad line, which `.bad_line` reports.
        StateError if a newer qw wrote it."""
        with open(path, "rb") as f:
            data = f.read()
        events = JournalEvents()
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break
            number = events.line_count + 1
            try:
                event = decode_line(data[start:end])
            except Damaged as bad:
                events.bad_line, events.bad_reason = number, bad.reason
                return events
            if number == 1 and _is_header(event):
                refuse_newer("the run journal", event["format"], JOURNAL_FORMAT, path)
            else:
                events.append(event)
                events.lines.append(number)
                events.starts.append(start)
            events.line_count = number
            start = events.good_end = end + 1
        events.torn = data[start:] or None
        return events

    def _append_line(self, data: bytes) -> None:
        assert self._fd is not None
        try:
            _write_all(self._fd, data, self._write)
        except OSError as exc:
            try:
                os.ftruncate(self._fd, self._size)   # cut a half-written line
            except OSError:
                pass
            raise write_error(exc, self.path) from None
        self._size += len(data)

    def _refuse_newer(self) -> None:
        assert self._fd is not None
        os.lseek(self._fd, 0, os.SEEK_SET)   # reads only: appends ignore the offset
        header = _first_event(os.read(self._fd, 4096))
        if header is not None and _is_header(header):
            refuse_newer("the run journal", header["format"], JOURNAL_FORMAT, self.path)

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

    def _release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def newest_run_of(qw_dir: str, spec: str) -> Optional[str]:
    """The newest run (run ids sort by start time) whose journal is `spec`'s, as its header
    or its run_started line says; None if there is none."""
    runs = os.path.join(qw_dir, "runs")
    try:
        names = sorted(os.listdir(runs), reverse=True)
    except OSError:
        return None
    for name in names:
        try:
            with open(os.path.join(runs, name, "events.jsonl"), "rb") as f:
                first = _first_event(f.readline())
        except OSError:
            continue
        if first and (_is_header(first) or first.get("type") == "run_started") \
                and first.get("spec") == spec:
            return name
    return None


def _bad_line(events: JournalEvents, path: str) -> StateError:
    return StateError(f"the run journal has a bad line ({events.bad_reason})",
                      f"{path}:{events.bad_line}", _FIX_REBUILD)


def _first_event(data: bytes) -> Optional[Dict[str, Any]]:
    try:
        return decode_line(data.split(b"\n", 1)[0])
    except Damaged:
        return None


def _is_header(event: Dict[str, Any]) -> bool:
    fmt = event.get("format")
    return event.get("journal") == "qw" and isinstance(fmt, int) and not isinstance(fmt, bool)


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
            events = Journal.scan(path)
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
        # Apply exactly what the journal will hold (JSON turns tuples into lists...), so
        # that a replay rebuilds this very state.
        event = json.loads(encode_event(dict(event, seq=state.seq + 1)))
        point, dirty = state.savepoint(event), self._dirty
        state.apply(event)
        self._dirty = True
        try:
            if event["type"] == "run_started":
                self._switch_journal(state.run_id)
                # Snapshot before the first journal line: the snapshot names the run whose
                # journal load() must replay, so no line of the new run can be missed.
                self._write_snapshot()
            self._journal_for(state.run_id).append(event)
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
        """fsync and close the journal, write the snapshot if it is behind."""
        try:
            if self._journal is not None:
                journal, self._journal = self._journal, None
                journal.close()
        finally:
            self.flush()

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
                                 self.snapshot_path, _FIX_REBUILD) from None
            damage.append(f"{self._show(self.snapshot_path)}: {bad.reason}")
            return None, True

    def _replay(self, state: RunState, events: JournalEvents, path: str,
                damage: List[str]) -> Optional[int]:
        """Apply the journal's events newer than `state`; the index of the first event that
        does not apply (the journal is cut there on repair), or None."""
        if events.bad_line is not None:
            if self.recover == STRICT:
                raise _bad_line(events, path)
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
                                     f"({exc})", where, _FIX_REBUILD) from None
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
            self._write_file(self.snapshot_path, encode_snapshot(self.state))
        except OSError as exc:
            raise write_error(exc, self.snapshot_path) from None
        took = self._clock() - began
        self._snapshot_due = began + took + max(self.snapshot_interval, SNAPSHOT_SPACING * took)
        self._dirty = False

    def _try_snapshot(self) -> None:
        # The journal holds every event; flush() and close() report a failure.
        with contextlib.suppress(StateError):
            self._write_snapshot()


def _write_all(fd: int, data: bytes, write: Writer = os.write) -> None:
    """write until all of `data` is written (a regular file takes it in one call unless
    the disk fills or a signal interrupts; a short write is finished, never dropped)."""
    view = memoryview(data)
    while view:
        view = view[write(fd, view):]


def fsync_dir(directory: str) -> None:
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
