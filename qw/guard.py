"""The guard: a tiny process that owns one child's whole process tree (DESIGN §6). POSIX only.

This module runs in its own process, started per task by `qw.proctree`:

    python -I -S -c "...; from qw.guard import main; os._exit(main(sys.argv[2:]))" PKGROOT \\
        --ctrl FD --grace SECONDS --exe PATH -- ARGV...

so it imports nothing but the standard library's smallest modules (os, sys, signal, select,
time, errno; ctypes once, for prctl on Linux): its start-up cost is paid by every task.

    worker ──ctrl pipe──► guard (own session, child subreaper)
                            └─ child (own process group) ─► its tree, setsid shells, orphans

The guard starts the child with the guard's stdin/stdout/stderr (the worker's pipes), then
waits for one of two things:
- the child exits: any descendant left (a background job, a tool shell in its own session)
  was re-parented to the guard, which is a subreaper; it gets SIGTERM, a short wait, SIGKILL.
- a `stop <grace>` line or EOF on the control pipe (the worker stopped the task, or died,
  even by SIGKILL): SIGINT to the child's group, grace, SIGTERM, grace, then SIGKILL to the
  group and to every descendant.
Either way the guard exits only when no descendant is left, with the child's exit code
(128 + signal for a signal, 127 when the child could not be started).

The child gets its own process group (not the guard's) so that SIGINT and SIGTERM, sent the
way a terminal sends Ctrl-C, reach the child and its helpers but never the guard, which must
stay alive to escalate and to sweep up.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
EXIT_NOT_STARTED = 127
SWEEP_BOUND = 5.0         # seconds the final SIGKILL sweep may take before the guard gives up
STRAY_TERM_WAIT = 1.0     # at most this long between SIGTERM and SIGKILL for strays
SAFETY_TICK = 5.0         # select timeout: a lost wake-up costs at most this much
# Dispositions the child must not inherit: the guard's own handlers, and what Python or the
# worker may have set to SIG_IGN (SIGPIPE, SIGXFSZ; SIGINT in a worker that leaves Ctrl-C to
# the runner). subprocess's restore_signals does the same for SIGPIPE and SIGXFSZ.
_DEFAULT_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                    signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD)


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
    out = subprocess.run(["ps", "-A", "-o", "pid=,ppid=,stat="], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, check=False).stdout
    table = {}
    for line in out.decode("ascii", "replace").splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].isdigit() and parts[1].isdigit():
            table[int(parts[0])] = (int(parts[1]), parts[2][:1])
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


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


class Guard:
    """One child and everything it starts; `run` returns the exit code for the guard."""

    def __init__(self, ctrl_fd: int, grace: float):
        self.ctrl_fd = ctrl_fd
        self.grace = grace
        self.child = 0
        self.status = None       # the child's exit code once reaped
        self.stop_asked = False  # by a signal to the guard itself
        self.subreaper = False
        self.snapshot = set()    # without a subreaper, orphans must be remembered beforehand
        self.wake_r, wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(wake_w, False)
        # Signal handlers only record; the wake-up fd makes select() return (STYLE 5).
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._on_stop_signal)

    def _on_stop_signal(self, signum, frame) -> None:
        self.stop_asked = True

    def run(self, exe: str, argv: list) -> int:
        self.subreaper = become_subreaper()
        os.set_inheritable(self.ctrl_fd, False)
        try:
            # posix_spawn: no fork of a Python process; signals the guard handles or Python
            # ignores (SIGPIPE) go back to their defaults, and nothing is blocked.
            self.child = os.posix_spawn(exe, argv, os.environ, setpgroup=0,
                                        setsigdef=_DEFAULT_SIGNALS, setsigmask=())
        except OSError as e:
            os.write(2, ("qw-guard: cannot start %s: %s\n" % (exe, e.strerror)).encode())
            return EXIT_NOT_STARTED
        # The worker's pipes now belong to the child: EOF on stdout means the tree closed it.
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.close(devnull)
        grace = self._watch()
        if grace is None:     # the child exited by itself: what is left are strays
            self._sweep(min(self.grace, STRAY_TERM_WAIT))
        elif self._stop_child(grace):
            self._sweep(min(grace, STRAY_TERM_WAIT))
        else:                 # it took SIGKILL: no more politeness for the rest
            self._sweep(0.0)
        return self.status if self.status is not None else 128 + signal.SIGKILL

    def _watch(self):
        """Wait for the child's exit (None) or a stop request (its grace in seconds)."""
        while True:
            self._reap()
            if self.status is not None:
                return None
            if self.stop_asked:
                return self.grace
            ready = _select([self.ctrl_fd, self.wake_r], SAFETY_TICK)
            self._drain_wake()
            if self.ctrl_fd in ready:
                return self._read_stop()

    def _read_stop(self) -> float:
        try:
            data = os.read(self.ctrl_fd, 512)
        except OSError:
            data = b""
        parts = data.split()
        if len(parts) >= 2 and parts[0] == b"stop":
            try:
                return max(0.0, float(parts[1]))
            except ValueError:
                pass
        return self.grace  # EOF: the worker is gone

    def _stop_child(self, grace: float) -> bool:
        """SIGINT, grace, SIGTERM, grace, SIGKILL; True if the child went before SIGKILL."""
        if not self.subreaper:
            self.snapshot.update(descendants(os.getpid()))
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._signal_group(signum)
            if self._wait_child(time.monotonic() + grace):
                return True
        self._signal_group(signal.SIGKILL)
        for pid in descendants(os.getpid()):  # all at once: the child may be stuck in I/O
            kill_quietly(pid, signal.SIGKILL)
        self._wait_child(time.monotonic() + SWEEP_BOUND)
        return False

    def _signal_group(self, signum: int) -> None:
        try:
            # The child leads its group; setsid() in the child keeps pgid == pid, so this
            # reaches it even then. One signal only: a second SIGINT means "force" to some CLIs.
            os.killpg(self.child, signum)
        except ProcessLookupError:
            kill_quietly(self.child, signum)
        except PermissionError:
            pass

    def _wait_child(self, deadline: float) -> bool:
        while True:
            self._reap()
            if self.status is not None:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            _select([self.wake_r], min(left, SAFETY_TICK))
            self._drain_wake()

    def _sweep(self, term_wait: float) -> None:
        """Signal every remaining descendant until none is left: SIGTERM, then SIGKILL."""
        start = time.monotonic()
        termed = set()  # SIGTERM once each: a second one means "quit now" to some programs
        while True:
            self._reap()
            pids = descendants(os.getpid())
            if not self.subreaper:
                table = process_table()
                pids += [p for p in self.snapshot if p in table and table[p][1] != "Z"
                         and p not in pids]
            if not pids:
                return
            elapsed = time.monotonic() - start
            if elapsed > term_wait + SWEEP_BOUND:
                os.write(2, ("qw-guard: processes left running: %s\n" % pids).encode())
                return
            for pid in pids:
                if elapsed >= term_wait:
                    kill_quietly(pid, signal.SIGKILL)
                elif pid not in termed:
                    kill_quietly(pid, signal.SIGTERM)
                    termed.add(pid)
            # Strays are our children (subreaper): their death wakes us via SIGCHLD.
            _select([self.wake_r], 0.05)
            self._drain_wake()

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.child:
                self.status = _exit_code(status)

    def _drain_wake(self) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass


