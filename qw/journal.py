"""qw's files on disk (DESIGN §2, §8): atomic file writes and the run journal.

    .qw/runs/<run-id>/events.jsonl   journal: one JSON event per line, append-only

A transition costs one appended line. Damage is detected, never trusted: a journal line
ends with "c", the crc32 of the line without it, and a journal opens with a header line
(format, spec, run). qw.statestore puts the journal and the snapshot together as a spec's
state, and decides what to do with damage.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import stat
import time
import zlib
from typing import Any, Callable, Dict, List, Optional

from qw.errors import StateError
from qw.state import Damaged, refuse_newer

JOURNAL_FORMAT = 1
# What to do about a bad line (the reset and restore commands apply to the whole state).
FIX_REBUILD = "run `qw reset SPEC` to rebuild the state from what is sound, or restore a " \
              "backup (`qw backup list`)"

_O_BINARY = getattr(os, "O_BINARY", 0)   # Windows: no newline translation
_CHECKSUM_TAIL = re.compile(rb',"c":(\d{1,10})\}\Z')
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
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.urandom(4).hex()}.tmp")
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
    # os.urandom, as secrets.token_hex does, without importing secrets (hmac, random...)
    # into every `qw status`.
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)) + "-" + os.urandom(2).hex()


def write_error(exc: OSError, path: str) -> StateError:
    """The user's view of a failed write: a full disk says so and what to do."""
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return StateError(f"disk full writing {path}", None, "free space and run again")
    return StateError(f"cannot write {path} ({exc.strerror or exc})", None,
                      "check that .qw/ is writable")


# json.dumps builds a new encoder for every call with options other than its defaults;
# the state owner encodes every transition, so one is built here, once.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def encode_event(event: Dict[str, Any]) -> bytes:
    """One event as JSON on one line (JSON escapes newlines inside strings), no checksum."""
    return _ENCODER.encode(event).encode("utf-8") + b"\n"


def encode_line(event: Dict[str, Any], encoded: Optional[bytes] = None) -> bytes:
    """One journal line: `encode_event` with the crc32 of that text added as "c", last.
    `encoded`: encode_event(event), when the caller has it already."""
    if not event:
        raise ValueError("an event has at least a type")
    body = (encoded if encoded is not None else encode_event(event))[:-1]
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

    def append(self, event: Dict[str, Any], encoded: Optional[bytes] = None) -> None:
        """Append one event as one line (ValueError/TypeError if it is not JSON-able;
        StateError, with the file unchanged, if it cannot be written). `encoded`:
        encode_event(event), when the caller has it already."""
        if self._fd is None:
            raise ValueError(f"journal {self.path} is closed")
        self._append_line(encode_line(event, encoded))
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
            raise bad_line_error(events, path)
        return events

    @property
    def size(self) -> Optional[int]:
        """The bytes of whole lines in the file (None once closed)."""
        return self._size if self._fd is not None else None

    @staticmethod
    def scan(path: str, start: int = 0) -> JournalEvents:
        """The file's events up to its first bad line, which `.bad_line` reports.
        StateError if a newer qw wrote it.

        `start`: skip the lines before this offset (a snapshot covers them), when it is
        where a line starts; anything else reads the whole file."""
        with open(path, "rb") as f:
            data = f.read()
        events = JournalEvents()
        if 0 < start <= len(data) and data[start - 1:start] == b"\n":
            first = _first_event(data[:data.find(b"\n") + 1])
            if first is not None and _is_header(first):
                refuse_newer("the run journal", first["format"], JOURNAL_FORMAT, path)
            events.line_count = data.count(b"\n", 0, start)
            events.good_end = start
        else:
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


def bad_line_error(events: JournalEvents, path: str) -> StateError:
    """The StateError for the first bad line of a journal `scan` read."""
    return StateError(f"the run journal has a bad line ({events.bad_reason})",
                      f"{path}:{events.bad_line}", FIX_REBUILD)


def _first_event(data: bytes) -> Optional[Dict[str, Any]]:
    try:
        return decode_line(data.split(b"\n", 1)[0])
    except Damaged:
        return None


def _is_header(event: Dict[str, Any]) -> bool:
    fmt = event.get("format")
    return event.get("journal") == "qw" and isinstance(fmt, int) and not isinstance(fmt, bool)


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
