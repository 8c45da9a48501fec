"""The guard: a small long-lived process that owns its owner's child trees (DESIGN §6). POSIX.

`qw.proctree` starts one per process that starts children, on its first child, as

    python -I -S -c "...; from qw.guard import main; os._exit(main(sys.argv[2:]))" \\
        PKGROOT --sock FD

(on Linux, from a process running no other thread, a fork of that process calling main()
instead: qw.guardlink) and keeps it for every later child (one more guard per child running at the same time):

    owner ──Unix socket──► guard (own session, child subreaper)
                             └─ child (own process group) ─► its tree, setsid shells, orphans

One line per message on the socket:
    owner -> guard   start JSON{exe, argv, env, cwd, grace}, with the child's stdin, stdout
                     and stderr pipe ends attached (SCM_RIGHTS)
                     stop GRACE
    guard -> owner   started PID | error JSON[errno, strerror, filename]
                     note TEXT       (a diagnostic for the child's stderr tail)
                     exited CODE MAXRSS CPU
                                     once the child and every stray are gone (CODE: 128 +
                                     signal for a signal); MAXRSS, in bytes, the largest
                                     peak RSS, and CPU, in seconds, the user + system time,
                                     of every process of the tree the guard reaped (the
                                     kernel's wait4 figures); the guard is then idle again

The guard posix_spawns the child with the three ends as its 0/1/2 and nothing else open
(every fd the guard holds is close-on-exec), closes its copies, and watches its socket and
SIGCHLD together in one select() loop, also while it escalates:
- the child exits: any descendant left (a background job, a tool shell in its own session)
  was re-parented to the guard, which is a subreaper; it gets SIGTERM, a short wait, SIGKILL.
- `stop GRACE`, or EOF on the socket (the owner died, even by SIGKILL, or exited): SIGINT to
  the child's group, grace, SIGTERM, grace, then SIGKILL to the group and to every descendant.
After EOF the guard exits as soon as no descendant is left; so does a guard sent SIGINT,
SIGTERM or SIGHUP, once it has reported the exit.

The child gets its own process group (not the guard's) so that SIGINT and SIGTERM, sent the
way a terminal sends Ctrl-C, reach the child and its helpers but never the guard, which must
stay alive to escalate and to sweep up. A stop that arrives while a longer one is under
way shortens it. This module is also where qw reads process tables (descendants()).
"""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import socket
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
SWEEP_BOUND = 5.0         # seconds the final SIGKILL sweep may take before the guard gives up
STRAY_TERM_WAIT = 1.0     # at most this long between SIGTERM and SIGKILL for strays
SAFETY_TICK = 5.0         # select timeout: a lost wake-up costs at most this much
SWEEP_TICK = 0.05         # how often strays that are not our children are looked at
MAX_FDS = 8               # room for received fds; a start carries 3, extras are closed
# Dispositions the child must not inherit: the guard's own handlers, and what Python or the
# owner may have set to SIG_IGN (SIGPIPE, SIGXFSZ; SIGINT in a worker that leaves Ctrl-C to
# the runner). subprocess's restore_signals does the same for SIGPIPE and SIGXFSZ.
# (getattr: Windows imports this module for nothing but lacks most of these.)
_DEFAULT_SIGNALS = tuple(getattr(signal, name) for name in (
    "SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGPIPE", "SIGXFSZ", "SIGCHLD")
    if hasattr(signal, name))
# ru_maxrss is in kibibytes, except on macOS (bytes).
_MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024
# What the guard is doing with its current child.
IDLE, RUNNING, STOPPING, SWEEPING = "idle", "running", "stopping", "sweeping"


