"""Start a child whose whole process tree dies with it, with qw, or on request (DESIGN §6).

The worker's view of one supervised child:

    start_child(argv, env=..., cwd=..., stdin_data=prompt) -> Child
        POSIX:   worker ─socket─► guard (qw.guard: own session, subreaper) ─► child ─► tree
        Windows: worker ─(job handle, kill-on-close)─► child ─► tree, all in one Job object
                 (qw.winjob)

    Child.read_line(timeout)  stdout, line by line; meanwhile stdin is fed and stderr kept
                              (POSIX: by the reading call itself, with poll(); Windows:
                              by threads, as select() does not work on its pipes)
    Child.stop(grace)         SIGINT -> grace -> SIGTERM -> grace -> SIGKILL, the whole tree
    Child.poll()/wait()       an exit code only once nothing of the tree is left
    Child.usage               then, on POSIX: (peak RSS MB of the tree's largest process,
                              CPU seconds of the whole tree), as the guard reaped them

The guard is long-lived: one per process that starts children, kept for every later child
(one more per child running at the same time; qw.guardlink keeps them). The worker makes the
child's pipes, and the guard spawns the child with them. If the worker dies, even by
SIGKILL, or exits, the guard reads EOF on its socket (Windows: the kernel closes the job
handle) and the tree is stopped the same way. The prompt goes in through stdin as the
child takes it, while its output is read, so a prompt larger than a pipe buffer cannot
deadlock the two. `preexec_fn` is never used (it is unsafe in a process with threads).
"""

from __future__ import annotations

import collections
import errno
import os
import select
import shutil
import signal
import threading
import time
from typing import Optional, Tuple

from qw import guard, guardlink

STDERR_TAIL_BYTES = 4096
KILL_WAIT = 5.0   # seconds to wait for a process after a kill that cannot be refused
# How long the guard may take beyond its two graces: the wait after SIGKILL, the final
# sweep of strays, and slack for a loaded machine.
GUARD_BOUND = 2 * guard.SWEEP_BOUND + guard.STRAY_TERM_WAIT + 2.0
# Windows has no SIGKILL; os.kill() there means TerminateProcess whatever the signal.
_SIGKILL = getattr(signal, "SIGKILL", signal.SIGTERM)


class Child:
    """One supervised child process tree.

    `pid` is the child's own pid (the root of the tree it starts); `guard_pid` the pid of
    its guard on POSIX (None on Windows). An exit code from poll(), wait() or stop() means
    the child and everything it started are gone.
    """

    guard_pid: Optional[int] = None
    # Once the tree is gone: (peak RSS in MB of its largest process, CPU seconds of all
    # of it), from the kernel's accounting of what was reaped; None where nobody reaped
    # it all (Windows; a guard that died).
    usage: Optional[Tuple[float, float]] = None

    def __init__(self, pid: int, grace: float):
        self.pid = pid
        self._grace = grace
        self._tail: collections.deque = collections.deque()
        self._tail_size = 0
        self._tail_lock = threading.Lock()

    def read_line(self, timeout: float) -> Optional[bytes]:
        """The next stdout line (with its newline); None after `timeout` s; b"" at EOF."""
        raise NotImplementedError

    def poll(self) -> Optional[int]:
        """The child's exit code (128 + n for signal n) once the tree is gone, else None."""
        raise NotImplementedError

    def wait(self, timeout: float) -> Optional[int]:
        """Like poll(), waiting at most `timeout` seconds for the tree to finish."""
        raise NotImplementedError

    def stop(self, grace: Optional[float] = None) -> Optional[int]:
        """Stop the whole tree (SIGINT, grace, SIGTERM, grace, SIGKILL) and return its exit
        code; None only if even that failed within a hard bound. `grace` defaults to the
        one given to start_child. Idempotent: a finished child just returns its code."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop the tree if it still runs and release the pipes."""
        raise NotImplementedError

    def stderr_tail(self) -> str:
        """The last ~4 KB the child wrote to stderr."""
        with self._tail_lock:
            data = b"".join(self._tail)
        return data[-STDERR_TAIL_BYTES:].decode("utf-8", "replace")

    def __enter__(self) -> "Child":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _add_to_tail(self, chunk: bytes) -> None:
        with self._tail_lock:
            self._tail.append(chunk)
            self._tail_size += len(chunk)
            while self._tail_size - len(self._tail[0]) >= STDERR_TAIL_BYTES:
                self._tail_size -= len(self._tail.popleft())


def start_child(argv: list, *, env: dict, cwd: str, stdin_data: bytes,
                grace: float = 5.0) -> Child:
    """Start `argv` as a supervised tree: stdin gets `stdin_data` then EOF, stdout and stderr
    are read as the caller reads lines and waits. `grace` is the pause between SIGINT, SIGTERM and SIGKILL when the
    tree has to be stopped, including when this process dies. FileNotFoundError when
    argv[0] is not found on env's PATH (or relative to cwd)."""
    exe = resolve_command(argv[0], env, cwd)
    if os.name == "nt":
        from qw import winjob
        return winjob.start_windows([exe] + list(argv[1:]), env, cwd, stdin_data, grace,
                                    winjob.Win32())
    return _start_posix(exe, list(argv), env, cwd, stdin_data, grace)


