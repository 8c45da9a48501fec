"""The run lock, with real files and real holder processes (and a fake msvcrt for Windows)."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest

from runhelpers import held_lock

from qw import lock
from qw.errors import EXIT_LOCKED, LockHeld, StateError
from qw.lock import SpecLock, read_holder

BOUND = 20.0


@pytest.fixture
def lock_path(tmp_path):
    return str(tmp_path / ".qw" / "locks" / "checkout.lock")


@pytest.fixture
def holder(lock_path):
    """Another process holding the lock; stopped (closing its stdin) or killed by the test."""
    with held_lock(lock_path, "run-1", BOUND) as proc:
        yield proc


def test_acquire_creates_the_directories_and_writes_who_holds_it(lock_path):
    with SpecLock(lock_path).acquire({"run_id": "r1", "argv": ["qw", "run", "checkout"]}) as held:
        assert held.held
        info = read_holder(lock_path)
        assert info["pid"] == os.getpid()
        assert info["host"] == socket.gethostname()
        assert info["run_id"] == "r1"
        assert info["argv"] == ["qw", "run", "checkout"]
        assert info["started_at"][:2] == "20"  # ISO date with its zone
    assert not held.held
    assert read_holder(lock_path) is None  # released: nobody holds it


def test_second_acquire_names_the_holder(lock_path, holder):
    with pytest.raises(LockHeld) as caught:
        SpecLock(lock_path).acquire({"run_id": "run-2"})
    info = read_holder(lock_path)
    message = str(caught.value)
    assert message.startswith("spec checkout is being run by pid %d on %s since %s, %s;"
                              % (holder.pid, info["host"], info["started_at"], lock_path))
    assert message.endswith("wait for it to finish, or stop it (kill %d)" % holder.pid)
    assert caught.value.exit_code == EXIT_LOCKED
    assert info["run_id"] == "run-1"


def test_second_acquire_in_the_same_process_fails_too(lock_path):
    with SpecLock(lock_path).acquire():
        with pytest.raises(LockHeld):
            SpecLock(lock_path).acquire()


def test_a_released_lock_can_be_taken(lock_path, holder):
    holder.stdin.close()  # the holder leaves its `with` block and exits
    assert holder.wait(BOUND) == 0
    assert read_holder(lock_path) is None
    with SpecLock(lock_path).acquire():
        pass


def test_a_dead_holder_frees_the_lock(lock_path, holder):
    holder.send_signal(signal.SIGKILL)
    assert holder.wait(BOUND) == -signal.SIGKILL
    assert read_holder(lock_path) is None  # its info is still in the file, but it is dead
    with SpecLock(lock_path).acquire({"run_id": "run-2"}):
        assert read_holder(lock_path)["run_id"] == "run-2"


def test_unreadable_holder_info_still_refuses(lock_path):
    with SpecLock(lock_path).acquire():
        Path(lock_path).write_text("not json")
        with pytest.raises(LockHeld, match="another qw process"):
            SpecLock(lock_path).acquire()


def test_a_lock_path_that_cannot_be_created_is_a_state_error(tmp_path):
    (tmp_path / ".qw").write_text("a file where the directory should be")
    with pytest.raises(StateError, match="cannot open the lock file"):
        SpecLock(str(tmp_path / ".qw" / "locks" / "x.lock")).acquire()


class FakeMsvcrt:
    """msvcrt.locking as Windows does it: byte ranges, one owner, no waiting with LK_NBLCK."""

    LK_NBLCK, LK_UNLCK = 2, 0

    def __init__(self):
        self.locked = {}  # (file identity, offset) -> fd holding it

    def locking(self, fd, mode, nbytes):
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino, os.lseek(fd, 0, os.SEEK_CUR), nbytes)
        if mode == self.LK_NBLCK:
            if key in self.locked:
                raise PermissionError(13, "Permission denied")
            self.locked[key] = fd
        elif self.locked.pop(key, None) != fd:
            raise PermissionError(13, "Permission denied")


def test_windows_locking_uses_one_byte_past_the_holder_info(lock_path):
    msvcrt = FakeMsvcrt()
    first = SpecLock(lock_path, backend=lock._MsvcrtBackend(msvcrt))
    first.acquire({"run_id": "r1"})
    ((_dev, _ino, offset, nbytes),) = msvcrt.locked
    assert (offset, nbytes) == (1 << 30, 1)
    assert read_holder(lock_path)["run_id"] == "r1"  # the info itself stays readable
    with pytest.raises(LockHeld, match="pid %d" % os.getpid()):
        SpecLock(lock_path, backend=lock._MsvcrtBackend(msvcrt)).acquire()
    first.release()
    assert msvcrt.locked == {}
    SpecLock(lock_path, backend=lock._MsvcrtBackend(msvcrt)).acquire().release()
