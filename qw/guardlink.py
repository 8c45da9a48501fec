"""The owner's side of qw.guard (DESIGN §6): the guard processes of one process. POSIX only.

    link, pid = POOL.start(exe, argv, env, cwd, grace, fds)  # fds: the child's 0, 1, 2
    link.read_reply()     ("note", text)... then ("exited", "0 RSS CPU"); (None, "") if the
                          guard died
    link.kill()           SIGKILL everything under a stuck guard, then the guard
    link.stop(grace)      SIGINT, grace, SIGTERM, grace, SIGKILL to the child's whole tree
    POOL.release(link)    after "exited": the guard waits, idle, for this process's next child
    POOL.discard(link)    EOF to the guard: it stops whatever still runs, then exits

A guard is a fork of this process on Linux when nothing else runs in it (a worker), else a
new interpreter (tens of milliseconds); either way each is kept for every later child: the
first start_child in a process starts one, and another only when all are busy (one per
child running at once; a worker runs one at a time). A guard that died is replaced.
The pool belongs to the process that made it: a forked child closes its copies of the
parent's sockets at once (so the parent's guards still see EOF when the parent dies) and
starts guards of its own. At interpreter exit the idle guards' sockets are closed and they
exit; a busy guard's socket is left for the process's exit to close (a thread may still be
reading it), and that EOF stops its tree the graceful way. If this process dies some other
way, the kernel closes them all just the same.
"""

from __future__ import annotations

import array
import atexit
import errno
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Optional, Tuple

from qw import PACKAGE_ROOT, guard

MAX_IDLE = 4              # idle guards kept; more were only needed for a burst
EXIT_WAIT = 1.0           # seconds, all told, the exit handler waits for idle guards to go
START_REPLY_WAIT = 30.0   # seconds a guard may take to answer a start before it is killed
KILL_SWEEP = 5.0          # seconds kill() may spend killing what runs under a stuck guard
# What sendmsg() fails with when the guard is gone; anything else is this side's problem.
_GONE_ERRNOS = (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN)
# -I: no PYTHON* variables or user site; -S: no site at all (its .pth files cost time).
# os._exit: the guard has nothing to finalise.
_GUARD_CODE = ("import os, sys; sys.path.insert(0, sys.argv[1]); "
               "from qw.guard import main; os._exit(main(sys.argv[2:]))")


class GuardLost(ConnectionError):
    """The guard was gone before it got the request: nothing was started."""