def prepare() -> None:
    """Get ready to start children: on POSIX, start this process's first guard now (it
    takes an interpreter's start); start_child then finds it waiting. OSError if it cannot
    be started (start_child will say so again)."""
    if os.name != "nt":
        guardlink.POOL.prestart()


def tree_pids(pid: int) -> list:
    """Pids of the living descendants of `pid`, parents first; [] when unknown."""
    if os.name != "nt":
        return guard.descendants(pid)
    try:
        import psutil
    except ImportError:
        return []
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:  # gone, or not ours to look at
        return []


def kill_marked(run_id: str, task_id: Optional[str] = None) -> list:
    """SIGKILL every process (but this one) whose environment carries QW_RUN_ID=run_id (and
    QW_TASK_ID=task_id when given): a last-resort sweep for strays. Returns the pids killed.
    Linux reads /proc; elsewhere it needs psutil and otherwise finds nothing."""
    if not run_id:
        raise ValueError("kill_marked needs a run id")  # "" would match unmarked strays
    wanted = {b"QW_RUN_ID=" + run_id.encode()}
    if task_id is not None:
        wanted.add(b"QW_TASK_ID=" + task_id.encode())
    killed = []
    for pid, environ in _environments():
        if pid != os.getpid() and wanted <= environ:
            try:
                os.kill(pid, _SIGKILL)
            except OSError:
                continue
            killed.append(pid)
    return killed


def resolve_command(command: str, env: dict, cwd: str) -> str:
    """The executable start_child would run for `command` (FileNotFoundError if none)."""
    if os.path.dirname(command):
        found = shutil.which(os.path.join(cwd, command))
    else:
        path = next((v for k, v in env.items() if k.upper() == "PATH"), os.defpath)
        found = shutil.which(command, path=path)
    if found is None:
        raise FileNotFoundError(errno.ENOENT, "command not found (PATH and cwd %s)" % cwd,
                                command)
    return found


def _environments():
    """(pid, set of b"NAME=value") for every process whose environment is readable."""
    if os.path.isdir("/proc/self"):
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open("/proc/%s/environ" % name, "rb") as f:
                        yield int(name), set(f.read().split(b"\0"))
                except OSError:
                    continue  # gone, or not ours to read
        return
    try:
        import psutil
    except ImportError:
        return
    for proc in psutil.process_iter():
        try:
            yield proc.pid, {("%s=%s" % kv).encode() for kv in proc.environ().items()}
        except psutil.Error:
            continue


# ---------------------------------------------------------------------------------------
# POSIX: a guard process (qw/guard.py, reached through qw/guardlink.py) owns the tree.

