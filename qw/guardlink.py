"""The owner's side of qw.guard (DESIGN §6): the guard processes of one process. POSIX only.

    link, pid = POOL.start(exe, argv, env, cwd, grace, fds)  # fds: the child's 0, 1, 2
    link.read_reply()     ("note", text)... then ("exited", "0"); (None, "") if the guard died
    link.stop(grace)      SIGINT, grace, SIGTERM, grace, SIGKILL to the child's whole tree
    POOL.release(link)    after "exited": the guard waits, idle, for this process's next child
    POOL.discard(link)    EOF to the guard: it stops whatever still runs, then exits

A guard costs an interpreter's start (tens of milliseconds), so each is kept for every later
child: the first start_child in a process starts one, and another only when all are busy
(one per child running at once; a worker runs one at a time). A guard that died is replaced.
The pool belongs to the process that made it: a forked child closes its copies of the
parent's sockets at once (so the parent's guards still see EOF when the parent dies) and
starts guards of its own. At interpreter exit every socket is closed and the guards exit;
if this process dies some other way, the kernel closes them just the same.
"""

from __future__ import annotations

import array
import atexit
import errno
import json
import os
import socket
import subprocess
import sys
import threading
from typing import Optional, Tuple

MAX_IDLE = 4              # idle guards kept; more were only needed for a burst
EXIT_WAIT = 1.0           # seconds, all told, the exit handler waits for idle guards to go
# Where the `qw` package lives: a directory, or the .pyz file itself (zipimport reads it).
_PKGROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _GUARD_CODE, _PKGROOT,
                 "--sock", str(theirs.fileno())],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                cwd="/", pass_fds=(theirs.fileno(),), start_new_session=True)
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
        OSError as starting it raised it in the guard (FileNotFoundError, ...); GuardLost
        when the guard was already gone; ConnectionError when it died before replying."""
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
            if self.idle:
                raise GuardLost(e.errno or errno.EPIPE, "qw's guard process is gone") from e
            raise
        word, rest = self.read_reply()
        if word == "started":
            return int(rest)
        if word == "error":
            self.idle = True
            code, text, filename = json.loads(rest)
            raise OSError(code, text, filename)  # OSError(ENOENT, ...) is FileNotFoundError
        raise ConnectionError(errno.ECONNRESET, "qw's guard process exited before it replied")

    def read_reply(self) -> Tuple[Optional[str], str]:
        """The guard's next message as (word, rest); (None, "") once the guard is gone."""
        while b"\n" not in self._inbox:
            try:
                data = self._sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                return None, ""
            self._inbox += data
        line, self._inbox = self._inbox.split(b"\n", 1)
        word, _, rest = line.decode("utf-8", "replace").partition(" ")
        if word == "exited":
            self.idle = True
        return word, rest

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
        """SIGKILL the guard (it is stuck): its socket reads EOF here at once."""
        try:
            self.proc.kill()
        except OSError:
            pass

    def close(self) -> None:
        """Close this end: the guard stops what it still runs, then exits."""
        self._sock.close()


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
        """Close every guard's socket (at interpreter exit), waiting a little for the idle
        ones to go so that none is left as a zombie."""
        if self._pid != os.getpid():
            return
        with self._lock:
            links, idle = self._links, self._idle
            self._links, self._idle = [], []
        for link in links:
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