class GuardLink:
    """One guard process and this process's end of its socket."""

    def __init__(self):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # Its own session: a terminal's Ctrl-C or a group kill aimed at the owner must
            # not reach the guard, which has to outlive the owner to stop the tree.
            if _may_fork():
                self.proc = _ForkedGuard(theirs.fileno())
            else:
                self.proc = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-c", _GUARD_CODE, PACKAGE_ROOT,
                     "--sock", str(theirs.fileno())],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL, cwd="/", pass_fds=(theirs.fileno(),),
                    start_new_session=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.pid = self.proc.pid
        self.idle = True   # no child: before a start, and after its "exited"
        self._sock = ours
        self._inbox = b""
        self._send_lock = threading.Lock()

    def start(self, exe: str, argv: list, env: dict, cwd: str, grace: float,
              fds: Tuple[int, int, int]) -> int:
        """Have the guard start `exe` with `fds` as its stdin, stdout and stderr; its pid.
        OSError as starting it raised it in the guard (FileNotFoundError, EINVAL for an
        environment or argv it cannot pass on, ...) or as sending it raised it here (EBADF
        for a bad fd: the guard stays usable); GuardLost when the guard was already gone;
        ConnectionError when it died before replying or did not reply within
        START_REPLY_WAIT seconds (it is killed then)."""
        line = b"start " + json.dumps({"exe": exe, "argv": list(argv), "env": dict(env),
                                       "cwd": cwd, "grace": float(grace)}).encode("ascii")
        line += b"\n"
        try:
            with self._send_lock:
                # The fds travel with the first bytes; a long environment may need more sends.
                sent = self._sock.sendmsg(
                    [line], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
                self.idle = False
                self._sock.sendall(line[sent:])
        except OSError as e:
            if self.idle and e.errno in _GONE_ERRNOS:
                raise GuardLost(e.errno, "qw's guard process is gone") from e
            raise
        try:
            word, rest = self.read_reply(START_REPLY_WAIT)
        except TimeoutError:
            # Alive but not answering (stopped, or stuck): it may have started the child.
            self.kill()
            raise ConnectionError(
                errno.ETIMEDOUT, "qw's guard process (pid %d) did not answer a start within"
                " %.0f s; it was killed with anything it had started" % (self.pid,
                                                                         START_REPLY_WAIT))
        if word == "started":
            return int(rest)
        if word == "error":
            self.idle = True
            code, text, filename = json.loads(rest)
            raise OSError(code, text, filename)  # OSError(ENOENT, ...) is FileNotFoundError
        raise ConnectionError(errno.ECONNRESET, "qw's guard process exited before it replied")

    def read_reply(self, timeout: Optional[float] = None) -> Tuple[Optional[str], str]:
        """The guard's next message as (word, rest); (None, "") once the guard is gone.
        TimeoutError when `timeout` seconds (None: no limit) pass without one."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._inbox:
            if deadline is not None and not self._readable(deadline):
                raise TimeoutError(errno.ETIMEDOUT, "no reply from qw's guard process")
            try:
                data = self._sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                return None, ""
            self._inbox += data
        return self._take_reply()

    def fileno(self) -> int:
        """The socket's fd, to poll together with the child's pipes."""
        return self._sock.fileno()

    def replies_now(self) -> list:
        """The guard's messages that have arrived, without waiting: [(word, rest), ...],
        ending with (None, "") once the guard is gone."""
        gone = False
        while True:
            try:
                data = self._sock.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                gone = True
                break
            self._inbox += data
        replies = []
        while b"\n" in self._inbox:
            replies.append(self._take_reply())
        if gone:
            replies.append((None, ""))
        return replies

    def _take_reply(self) -> Tuple[str, str]:
        line, self._inbox = self._inbox.split(b"\n", 1)
        word, _, rest = line.decode("utf-8", "replace").partition(" ")
        if word == "exited":
            self.idle = True
        return word, rest

    def _readable(self, deadline: float) -> bool:
        """Wait until the socket has something to read (or EOF), at most until `deadline`.
        poll(), not select(): this process may hold fds numbered above FD_SETSIZE."""
        poller = select.poll()
        poller.register(self._sock, select.POLLIN)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if poller.poll(left * 1000):
                return True

    def stop(self, grace: float) -> None:
        """Ask the guard to stop the current child's tree; a guard that is gone is not an
        error (its reader sees EOF)."""
        try:
            with self._send_lock:
                self._sock.sendall(b"stop %r\n" % float(grace))
        except OSError:
            pass

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL everything under the guard, then the guard (it is stuck): its socket
        reads EOF here at once. The tree goes first: while the guard lives, what it took in
        as a subreaper (background jobs, tool shells in their own sessions) is still found
        under it; once it is dead, they would belong to init."""
        deadline = time.monotonic() + KILL_SWEEP
        while time.monotonic() < deadline:
            pids = guard.descendants(self.pid)  # again: orphans of the killed come next
            if not pids:
                break
            for pid in pids:
                guard.kill_quietly(pid, signal.SIGKILL)
            time.sleep(0.02)  # not our children: nothing to block on until they are gone
        try:
            self.proc.kill()
        except OSError:
            pass

    def close(self) -> None:
        """Close this end: the guard stops what it still runs, then exits."""
        self._sock.close()


def _may_fork() -> bool:
    """Whether a guard may be a fork of this process rather than a new interpreter: on
    Linux, in a process running no other thread (a fork copies only the calling thread, so
    a lock another one held would stay locked in the copy). qw's workers qualify."""
    return sys.platform.startswith("linux") and threading.active_count() == 1


class _ForkedGuard:
    """A guard forked from this process, with what GuardLink uses of a Popen. A fork
    costs about a millisecond where a new interpreter costs tens; the copy shares this
    process's memory until it writes to it, and it never returns into this process's
    code: it serves its socket and exits."""

    def __init__(self, guard_fd: int):
        self.returncode: Optional[int] = None
        self.pid = os.fork()
        if self.pid == 0:
            _serve_forked(guard_fd)

    def poll(self) -> Optional[int]:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:   # reaped by someone else: it is gone all the same
                self.returncode = 255
            else:
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float) -> int:
        """Its exit code; subprocess.TimeoutExpired when it is still there after `timeout`
        seconds (no handle to block on with a deadline: look every 5 ms, as Popen does)."""
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired("qw guard %d" % self.pid, timeout)
            time.sleep(0.005)
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)


