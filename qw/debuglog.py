"""The debug log: one JSON object per line, written on every transition of a run when
`[logging] level = "debug"` (`--debug` and `QW_DEBUG=1` set that key; see qw.config).

    {"ts": 1763709480.123, "level": "debug", "run_id": "20251121-071800-ab12",
     "task_id": "2.1", "attempt": 1, "msg": "attempt started", "worker": 3}

`ts`, `level`, `run_id`, `task_id`, `attempt` and `msg` are on every line (null where they
do not apply), then the caller's extra fields. Logging is for diagnosing a run, so it must
never break one: a line that cannot be written is counted in `write_errors` and dropped.
Each line is one os.write on an O_APPEND descriptor, so processes of one run can share the
file (spawned workers get a copy of the log that reopens it on first use).
"""

from __future__ import annotations

import json
import os
import time
import traceback
from typing import Any, Callable, Dict, Optional

DEBUG, INFO, WARNING, ERROR = "debug", "info", "warning", "error"
_CORE = ("ts", "level", "run_id", "task_id", "attempt", "msg")


def enabled(config: Any) -> bool:
    """True when the config asks for the debug log (`[logging] level = "debug"`)."""
    logging = getattr(config, "logging", None)
    return str(getattr(logging, "level", "")).lower() == DEBUG


def debug_log_path(qw_dir: str, run_id: str) -> str:
    """Where a run's debug log goes: next to its journal and transcripts."""
    return os.path.join(qw_dir, "runs", run_id, "debug.jsonl")


class DebugLog:
    """Appends JSON lines to `path`; the file (and its folder) is created on first use.

        log = DebugLog(debug_log_path(qw_dir, run_id), run_id=run_id)
        log.debug("attempt started", task_id="2.1", attempt=1, worker=3)
    """

    def __init__(self, path: str, run_id: Optional[str] = None,
                 clock: Callable[[], float] = time.time):
        self.path = os.fspath(path)
        self.run_id = run_id
        self.write_errors = 0          # lines that could not be written
        self._clock = clock
        self._fd: Optional[int] = None

    def log(self, level: str, msg: str, *, task_id: Optional[str] = None,
            attempt: Optional[int] = None, **extra: Any) -> None:
        """Write one line. Never raises: a failure is counted in `write_errors`."""
        try:
            line: Dict[str, Any] = {"ts": round(self._clock(), 6), "level": level,
                                    "run_id": self.run_id, "task_id": task_id,
                                    "attempt": attempt, "msg": msg}
            for key, value in extra.items():
                if key not in _CORE:   # the core fields are the caller's to set by name
                    line[key] = value
            data = json.dumps(line, ensure_ascii=False, default=repr,
                              separators=(",", ":")).encode("utf-8", "replace") + b"\n"
            if self._fd is None:
                os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT
                                   | getattr(os, "O_BINARY", 0), 0o666)
            written = os.write(self._fd, data)
            if written != len(data):   # a full disk: the rest would only make a torn line
                raise OSError("short write")
        except Exception:
            self.write_errors += 1

    def debug(self, msg: str, **fields: Any) -> None:
        self.log(DEBUG, msg, **fields)

    def info(self, msg: str, **fields: Any) -> None:
        self.log(INFO, msg, **fields)

    def warning(self, msg: str, **fields: Any) -> None:
        self.log(WARNING, msg, **fields)

    def error(self, msg: str, **fields: Any) -> None:
        self.log(ERROR, msg, **fields)

    def exception(self, msg: str, exc: BaseException, **fields: Any) -> None:
        """An error line with the exception's type, text and traceback."""
        try:
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        except Exception:   # an exception whose str() fails, say
            text = repr(exc)
        self.log(ERROR, msg, error=type(exc).__name__, traceback=text, **fields)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:
                self.write_errors += 1

    def __getstate__(self) -> Dict[str, Any]:
        # A descriptor means nothing in another process: the copy reopens the file.
        return dict(self.__dict__, _fd=None)

    def __enter__(self) -> "DebugLog":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class NullLog(DebugLog):
    """The log when debug logging is off: every call is a no-op, so callers need no `if`."""

    def __init__(self) -> None:
        super().__init__(os.devnull)

    def log(self, level: str, msg: str, *, task_id: Optional[str] = None,
            attempt: Optional[int] = None, **extra: Any) -> None:
        pass


def open_log(config: Any, qw_dir: str, run_id: str) -> DebugLog:
    """The run's debug log if the config enables it, else a NullLog."""
    return DebugLog(debug_log_path(qw_dir, run_id), run_id=run_id) if enabled(config) \
        else NullLog()