def become_subreaper() -> bool:
    """Make orphaned descendants re-parent to this process (Linux); False where impossible."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes  # only here: it costs a few milliseconds of start-up
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def process_table() -> dict:
    """{pid: (ppid, state)} for every process visible: /proc on Linux, `ps` elsewhere."""
    if os.path.isdir("/proc/self"):
        return _proc_table()
    return _ps_table()


def _proc_table() -> dict:
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/" + name + "/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # exited while we looked
        # The command name may hold spaces and parentheses: the fields follow the last ')'.
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) >= 2:
            table[int(name)] = (int(fields[1]), fields[0].decode("ascii", "replace"))
    return table


def _ps_table() -> dict:
    # Imported here, not at the top: only systems without /proc (macOS, BSD) pay for it.
    import subprocess
    ps = subprocess.Popen(["ps", "-A", "-o", "pid=,ppid=,stat="], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL)
    out = ps.communicate()[0]
    table = {}
    for line in out.decode("ascii", "replace").splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].isdigit() and parts[1].isdigit():
            table[int(parts[0])] = (int(parts[1]), parts[2][:1])
    # ps lists itself, as a child of this process: a guard would count it as a stray that
    # never goes away.
    table.pop(ps.pid, None)
    return table


def descendants(root: int, table: "dict | None" = None) -> list:
    """Pids of every living (non-zombie) descendant of `root`, parents before children."""
    if table is None:
        table = process_table()
    children = {}
    for pid, (ppid, _state) in table.items():
        children.setdefault(ppid, []).append(pid)
    tree = list(children.get(root, ()))
    for pid in tree:  # grows while we walk it: breadth first
        tree.extend(children.get(pid, ()))
    return [pid for pid in tree if table[pid][1] != "Z"]


def kill_quietly(pid: int, signum: int) -> None:
    """Send a signal; a process that is gone (or not ours) is not an error."""
    try:
        os.kill(pid, signum)
    except OSError as e:
        if e.errno not in (errno.ESRCH, errno.EPERM):
            raise


def parse_exited(rest: str) -> "tuple[int, tuple[float, float] | None]":
    """An `exited` reply's words after the first: (exit code, (peak RSS in MB of the
    tree's largest process, CPU seconds of the whole tree)); the usage is None when the
    reply carries none."""
    words = rest.split()
    try:
        return int(words[0]), (int(words[1]) / (1024 * 1024), float(words[2]))
    except (IndexError, ValueError):
        return int(words[0]), None


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


class Guard:
    """Serves one owner over `sock` until EOF, one child at a time; see the module doc."""

    def __init__(self, sock):
        self.sock = sock
        self.inbox = b""          # received bytes not yet a whole line
        self.fds = []             # received fds not yet given to a child
        self.owner_gone = False   # EOF: nobody to answer, nothing more to read
        self.leaving = False      # exit once idle: EOF, or a stop signal to the guard
        self.stop_asked = False   # by a signal to the guard itself, not yet acted on
        self.has_children = True  # what the last waitpid() said
        self.subreaper = become_subreaper()
        self.wake_r, wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(wake_w, False)
        # Signal handlers only record; the wake-up fd makes select() return (STYLE 5).
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._on_stop_signal)
        self._forget_child()

    def _forget_child(self) -> None:
        self.phase = IDLE
        self.child = 0
        self.status = None       # the child's exit code once reaped
        self.grace = 5.0
        self.step = 0            # signals sent so far while stopping: SIGINT, SIGTERM, SIGKILL
        self.deadline = 0.0      # of the current step (STOPPING) or of the sweep (SWEEPING)
        self.term_wait = 0.0     # SWEEPING: how long strays get between SIGTERM and SIGKILL
        self.termed = set()      # SIGTERM once each: a second one means "quit now" to some
        self.snapshot = set()    # without a subreaper, orphans must be remembered beforehand
        self.maxrss = 0          # bytes: the largest ru_maxrss of what was reaped for it
        self.cpu_s = 0.0         # user + system seconds of what was reaped for it

    def _on_stop_signal(self, signum, frame) -> None:
        self.stop_asked = True

    def serve(self) -> int:
        """Run children until EOF or a stop signal, then until nothing of the last tree is
        left; the guard's exit code."""
        while True:
            self._reap()
            if self.stop_asked:
                self.stop_asked = False
                self._leave()
            self._advance(time.monotonic())
            if self.leaving and self.phase == IDLE:
                return 0
            watched = [self.wake_r] if self.owner_gone else [self.wake_r, self.sock]
            ready = select.select(watched, [], [], self._timeout())[0]
            self._drain_wake()
            if self.sock in ready:
                self._receive()

    def _timeout(self) -> float:
        if self.phase == SWEEPING:
            return SWEEP_TICK
        if self.phase == STOPPING:
            return min(SAFETY_TICK, max(0.0, self.deadline - time.monotonic()))
        return SAFETY_TICK  # a child's exit wakes us through SIGCHLD

    def _advance(self, now: float) -> None:
        if self.phase == RUNNING and self.status is not None:
            self._begin_sweep(now, min(self.grace, STRAY_TERM_WAIT))
        elif self.phase == STOPPING:
            if self.status is not None:  # it went before SIGKILL: strays get SIGTERM first
                self._begin_sweep(now, min(self.grace, STRAY_TERM_WAIT) if self.step < 3
                                  else 0.0)
            elif now >= self.deadline:
                self._escalate(now)
        if self.phase == SWEEPING:
            self._sweep(now)

    # ----- the socket

    def _receive(self) -> None:
        try:
            data, ancillary, _flags, _addr = self.sock.recvmsg(
                65536, socket.CMSG_SPACE(MAX_FDS * 4), getattr(socket, "MSG_CMSG_CLOEXEC", 0))
        except OSError:  # ECONNRESET: the owner is gone just the same
            data, ancillary = b"", []
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                for i in range(0, len(payload) - len(payload) % 4, 4):
                    fd = int.from_bytes(payload[i:i + 4], sys.byteorder, signed=True)
                    os.set_inheritable(fd, False)  # where MSG_CMSG_CLOEXEC does not exist
                    self.fds.append(fd)
        if not data:
            self.owner_gone = True
            self._leave()
            return
        self.inbox += data
        while b"\n" in self.inbox:
            line, self.inbox = self.inbox.split(b"\n", 1)
            self._handle(line)

    def _handle(self, line: bytes) -> None:
        word, _, rest = line.partition(b" ")
        if word == b"start":
            self._start(rest)
        elif word == b"stop" and self.phase in (RUNNING, STOPPING):
            try:
                grace = max(0.0, float(rest))
            except ValueError:
                grace = self.grace
            self._stop(grace)
        # A stop for a child that is already gone, or a word from a newer qw: nothing to do.

    def _send(self, line: str) -> None:
        if self.owner_gone:
            return
        try:
            self.sock.sendall(line.encode("utf-8", "replace") + b"\n")
        except OSError:
            self.owner_gone = True
            self._leave()

    def _leave(self) -> None:
        """EOF, or a stop signal to the guard: stop the current tree, then exit. (The
        owner still hears the exit code if it is there.)"""
        self.leaving = True
        if self.phase == RUNNING:
            self._stop(self.grace)

    # ----- one child

    def _start(self, request: bytes) -> None:
        fds, self.fds = self.fds, []
        try:
            if self.phase != IDLE:
                raise OSError(errno.EBUSY, "this guard already runs a child")
            if len(fds) != 3:
                raise OSError(errno.EINVAL, "a start needs 3 fds, got %d" % len(fds))
            try:
                req = json.loads(request.decode("ascii"))
                exe, argv, env, cwd = req["exe"], req["argv"], req["env"], req["cwd"]
                grace = float(req["grace"])
            except (ValueError, KeyError, TypeError) as e:
                raise OSError(errno.EINVAL, "bad start request: %s" % e)
            self.child = self._spawn(exe, argv, env, cwd, fds)
        except OSError as e:
            self._send("error " + json.dumps([e.errno or errno.EIO, e.strerror or str(e),
                                              e.filename]))
            return
        except (ValueError, TypeError) as e:
            # posix_spawn and chdir refuse an env name holding "=", a NUL anywhere, a
            # string that is not encodable: the request is bad, the guard is fine.
            self._send("error " + json.dumps([errno.EINVAL, "bad start request: %s" % e,
                                              None]))
            return
        finally:
            for fd in fds:  # the child has its own copies now, or will never need them
                os.close(fd)
        self.grace = grace
        self.phase = RUNNING
        self._send("started %d" % self.child)

    def _spawn(self, exe: str, argv: list, env: dict, cwd: str, fds: list) -> int:
        os.chdir(cwd)  # posix_spawn has no chdir here; this process has one thread
        try:
            # posix_spawn: no fork of a Python process; signals the guard handles or Python
            # ignores (SIGPIPE) go back to their defaults, and nothing is blocked. dup2
            # clears close-on-exec on 0/1/2 only: every other fd here stays behind.
            return os.posix_spawn(exe, argv, env, setpgroup=0, setsigdef=_DEFAULT_SIGNALS,
                                  setsigmask=(),
                                  file_actions=[(os.POSIX_SPAWN_DUP2, fd, target)
                                                for target, fd in enumerate(fds)])
        except OSError as e:
            if e.filename is None:
                e.filename = exe
            raise
        finally:
            os.chdir("/")  # hold no directory of the owner's while idle

    def _stop(self, grace: float) -> None:
        """Begin SIGINT, grace, SIGTERM, grace, SIGKILL; a shorter grace shortens a stop
        already under way."""
        now = time.monotonic()
        if self.phase == STOPPING:
            if grace < self.grace and self.step < 3:
                self.grace = grace
                self.deadline = min(self.deadline, now + grace)
            return
        self.grace = grace
        if not self.subreaper:
            self.snapshot.update(descendants(os.getpid()))
        self.phase = STOPPING
        self.step = 0
        self._escalate(now)

    def _escalate(self, now: float) -> None:
        self.step += 1
        if self.step == 1:
            self._signal_group(signal.SIGINT)
            self.deadline = now + self.grace
        elif self.step == 2:
            self._signal_group(signal.SIGTERM)
            self.deadline = now + self.grace
        elif self.step == 3:
            self._signal_group(signal.SIGKILL)
            for pid in descendants(os.getpid()):  # all at once: it may be stuck in I/O
                kill_quietly(pid, signal.SIGKILL)
            self.deadline = now + SWEEP_BOUND
        else:  # not even SIGKILL took it: give up on it, sweep the rest
            self._begin_sweep(now, 0.0)

    def _signal_group(self, signum: int) -> None:
        try:
            # The child leads its group; setsid() in the child keeps pgid == pid, so this
            # reaches it even then. One signal only: a second SIGINT means "force" to some CLIs.
            os.killpg(self.child, signum)
        except ProcessLookupError:
            kill_quietly(self.child, signum)
        except PermissionError:
            pass

    def _begin_sweep(self, now: float, term_wait: float) -> None:
        self.phase = SWEEPING
        self.term_wait = term_wait
        self.deadline = now  # the sweep's start
        self.termed = set()

    def _sweep(self, now: float) -> None:
        """Signal every remaining descendant, SIGTERM then SIGKILL; report the exit once
        none is left (or after SWEEP_BOUND, naming what would not die)."""
        pids = self._strays()
        elapsed = now - self.deadline
        if pids and elapsed > self.term_wait + SWEEP_BOUND:
            self._send("note qw-guard: processes left running: %s" % pids)
            pids = []
        if not pids:
            code = self.status if self.status is not None else 128 + signal.SIGKILL
            usage = (self.maxrss, self.cpu_s)
            self._forget_child()
            self._send("exited %d %d %.3f" % ((code,) + usage))
            return
        for pid in pids:
            if elapsed >= self.term_wait:
                kill_quietly(pid, signal.SIGKILL)
            elif pid not in self.termed:
                kill_quietly(pid, signal.SIGTERM)
                self.termed.add(pid)

    def _strays(self) -> list:
        if self.subreaper and not self.has_children:
            return []  # every orphan would be our child: no child, no descendant at all
        pids = descendants(os.getpid())
        if not self.subreaper and self.snapshot:
            table = process_table()
            pids += [p for p in self.snapshot if p in table and table[p][1] != "Z"
                     and p not in pids]
        return pids

    def _reap(self) -> None:
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                self.has_children = False
                return
            if pid == 0:
                self.has_children = True
                return
            if not self.child:
                continue   # a stray of a tree already reported: nobody to account it to
            # The child's figures include the descendants it reaped itself; the orphans
            # it left come here, as this process is their subreaper.
            self.maxrss = max(self.maxrss, usage.ru_maxrss * _MAXRSS_UNIT)
            self.cpu_s += usage.ru_utime + usage.ru_stime
            if pid == self.child:
                self.status = _exit_code(status)

    def _drain_wake(self) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def abandon(self, error: BaseException) -> None:
        """The last act of a guard that failed: kill its tree, say why."""
        if self.child:
            self._signal_group(signal.SIGKILL)
        for pid in descendants(os.getpid()):
            kill_quietly(pid, signal.SIGKILL)
        self._send("note qw-guard failed: %s: %s" % (type(error).__name__, error))


def main(args: "list | None" = None) -> int:
    """Serve the owner at `--sock FD`; the return value is the guard's exit code."""
    args = sys.argv[1:] if args is None else args
    if len(args) != 2 or args[0] != "--sock" or not args[1].isdigit():
        os.write(2, b"qw-guard: usage: --sock FD\n")
        return 2
    # The owner's fd number may be above FD_SETSIZE (an owner with over 1024 files open),
    # which select() refuses: serve a copy at the lowest free number instead.
    fd = int(args[1])
    sock = socket.socket(fileno=os.dup(fd))  # dup: close-on-exec, so no child holds it
    os.close(fd)
    guard = Guard(sock)
    try:
        return guard.serve()
    except BaseException as error:  # a bug: leave no tree behind
        guard.abandon(error)
        return 70
