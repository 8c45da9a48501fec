"""Windows' side of qw.proctree: a Job object that kills its processes when its last handle
closes (that is, when this process exits, however), and threads that feed and drain the
child's pipes (select() does not work on Windows pipes). Only this module knows about
Windows; tests play it with a fake kernel32 (Win32) on any OS.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
from typing import Callable, Optional

from qw.proctree import KILL_WAIT, Child

JOIN_WAIT = 1.0   # seconds close() waits for a reader thread to see EOF


CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_NO_WINDOW = 0x08000000
JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE = 0x2000
JOB_OBJECT_EXTENDED_LIMIT_INFORMATION = 9  # the JOBOBJECTINFOCLASS value


class ThreadedChild(Child):
    """A child whose pipes are fed and drained by threads, with one more thread blocked
    until the tree is gone: for Windows, where select() does not work on pipes."""

    def __init__(self, pid: int, stdin, stdout, stderr, stdin_data: bytes, grace: float):
        super().__init__(pid, grace)
        self._stdin = stdin
        self._stdout = stdout
        self._stderr = stderr
        self._code: Optional[int] = None
        self._lines: queue.Queue = queue.Queue()
        self._at_eof = False
        self._exited = threading.Event()
        self._threads = [_daemon(self._feed_stdin, stdin_data, name="stdin"),
                         _daemon(self._read_stdout, name="stdout"),
                         _daemon(self._read_stderr, name="stderr"),
                         # A thread blocked until the tree is gone reports it at once, where
                         # a poll with sleeps (Popen.wait(timeout)) would lag.
                         _daemon(self._wait_for_exit, name="wait")]

    def read_line(self, timeout: float) -> Optional[bytes]:
        if self._at_eof:
            return b""
        try:
            line = self._lines.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None
        if not line:
            self._at_eof = True
        return line

    def poll(self) -> Optional[int]:
        return self._code if self._exited.is_set() else None

    def wait(self, timeout: float) -> Optional[int]:
        self._exited.wait(max(0.0, timeout))
        return self.poll()

    def close(self) -> None:
        if self.poll() is None:
            self.stop()
        stdin_thread, stdout_thread, stderr_thread, _ = self._threads
        stdin_thread.join(JOIN_WAIT)
        # A pipe is closed only once its reader is done with it; a stray that escaped and
        # still holds the pipe leaves a daemon thread behind instead of a crash.
        for thread, pipe in ((stdout_thread, self._stdout), (stderr_thread, self._stderr)):
            thread.join(JOIN_WAIT)
            if not thread.is_alive():
                pipe.close()

    def _wait_tree(self) -> int:
        """Block until the child and its tree are gone; return the exit code."""
        raise NotImplementedError

    def _wait_for_exit(self) -> None:
        self._code = self._wait_tree()
        self._exited.set()

    def _feed_stdin(self, data: bytes) -> None:
        # An OSError means the child exited without reading it all: its result will say why.
        try:
            if data:
                self._stdin.write(data)
        except OSError:
            pass
        finally:
            try:
                self._stdin.close()
            except OSError:
                pass

    def _read_stdout(self) -> None:
        try:
            for line in iter(self._stdout.readline, b""):
                self._lines.put(line)
        except (OSError, ValueError):
            pass
        self._lines.put(b"")

    def _read_stderr(self) -> None:
        try:
            for chunk in iter(lambda: self._stderr.read1(65536), b""):
                self._add_to_tail(chunk)
        except (OSError, ValueError):
            pass


class JobChild(ThreadedChild):
    """A child in a kill-on-close Job object; `pid` is the child's."""

    def __init__(self, proc: subprocess.Popen, win32, job, stdin_data: bytes, grace: float):
        self._win32 = win32
        self._job = job
        self._job_lock = threading.Lock()
        self._proc = proc
        super().__init__(proc.pid, proc.stdin, proc.stdout, proc.stderr, stdin_data, grace)

    def stop(self, grace: Optional[float] = None) -> Optional[int]:
        code = self.poll()
        if code is not None:
            return code
        grace = self._grace if grace is None else grace
        try:
            self._win32.send_ctrl_break(self.pid)
            code = self.wait(grace)
        except OSError:
            pass  # no console shared with the child: go straight to the job
        if code is None and self._job is not None:
            self._close_job()
            code = self.wait(KILL_WAIT)
        if code is None:
            self._win32.taskkill(self.pid)
            code = self.wait(KILL_WAIT)
        return code

    def _wait_tree(self) -> int:
        code = self._proc.wait()
        # What the child left in the job (a background job holding stdout open) dies with
        # it, so read_line sees EOF as soon as the child exits.
        self._close_job()
        return code

    def _close_job(self) -> None:
        with self._job_lock:
            job, self._job = self._job, None
        if job is None:
            return
        try:
            self._win32.terminate_job_object(job, 1)
        except OSError:
            pass  # closing the handle kills the job's processes too
        self._win32.close_handle(job)


