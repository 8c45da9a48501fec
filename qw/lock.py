"""The run lock: one qw run per spec at a time (DESIGN §2, exit code 3).

`.qw/locks/<spec>.lock` is locked with flock (POSIX) or msvcrt.locking (Windows) for as long
as a run lives. The operating system drops the lock when its holder dies, however it dies, so
a crashed run never leaves a stale lock behind. While holding it, the run writes who it is
into the file (pid, host, started_at, run_id, argv) so that the next one can say who is in
the way.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import time
from typing import Optional

from qw.errors import LockHeld, StateError

# msvcrt locks byte ranges, and a locked range cannot be read by anyone else: lock one byte
# far past the holder info instead of the info itself (Windows allows locking past EOF).
_WINDOWS_LOCK_OFFSET = 1 << 30
# A holder writes who it is just after it takes the lock: a run refused in that instant
# waits at most this long for the info rather than name nobody.
HOLDER_INFO_WAIT_S = 1.0


class _FlockBackend:
    """flock(2): a lock on the open file, released by close or by the holder's death."""

    def __init__(self):
        import fcntl
        self._fcntl = fcntl

    def try_lock(self, fd: int) -> bool:
        try:
            self._fcntl.flock(fd, self._fcntl.LOCK_EX | self._fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):
            return False
        return True

    def unlock(self, fd: int) -> None:
        self._fcntl.flock(fd, self._fcntl.LOCK_UN)


class _MsvcrtBackend:
    """msvcrt.locking on one byte past the data; `msvcrt` is injectable for tests."""

    def __init__(self, msvcrt=None):
        if msvcrt is None:
            import msvcrt
        self._msvcrt = msvcrt

    def try_lock(self, fd: int) -> bool:
        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        try:
            self._msvcrt.locking(fd, self._msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        finally:
            os.lseek(fd, 0, os.SEEK_SET)
        return True

    def unlock(self, fd: int) -> None:
        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        try:
            self._msvcrt.locking(fd, self._msvcrt.LK_UNLCK, 1)
        finally:
            os.lseek(fd, 0, os.SEEK_SET)


def _default_backend():
    return _MsvcrtBackend() if os.name == "nt" else _FlockBackend()


class SpecLock:
    """The lock file of one spec; `acquire` never waits.

        with SpecLock(".qw/locks/checkout.lock").acquire({"run_id": ..., "argv": ...}):
            ...
    """

    def __init__(self, path: str, backend=None):
        self.path = str(path)
        self._backend = backend if backend is not None else _default_backend()
        self._fd: Optional[int] = None

    @property
    def held(self) -> bool:
        """True between a successful acquire() and release()."""
        return self._fd is not None

    def acquire(self, info: Optional[dict] = None) -> "SpecLock":
        """Take the lock and write the holder info into the file (pid, host and started_at
        are filled in unless given). LockHeld, naming the holder, when another has it."""
        if self._fd is not None:
            return self
        try:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            # Not inherited by children (PEP 446): a child that outlived its run must not
            # keep the spec locked.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StateError("cannot open the lock file (%s)" % e.strerror, where=self.path,
                             fix="make .qw/ writable, or run qw where it is") from e
        if not self._backend.try_lock(fd):
            os.close(fd)
            raise _held_error(self.path, _wait_for_info(self.path))
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started_at": datetime.datetime.now().astimezone().isoformat(
                      timespec="seconds")}
        holder.update(info or {})
        try:
            _rewrite(fd, json.dumps(holder, sort_keys=True).encode() + b"\n")
        except BaseException:
            self._backend.unlock(fd)
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (the holder info is erased first). Safe to call twice."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            _rewrite(fd, b"")
            self._backend.unlock(fd)
        finally:
            os.close(fd)

    def __enter__(self) -> "SpecLock":
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


def read_holder(path: str) -> Optional[dict]:
    """Who holds the lock at `path`: the holder info, or None when nobody does.

    It does not probe the lock itself (a probe would make a run starting at that instant
    fail): a holder erases the info when it releases, and info left by a holder that died
    is recognised by its pid being gone (checked on the holder's own host only; a reused
    pid can make a dead holder look alive)."""
    info = _read_info(path)
    if not info:
        return None
    if info.get("host") == socket.gethostname() and not pid_alive(info.get("pid")):
        return None
    return info


def _wait_for_info(path: str) -> Optional[dict]:
    """The holder info at `path`, waiting up to HOLDER_INFO_WAIT_S for a holder that has
    just taken the lock to write it (None if it never does: a holder releasing it)."""
    deadline = time.monotonic() + HOLDER_INFO_WAIT_S
    while True:
        info = _read_info(path)
        if info or time.monotonic() >= deadline:
            return info
        time.sleep(0.01)   # another process's write, with nothing to wait on


def _read_info(path: str) -> Optional[dict]:
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8") or "null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def pid_alive(pid) -> bool:
    """Whether a process `pid` exists on this machine (also used for the state owner's)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    if os.name == "nt":
        # os.kill(pid, 0) would terminate the process on Windows; ask psutil when present.
        try:
            import psutil
        except ImportError:
            return True
        return psutil.pid_exists(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _rewrite(fd: int, data: bytes) -> None:
    os.lseek(fd, 0, os.SEEK_SET)
    os.ftruncate(fd, 0)
    os.write(fd, data)
    os.fsync(fd)


def _held_error(path: str, holder: Optional[dict]) -> LockHeld:
    spec = os.path.splitext(os.path.basename(path))[0]
    if not holder or "pid" not in holder:
        return LockHeld("spec %s is being run by another qw process" % spec, where=path,
                        fix="wait for it to finish")
    pid = holder["pid"]
    what = "spec %s is being run by pid %s" % (spec, pid)
    if holder.get("host"):
        what += " on %s" % holder["host"]
    if holder.get("started_at"):
        what += " since %s" % holder["started_at"]
    stop = ("taskkill /PID %s" if os.name == "nt" else "kill %s") % pid
    if holder.get("host") and holder["host"] != socket.gethostname():
        stop += " on %s" % holder["host"]
    return LockHeld(what, where=path, fix="wait for it to finish, or stop it (%s)" % stop)