def _serve_forked(guard_fd: int) -> None:
    """In the forked child: become a guard serving `guard_fd`, then exit. Nothing of the
    parent's runs here again: no frame unwinds, no atexit handler, no buffer is flushed
    twice (os._exit), and the collector leaves the parent's objects alone (gc.freeze), so
    that their pages stay shared."""
    code = 70
    try:
        import gc
        gc.freeze()
        os.setsid()
        os.chdir("/")   # hold no directory of the owner's
        null = os.open(os.devnull, os.O_RDWR)
        for target in (0, 1, 2):
            os.dup2(null, target)
        # Only the socket stays open: a copy of the owner's pipes would keep them from
        # ever reading EOF. (/proc lists them; closerange up to the fd limit could take a
        # million close() calls on Python 3.9.)
        for name in os.listdir("/proc/self/fd"):
            if int(name) > 2 and int(name) != guard_fd:
                try:
                    os.close(int(name))
                except OSError:
                    pass   # the listing's own fd, closed already
        code = guard.main(["--sock", str(guard_fd)])
    finally:
        os._exit(code)


class GuardPool:
    """This process's guards: the busy ones and up to MAX_IDLE idle ones."""

    def __init__(self):
        self._reset()
        if hasattr(os, "register_at_fork"):  # POSIX; Windows never uses this pool
            os.register_at_fork(after_in_child=self._after_fork)

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._idle: list = []
        self._links: list = []   # every link not yet discarded; closed at exit
        self._exit_hook = False

    def start(self, exe: str, argv: list, env: dict, cwd: str, grace: float,
              fds: Tuple[int, int, int]) -> Tuple[GuardLink, int]:
        """Start a child under an idle guard (or a new one); (its guard, the child's pid).
        OSError when it could not be started (the guard stays usable)."""
        for tries_left in (1, 0):
            link = self._acquire()
            try:
                return link, link.start(exe, argv, env, cwd, grace, fds)
            except GuardLost:  # it died while idle: another one, once
                self.discard(link)
                if not tries_left:
                    raise
            except BaseException:
                self.release(link)  # kept only if it is still idle and well
                raise
        raise AssertionError("unreachable")

    def prestart(self) -> None:
        """Have an idle guard ready for the next child: its interpreter boots now, while
        this process waits for work, instead of when the first child is due."""
        self.release(self._acquire())

    def release(self, link: GuardLink) -> None:
        """Keep `link` for the next child if its guard is idle and alive, else discard it."""
        with self._lock:
            if (self._pid == os.getpid() and link in self._links and link.idle
                    and len(self._idle) < MAX_IDLE and link.alive()):
                self._idle.append(link)
                return
        self.discard(link)

    def discard(self, link: GuardLink) -> None:
        """Close `link`: its guard stops what it still runs, then exits."""
        with self._lock:
            if link in self._links:
                self._links.remove(link)
            if link in self._idle:
                self._idle.remove(link)
        link.close()

    def close_all(self) -> None:
        """At interpreter exit: close the idle guards' sockets, waiting a little for them
        to go so that none is left as a zombie. A busy guard's socket stays open until the
        process exits: a thread may be blocked reading it, and a read failed by the close
        would mean "the guard died" there, which SIGKILLs the tree at once where the
        guard's EOF handling would give it SIGINT and its grace first."""
        if self._pid != os.getpid():
            return
        with self._lock:
            idle = [link for link in self._links if link.idle]
            self._links = [link for link in self._links if not link.idle]
            self._idle = []
        for link in idle:
            link.close()
        for link in idle:
            try:
                link.proc.wait(EXIT_WAIT / max(1, len(idle)))
            except subprocess.TimeoutExpired:
                pass

    def _acquire(self) -> GuardLink:
        with self._lock:
            if self._pid != os.getpid():
                self._forget_parents()
            while self._idle:
                link = self._idle.pop()
                if link.alive():
                    return link
                self._links.remove(link)
                link.close()
            if not self._exit_hook:
                atexit.register(self.close_all)
                self._exit_hook = True
        link = GuardLink()
        with self._lock:
            self._links.append(link)
        return link

    def _after_fork(self) -> None:
        self._forget_parents()

    def _forget_parents(self) -> None:
        """In a forked child: close the copies of the parent's sockets, start afresh."""
        links = self._links
        self._reset()
        for link in links:
            link.close()


POOL = GuardPool()