def start_windows(argv: list, env: dict, cwd: str, stdin_data: bytes, grace: float,
                   win32) -> Child:
    # The job exists before the child does, so the child joins it right after it starts;
    # processes it starts later join automatically.
    job = win32.create_job_object()
    try:
        win32.set_kill_on_job_close(job)
        proc = win32.popen(argv, creationflags=CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW,
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, env=env, cwd=cwd)
    except BaseException:
        win32.close_handle(job)
        raise
    try:
        win32.assign_process_to_job_object(job, proc)
    except OSError:
        win32.close_handle(job)  # not in the job (old Windows, nested jobs): taskkill /T
        job = None
    return JobChild(proc, win32, job, stdin_data, grace)


class Win32:
    """The kernel32 calls the Windows branch makes; tests pass a fake with these methods."""

    def __init__(self):
        import ctypes
        self._ctypes = ctypes
        self._kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        self._kernel32.CreateJobObjectW.restype = ctypes.c_void_p  # a HANDLE, not an int

    def _check(self, ok) -> None:
        if not ok:
            raise self._ctypes.WinError(self._ctypes.get_last_error())

    def popen(self, argv: list, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(argv, **kwargs)

    def create_job_object(self) -> int:
        handle = self._kernel32.CreateJobObjectW(None, None)
        self._check(handle)
        return handle

    def set_kill_on_job_close(self, job: int) -> None:
        info = job_limit_struct(self._ctypes)()
        info.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
        self._check(self._kernel32.SetInformationJobObject(
            self._ctypes.c_void_p(job), JOB_OBJECT_EXTENDED_LIMIT_INFORMATION,
            self._ctypes.byref(info), self._ctypes.sizeof(info)))

    def assign_process_to_job_object(self, job: int, proc: subprocess.Popen) -> None:
        self._check(self._kernel32.AssignProcessToJobObject(
            self._ctypes.c_void_p(job), self._ctypes.c_void_p(int(proc._handle))))

    def terminate_job_object(self, job: int, exit_code: int) -> None:
        self._check(self._kernel32.TerminateJobObject(self._ctypes.c_void_p(job), exit_code))

    def close_handle(self, handle: int) -> None:
        self._kernel32.CloseHandle(self._ctypes.c_void_p(handle))

    def send_ctrl_break(self, pid: int) -> None:
        os.kill(pid, signal.CTRL_BREAK_EVENT)

    def taskkill(self, pid: int) -> None:
        subprocess.run(["taskkill", "/T", "/F", "/PID", str(pid)], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False, timeout=30)


def job_limit_struct(ctypes):
    """The JOBOBJECT_EXTENDED_LIMIT_INFORMATION structure type (144 bytes on 64-bit)."""

    class BasicLimits(ctypes.Structure):
        _fields_ = [("PerProcessUserTimeLimit", ctypes.c_int64),
                    ("PerJobUserTimeLimit", ctypes.c_int64),
                    ("LimitFlags", ctypes.c_uint32),
                    ("MinimumWorkingSetSize", ctypes.c_size_t),
                    ("MaximumWorkingSetSize", ctypes.c_size_t),
                    ("ActiveProcessLimit", ctypes.c_uint32),
                    ("Affinity", ctypes.c_size_t),
                    ("PriorityClass", ctypes.c_uint32),
                    ("SchedulingClass", ctypes.c_uint32)]

    class IoCounters(ctypes.Structure):
        _fields_ = [(name, ctypes.c_uint64) for name in (
            "ReadOperationCount", "WriteOperationCount", "OtherOperationCount",
            "ReadTransferCount", "WriteTransferCount", "OtherTransferCount")]

    class ExtendedLimits(ctypes.Structure):
        _fields_ = [("BasicLimitInformation", BasicLimits),
                    ("IoInfo", IoCounters),
                    ("ProcessMemoryLimit", ctypes.c_size_t),
                    ("JobMemoryLimit", ctypes.c_size_t),
                    ("PeakProcessMemoryUsed", ctypes.c_size_t),
                    ("PeakJobMemoryUsed", ctypes.c_size_t)]

    return ExtendedLimits


def _daemon(target: Callable, *args, name: str) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, name="qw-" + name, daemon=True)
    thread.start()
    return thread
