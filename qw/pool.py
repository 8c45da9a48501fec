"""The fixed pool of worker processes, as the runner sees it.

Exactly `size` workers, started once with the spawn start method on every OS. Each has a
duplex pipe to the runner. `wait()` blocks on every pipe and every worker's sentinel
together (as concurrent.futures.process does), so a worker that dies is noticed at once;
it is replaced, and the attempt it was running is reported as a crash.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import socket
import time
from multiprocessing.connection import wait as mp_wait
from typing import Dict, Iterator, List, Optional, Tuple

from qw.worker import AttemptRequest, AttemptResult, Cancel, worker_main


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
        self.ctx = multiprocessing.get_context("spawn")
        self.slots: Dict[int, _Slot] = {}
        self.extra_fds = list(extra_fds)   # e.g. the signal wake-up socket
        self.replaced = 0

    def start(self) -> None:
        for worker_id in range(1, self.size + 1):
            self.slots[worker_id] = self._spawn(worker_id)

    def _spawn(self, worker_id: int) -> _Slot:
        here, there = self.ctx.Pipe(duplex=True)
        process = self.ctx.Process(target=worker_main, args=(worker_id, there),
                                   name=f"qw-worker-{worker_id}", daemon=True)
        process.start()
        there.close()
        return _Slot(worker_id, process, here)

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
        by_conn = {s.conn: s for s in self.slots.values()}
        by_sentinel = {s.process.sentinel: s for s in self.slots.values()}
        ready = mp_wait(list(by_conn) + list(by_sentinel) + self.extra_fds, timeout)
        events: List[Tuple[str, int, object]] = []
        dead: List[_Slot] = []
        for obj in ready:
            if obj in by_conn:
                slot = by_conn[obj]
                try:
                    while slot.conn.poll():
                        msg = slot.conn.recv()
                        if isinstance(msg, AttemptResult):
                            slot.request = None
                        events.append(("message", slot.worker_id, msg))
                except (EOFError, OSError):
                    dead.append(slot)
            elif obj in by_sentinel:
                dead.append(by_sentinel[obj])
            else:
                events.append(("wakeup", obj, None))
        for slot in {id(s): s for s in dead}.values():
            if self.slots.get(slot.worker_id) is not slot:
                continue
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