class _GuardedChild(Child):
    """A child under a guard process, which reports the end of its tree over `link`.

    No threads: whenever the caller reads or waits, one poll() over the child's stdout and
    stderr, the guard's socket and (while the prompt is not all in) stdin moves whatever is
    ready. Four threads per child cost more than a quick child itself, and on a busy
    machine each one's start waited for the scheduler. A caller that does not read for a
    while only leaves the child waiting on a full pipe."""

    def __init__(self, link, pid: int, fds: Tuple[int, int, int], stdin_data: bytes,
                 grace: float):
        super().__init__(pid, grace)
        self._link = link
        self._link_released = False
        self.guard_pid = link.pid
        self._stdin, self._stdout, self._stderr = fds   # -1 once closed
        for fd in fds:
            os.set_blocking(fd, False)
        self._prompt = memoryview(stdin_data)   # what stdin has yet to take
        self._partial = bytearray()             # stdout after its last newline
        self._lines: collections.deque = collections.deque()   # then b"" for EOF
        self._code: Optional[int] = None
        self._feed()   # most prompts fit in the pipe at once

    def read_line(self, timeout: float) -> Optional[bytes]:
        deadline = time.monotonic() + max(0.0, timeout)
        while not self._lines:
            self._pump(deadline - time.monotonic())
            if not self._lines and time.monotonic() >= deadline:
                return None
        line = self._lines[0]
        if line:   # EOF stays at the head: every later read sees it too
            self._lines.popleft()
        return line

    def poll(self) -> Optional[int]:
        if self._code is None:
            self._pump(0.0)
        return self._code

    def wait(self, timeout: float) -> Optional[int]:
        deadline = time.monotonic() + max(0.0, timeout)
        while self._code is None:
            left = deadline - time.monotonic()
            self._pump(left)
            if left <= 0:
                break
        return self._code

    def stop(self, grace: Optional[float] = None) -> Optional[int]:
        code = self.poll()
        if code is not None:
            return code
        grace = self._grace if grace is None else grace
        self._link.stop(grace)
        # The guard's own worst case: two graces, the SIGKILL wait and its final sweep.
        code = self.wait(2 * grace + GUARD_BOUND)
        if code is None:  # the guard itself is stuck: without it, the tree dies from here
            self._link.kill()  # with what the guard took in as a subreaper, first
            code = self.wait(2 * KILL_WAIT)
        return code

    def stderr_tail(self) -> str:
        if self._code is not None:
            self._drain_stderr()   # the tree is gone: what it wrote last is all there
        return super().stderr_tail()

    def close(self) -> None:
        if self.poll() is None:
            self.stop()
        # A stray that escaped and still holds a pipe gets EPIPE or EOF, not a hang here.
        for name in ("_stdin", "_stdout", "_stderr"):
            self._close(name)
        if not self._link_released:
            self._link_released = True
            guardlink.POOL.release(self._link)  # kept only if the guard is idle and well

    def _pump(self, timeout: float) -> None:
        """Wait at most `timeout` seconds for the pipes or the guard; move what is ready."""
        poller = select.poll()
        handlers = {}
        for fd, events, handler in ((self._stdout, select.POLLIN, self._read_stdout),
                                    (self._stderr, select.POLLIN, self._read_stderr),
                                    (self._stdin, select.POLLOUT, self._feed)):
            if fd >= 0:
                poller.register(fd, events)
                handlers[fd] = handler
        if self._code is None:
            poller.register(self._link.fileno(), select.POLLIN)
            handlers[self._link.fileno()] = self._read_guard
        if not handlers:
            return
        for fd, _event in poller.poll(max(0.0, timeout) * 1000):
            handlers[fd]()

    def _feed(self) -> None:
        """Write what stdin takes now of the prompt; close it once all is in."""
        try:
            while self._prompt:
                self._prompt = self._prompt[os.write(self._stdin, self._prompt):]
        except BlockingIOError:
            return   # full: poll() says when there is room again
        except OSError:
            pass     # the child exited without reading it all: its result will say why
        self._close("_stdin")

    def _read_stdout(self) -> None:
        data = self._read("_stdout")
        if data is None:
            return
        if not data:
            if self._partial:
                self._lines.append(bytes(self._partial))
            self._lines.append(b"")
            return
        last = data.rfind(b"\n")
        if last < 0:
            self._partial += data
            return
        self._partial += data[:last]
        self._lines.extend(line + b"\n" for line in bytes(self._partial).split(b"\n"))
        self._partial = bytearray(data[last + 1:])

    def _read_stderr(self) -> None:
        data = self._read("_stderr")
        if data:
            self._add_to_tail(data)

    def _drain_stderr(self) -> None:
        while self._stderr >= 0:
            data = self._read("_stderr")
            if not data:
                return   # EOF (closed), or a stray outside the tree still holds it
            self._add_to_tail(data)

    def _read(self, name: str) -> Optional[bytes]:
        """A chunk from the pipe named; b"" at EOF (the pipe is closed then); None when
        nothing is there yet."""
        try:
            data = os.read(getattr(self, name), 65536)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        if not data:
            self._close(name)
        return data

    def _close(self, name: str) -> None:
        fd = getattr(self, name)
        if fd >= 0:
            setattr(self, name, -1)
            os.close(fd)

    def _read_guard(self) -> None:
        for word, rest in self._link.replies_now():
            if word == "exited":
                self._code, self.usage = guard.parse_exited(rest)
            elif word == "note":
                self._add_to_tail(rest.encode("utf-8") + b"\n")
            elif word is None and self._code is None:
                self._code = self._guard_lost()

    def _guard_lost(self) -> int:
        """The guard died (killed, or failed) while the tree may still run, or its socket
        failed here while it lives (then what it took in as a subreaper dies with it):
        kill the tree from here; the exit code of a SIGKILL."""
        self._link.kill()
        pids = [self.pid] + tree_pids(self.pid)
        guard.kill_quietly(-self.pid, signal.SIGKILL)  # the child's process group
        for pid in pids:
            guard.kill_quietly(pid, signal.SIGKILL)
        _wait_gone(pids, KILL_WAIT)
        return 128 + signal.SIGKILL


def _wait_gone(pids: list, timeout: float) -> None:
    """Wait (bounded) until none of `pids` is alive. They are not our children, so there
    is no handle to block on: look every 20 ms."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        table = guard.process_table()
        if not any(pid in table and table[pid][1] != "Z" for pid in pids):
            return
        time.sleep(0.02)


def _start_posix(exe: str, argv: list, env: dict, cwd: str, stdin_data: bytes,
                 grace: float) -> Child:
    # The child's ends go to the guard and are closed here, so that EOF on stdout means
    # the child's tree closed it. All six are close-on-exec: no other child inherits them.
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    stderr_r, stderr_w = os.pipe()
    try:
        link, pid = guardlink.POOL.start(os.path.abspath(exe), argv, env,
                                         os.path.abspath(cwd), grace,
                                         (stdin_r, stdout_w, stderr_w))
    except BaseException:
        for fd in (stdin_w, stdout_r, stderr_r):
            os.close(fd)
        raise
    finally:
        for fd in (stdin_r, stdout_w, stderr_w):
            os.close(fd)
    return _GuardedChild(link, pid, (stdin_w, stdout_r, stderr_r), stdin_data, grace)