def _select(fds: list, timeout: float) -> list:
    return select.select(fds, [], [], timeout)[0]


def kill_quietly(pid: int, signum: int) -> None:
    """Send a signal; a process that is gone (or not ours) is not an error."""
    try:
        os.kill(pid, signum)
    except OSError as e:
        if e.errno not in (errno.ESRCH, errno.EPERM):
            raise


def parse_args(args: list):
    """(ctrl_fd, grace, exe, argv) from `--ctrl FD --grace S --exe PATH -- ARGV...`."""
    opts = {}
    i = 0
    while i < len(args) and args[i] != "--":
        opts[args[i]] = args[i + 1]
        i += 2
    argv = args[i + 1:]
    if not argv or "--ctrl" not in opts:
        raise ValueError("usage: --ctrl FD [--grace S] [--exe PATH] -- ARGV...")
    return (int(opts["--ctrl"]), float(opts.get("--grace", "5")),
            opts.get("--exe", argv[0]), argv)


def main(args: "list | None" = None) -> int:
    """Run the guard; the return value is the exit code for the guard process."""
    try:
        ctrl_fd, grace, exe, argv = parse_args(sys.argv[1:] if args is None else args)
    except (ValueError, IndexError) as e:
        os.write(2, ("qw-guard: %s\n" % e).encode())
        return 2
    return Guard(ctrl_fd, grace).run(exe, argv)
