"""The fixed pool of worker processes, as the runner sees it.

Exactly `size` workers, started once: on Linux forked by multiprocessing's fork server from
a clean interpreter that has imported what a worker needs (qw.forkhost says why), with the
spawn start method elsewhere. Each has a duplex pipe to the runner. `wait()` blocks on
every pipe and every worker's sentinel together (as concurrent.futures.process does), so a
worker that dies is noticed at once; it is replaced, and the attempt it was running is
reported as a crash. The runner waits after every pass of its loop, so on POSIX one
selector watches them for the whole run (multiprocessing's wait() would build and fill one
on every call); Windows pipes cannot be selected, so there each wait() goes through
multiprocessing's.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import selectors
import signal
import socket
import sys
import time
from multiprocessing.connection import wait as mp_wait
from typing import Any, Dict, Iterator, List, Optional, Tuple

from qw import PACKAGE_ROOT
from qw.worker import AttemptRequest, AttemptResult, Cancel, worker_main


PIPE, SENTINEL, WAKEUP = "pipe", "sentinel", "wakeup"   # what wait() watches


class _Slot:
    def __init__(self, worker_id: int, process, conn):
        self.worker_id = worker_id
        self.process = process
        self.conn = conn
        self.request: Optional[AttemptRequest] = None   # the attempt it is running


class Pool:
    """Worker processes indexed 1..size; one attempt per worker at a time."""

    def __init__(self, size: int, extra_fds: Tuple = ()):
        self.size = size
        self.ctx = process_context()
        self.slots: Dict[int, _Slot] = {}
        self.replaced = 0
        # What wait() watches: {pipe, sentinel or extra fd (e.g. the signal wake-up
        # socket): (PIPE | SENTINEL | WAKEUP, its worker's slot or None)}.
        self._watched: Dict[Any, Tuple[str, Optional[_Slot]]] = {}
        self._selector = selectors.DefaultSelector() if os.name == "posix" else None
        for fd in extra_fds:
            self._watch(fd, WAKEUP, None)

    def start(self) -> None:
        for worker_id in range(1, self.size + 1):
            self.slots[worker_id] = self._spawn(worker_id)

    def _spawn(self, worker_id: int) -> _Slot:
        here, there = self.ctx.Pipe(duplex=True)
        process = self.ctx.Process(target=worker_main, args=(worker_id, there),
                                   name=f"qw-worker-{worker_id}", daemon=True)
        process.start()
        there.close()
        slot = _Slot(worker_id, process, here)
        self._watch(here, PIPE, slot)
        self._watch(process.sentinel, SENTINEL, slot)
        return slot

    def _watch(self, obj: Any, kind: str, slot: Optional[_Slot]) -> None:
        self._watched[obj] = (kind, slot)
        if self._selector is not None:
            self._selector.register(obj, selectors.EVENT_READ)

    def _unwatch(self, obj: Any) -> None:
        del self._watched[obj]
        if self._selector is not None:
            self._selector.unregister(obj)

    def _ready(self, timeout: float) -> List[Any]:
        """The watched objects readable within `timeout`."""
        if self._selector is None:
            return mp_wait(list(self._watched), timeout)
        return [key.fileobj for key, _ in self._selector.select(timeout)]

    def idle(self) -> List[int]:
        return [w for w, s in self.slots.items() if s.request is None]

    def busy(self) -> Dict[int, AttemptRequest]:
        return {w: s.request for w, s in self.slots.items() if s.request is not None}

    def submit(self, worker_id: int, request: AttemptRequest) -> None:
        slot = self.slots[worker_id]
        assert slot.request is None, f"worker {worker_id} is busy"
        slot.request = request
        try:
            slot.conn.send(request)
        except OSError:
            pass   # it died since wait() last looked: wait() reports it with this request

    def cancel(self, worker_id: int, reason: str = "interrupted") -> None:
        slot = self.slots[worker_id]
        if slot.request is not None:
            try:
                slot.conn.send(Cancel(reason))
            except (OSError, EOFError):
                pass   # it died; wait() reports that

    def pid(self, worker_id: int) -> Optional[int]:
        return self.slots[worker_id].process.pid

    def wait(self, timeout: float) -> List[Tuple[str, int, object]]:
        """Events within `timeout`: ("message", worker, msg), ("died", worker, request|None),
        ("wakeup", fd, None) for an extra fd that became readable."""
        events: List[Tuple[str, int, object]] = []
        dead: List[_Slot] = []
        for obj in self._ready(timeout):
            kind, slot = self._watched[obj]
            if kind == PIPE:
                try:
                    # Readable: a message, or EOF (recv raises). After a result the worker
                    # waits for its next request, so nothing more is looked for then.
                    while True:
                        msg = slot.conn.recv()
                        events.append(("message", slot.worker_id, msg))
                        if isinstance(msg, AttemptResult):
                            slot.request = None
                            break
                        if not slot.conn.poll():
                            break
                except (EOFError, OSError):
                    dead.append(slot)
            elif kind == SENTINEL:
                dead.append(slot)
            else:
                events.append((WAKEUP, obj, None))
        for slot in {id(s): s for s in dead}.values():
            if self.slots.get(slot.worker_id) is not slot:
                continue
            self._unwatch(slot.conn)
            self._unwatch(slot.process.sentinel)
            slot.process.join(timeout=1.0)
            events.append(("died", slot.worker_id, slot.request))
            slot.conn.close()
            self.slots[slot.worker_id] = self._spawn(slot.worker_id)
            self.replaced += 1
        return events

    def shutdown(self, timeout: float = 5.0) -> None:
        """Close every pipe (workers exit on EOF), give them `timeout` seconds in all to
        exit, then kill those left (their guards then stop the child trees)."""
        for slot in self.slots.values():
            try:
                slot.conn.close()
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        for slot in self.slots.values():
            slot.process.join(timeout=max(0.0, deadline - time.monotonic()))
        for slot in self.slots.values():
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join(timeout=5.0)
        if self._selector is not None:
            self._selector.close()
            self._selector = None


def process_context():
    """multiprocessing's context for a run's workers and state owner: a fork server on
    Linux (qw.forkhost), spawn elsewhere (on macOS a fork without exec is unsafe once
    system frameworks are loaded; Windows has no fork). The fork server is this process's,
    started with its first worker, and kept for every later pool (a workflow runs several)
    until the process exits."""
    if not sys.platform.startswith("linux"):
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    root = PACKAGE_ROOT
    # -E or -I (which the server inherits) would ignore the PYTHONPATH it needs; before
    # 3.11 its sys.path begins with the working directory, where another qw would be found.
    if sys.flags.ignore_environment or (sys.version_info < (3, 11)
                                        and _shadowed(root, os.getcwd())):
        return ctx   # each process imports what it needs itself, from the right qw
    ctx.set_forkserver_preload(["qw.forkhost"])
    _start_fork_server(root)
    return ctx


# What qw.forkhost reads to give the server the run's sys.path and the environment as it
# was (the names are spelled out there too: it must not import this module first).
FORKHOST_SYS_PATH = "QW_FORKHOST_SYS_PATH"
FORKHOST_SAVED = "QW_FORKHOST_SAVED_"   # + PYTHONPATH, + PYTHONSAFEPATH
SYS_PATH_SEPARATOR = "\x1f"   # no path holds it (os.pathsep may be in one)


def _shadowed(root: str, cwd: str) -> bool:
    """Whether a process started in cwd would import another qw than root's: its sys.path
    begins with '' (the working directory) when it runs `python -c`, as the fork server
    does."""
    mine = os.path.join(root, "qw")
    for name in ("qw", "qw.py"):
        theirs = os.path.join(cwd, name)
        if os.path.exists(theirs) and os.path.realpath(theirs) != os.path.realpath(mine):
            return True
    return False


def _start_fork_server(root: str) -> None:
    """Start this process's fork server, if it is not running, so that its preload of
    qw.forkhost imports this qw with this process's sys.path.

    Before Python 3.12.8 and 3.13.1 the server ignores the sys.path it is given (CPython
    gh-117378), so in qw.pyz the preload failed silently: every worker then imported qw's
    modules, and psutil at its first sample, itself. CPython's workaround is PYTHONPATH,
    which the server inherits with the rest of the environment: here only qw's own entry,
    with PYTHONSAFEPATH (3.11+) so that no working directory comes before it. qw.forkhost
    then sets the server's sys.path to this process's (as a spawned child's is: the user's
    files in the working directory cannot stand in for the standard library's) and puts
    both variables back, so that the processes forked from it see the user's environment.
    """
    from multiprocessing import forkserver, process

    # As spawn hands its children sys.path: '' (the working directory) made absolute.
    here = getattr(process, "ORIGINAL_DIR", None) or os.getcwd()
    sys_path = [here if entry == "" else entry for entry in sys.path]
    changes = {"PYTHONPATH": root, "PYTHONSAFEPATH": "1",
               FORKHOST_SYS_PATH: SYS_PATH_SEPARATOR.join(sys_path)}
    for name in ("PYTHONPATH", "PYTHONSAFEPATH"):
        old = os.environ.get(name)
        changes[FORKHOST_SAVED + name] = "" if old is None else "=" + old
    saved = {name: os.environ.get(name) for name in changes}
    os.environ.update(changes)
    try:
        forkserver.ensure_running()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def stop_signals(received: List[int]) -> Iterator[socket.socket]:
    """While the block runs, Ctrl-C and SIGTERM are only appended to `received`; the
    socket yielded becomes readable at each, so that a loop blocked in `Pool.wait` (give
    it as an extra fd) wakes up to act on them. The old handlers come back afterwards.
    Outside the main thread (an in-process caller) signals stay as they are."""
    def handler(signum, frame):
        received.append(signum)

    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    old = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, handler)
        old["wakeup_fd"] = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
    except (ValueError, OSError):
        pass
    try:
        yield wake_r
    finally:
        if "wakeup_fd" in old:
            signal.set_wakeup_fd(old.pop("wakeup_fd"))
        for sig, previous in old.items():
            signal.signal(sig, previous)
        wake_r.close()
        wake_w.close()
