"""Runs inside a worker process (spawn start method): one task attempt at a time.

    runner ──AttemptRequest──► worker ──start_child──► guard ─► `claude -p` (+ its tree)
           ◄──Progress/AttemptResult──┘  ◄── stream-json lines ─┘

The worker talks only to the runner, over its own duplex pipe. It may import the pure
claude-output modules, `qw.proctree` and `qw.probe`, nothing that touches run state. EOF on
the pipe means the runner is gone: the worker stops its child tree and exits (the guard
does the same if the worker itself is killed).

While a child runs, the worker samples its process tree (qw.probe: on POSIX the guard and
everything under it) every USAGE_EVERY_S and once more when its output ends: the result
carries the tree's peak RSS and CPU seconds, and progress the figures so far, from which
the runner's admission control learns how much memory a running task still may take.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, replace
from typing import Dict, Optional, Tuple

# Messages are small frozen dataclasses of built-in types, named by direction.


@dataclass(frozen=True)
class AttemptRequest:
    """Runner -> worker: run one attempt."""

    task_id: str
    attempt: int
    argv: Tuple[str, ...]
    env: Dict[str, str]
    cwd: str
    prompt: str
    timeout_s: float
    idle_timeout_s: float
    transcript: str
    grace_s: float = 5.0


@dataclass(frozen=True)
class Cancel:
    """Runner -> worker: stop the running attempt now (Ctrl-C, run stopping)."""

    reason: str = "interrupted"


@dataclass(frozen=True)
class Progress:
    """Worker -> runner: what the child is doing, at most once per PROGRESS_EVERY_S."""

    task_id: str
    attempt: int
    info: Dict[str, object]


@dataclass(frozen=True)
class AttemptResult:
    """Worker -> runner: how one attempt ended (`outcome` is a qw.outcome.Outcome)."""

    task_id: str
    attempt: int
    outcome: object
    exit_code: Optional[int]
    started_at: float
    ended_at: float
    stderr_tail: str = ""
    pid: Optional[int] = None   # the supervised process, for status/debugging
    # The child's process tree: peak resident memory (MB) and CPU seconds (user + system).
    # None: not measured (no probe here, or the tree could not be seen).
    peak_rss_mb: Optional[float] = None
    cpu_s: Optional[float] = None


PROGRESS_EVERY_S = 1.0
POLL_S = 0.5   # longest a worker goes without checking for Cancel and deadlines
# How often the child's tree is measured. A sample walks the process table (a few ms):
# often enough to catch a peak that lasts a second, rare enough to cost nothing.
USAGE_EVERY_S = 0.5


def worker_main(worker_id: int, conn) -> None:
    """Entry point of a worker process: serve attempt requests until the pipe closes."""
    # A terminal's Ctrl-C (or a SIGTERM to the process group, as service managers send)
    # reaches every worker too; the runner alone decides what it means and cancels
    # attempts through the pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if isinstance(msg, AttemptRequest):
            try:
                result = run_attempt(msg, conn)
            except Exception as error:   # e.g. the transcript cannot be written
                from qw.outcome import Outcome
                now = time.time()
                result = AttemptResult(msg.task_id, msg.attempt, Outcome(
                    "crashed", f"qw's worker failed to run it: {error}"), None, now, now)
            try:
                conn.send(result)
            except (OSError, EOFError):
                return
        # A stray Cancel between attempts needs no answer.


def run_attempt(req: AttemptRequest, conn) -> AttemptResult:
    """Start the child, stream its output to the transcript, enforce limits, classify."""
    from qw.claude import StreamState
    from qw.outcome import INTERRUPTED, Outcome, classify
    from qw.proctree import start_child

    # The probe first: finding it (importing psutil) can take longer than a quick child lives.
    probe = _probe()
    started = time.time()
    state = StreamState()
    os.makedirs(os.path.dirname(req.transcript), exist_ok=True)
    try:
        child = start_child(list(req.argv), env=req.env, cwd=req.cwd,
                            stdin_data=req.prompt.encode("utf-8"), grace=req.grace_s)
    except OSError as e:
        return AttemptResult(req.task_id, req.attempt, Outcome(
            "crashed", f"could not start {req.argv[0]}: {e.strerror or e}"),
            None, started, time.time())
    meter = _Meter(probe, child.pid)
    try:
        with open(req.transcript, "ab") as transcript:
            stopped, cancel_reason = _stream(req, conn, child, state, transcript, started,
                                             meter)
        meter.sample()   # the last look, before the tree is stopped or reaped
        if stopped or cancel_reason:
            exit_code = child.stop()
        else:
            exit_code = child.wait(req.grace_s * 2 + 5)
            if exit_code is None:   # closed its output but did not exit
                exit_code = child.stop()
        stderr_tail = child.stderr_tail()
    finally:
        child.close()
    ended = time.time()
    if cancel_reason:
        outcome = Outcome(INTERRUPTED, cancel_reason, cost_usd=state.cost_usd or 0.0,
                          session_id=state.session_id)
    else:
        outcome = classify(state, exit_code, stopped=stopped, stderr_tail=stderr_tail, now=ended)
        if outcome.kind == "timeout":
            outcome = replace(outcome, message=f"timed out after {req.timeout_s:.0f}s "
                              "([run] timeout)")
        elif outcome.kind == "hung":
            outcome = replace(outcome, message=f"no output for {req.idle_timeout_s:.0f}s "
                              "([run] idle_timeout); stopped it")
    return AttemptResult(req.task_id, req.attempt, outcome, exit_code, started, ended,
                         stderr_tail, child.pid, meter.peak_rss_mb, meter.cpu_s)


def _stream(req: AttemptRequest, conn, child, state, transcript, started: float, meter):
    """Copy the child's lines to the transcript until EOF, a limit, or a cancel; measure
    the child's tree on the way.

    Returns (stopped, cancel_reason): stopped is "timeout" or "hung" when a limit hit.
    """
    deadline = started + req.timeout_s
    last_event = started
    # From the start, not 0: a task shorter than PROGRESS_EVERY_S sends no Progress at all.
    last_progress = started
    next_sample = started
    while True:
        now = time.time()
        if now >= deadline:
            return "timeout", None
        if now - last_event >= req.idle_timeout_s:
            return "hung", None
        cancel_reason = _cancel_requested(conn)
        if cancel_reason:
            return None, cancel_reason
        if now >= next_sample:
            next_sample = now + USAGE_EVERY_S
            if meter.sample() and now - last_progress >= PROGRESS_EVERY_S:
                # A quiet child still grows: the runner hears of its memory all the same.
                last_progress = now
                _send(conn, Progress(req.task_id, req.attempt, meter.progress()))
        wait = min(POLL_S, deadline - now, last_event + req.idle_timeout_s - now,
                   next_sample - now)
        line = child.read_line(max(wait, 0.01))
        if line is None:
            continue
        if line == b"":
            return None, None   # EOF: the child closed its output (it exited)
        last_event = time.time()
        transcript.write(line if line.endswith(b"\n") else line + b"\n")
        transcript.flush()
        state.feed(line)
        if last_event - last_progress >= PROGRESS_EVERY_S:
            last_progress = last_event
            _send(conn, Progress(req.task_id, req.attempt,
                                 dict(state.progress(), **meter.progress())))


class _Meter:
    """The peak RSS and CPU seconds of one child's process tree, from repeated samples."""

    def __init__(self, probe, pid: int):
        self.probe = probe   # None: nothing can be measured here
        self.pid = pid
        self.peak_rss_mb: Optional[float] = None
        self.cpu_s: Optional[float] = None
        self.rss_mb: Optional[float] = None   # the last sample's

    def sample(self) -> bool:
        """Measure the tree now; False when it cannot be seen (gone, or no probe)."""
        try:
            usage = self.probe.tree_usage(self.pid) if self.probe is not None else None
        except Exception:   # a measurement must never cost the attempt
            usage = None
        if usage is None:
            return False
        self.rss_mb = usage.rss_mb
        self.peak_rss_mb = max(self.peak_rss_mb or 0.0, usage.rss_mb)
        # CPU time only grows; a process reaped between two looks can hide a moment's.
        self.cpu_s = max(self.cpu_s or 0.0, usage.cpu_s)
        return True

    def progress(self) -> Dict[str, object]:
        """The figures for a Progress message: RSS now, and CPU seconds so far."""
        if self.rss_mb is None:
            return {}
        return {"rss_mb": self.rss_mb, "cpu_s": self.cpu_s}


_PROBE: list = []   # [the probe or None], found on first use in this worker process


def _probe():
    """qw.probe's backend for this process, or None when there is none."""
    if not _PROBE:
        try:
            from qw.probe import get_probe
            _PROBE.append(get_probe())
        except Exception:   # no way to measure here: attempts run unmeasured
            _PROBE.append(None)
    return _PROBE[0]


def _cancel_requested(conn) -> Optional[str]:
    """The reason if the runner asked to cancel (or is gone), else None. Never blocks."""
    try:
        if not conn.poll():
            return None
        msg = conn.recv()
    except (EOFError, OSError):
        return "runner gone"
    return msg.reason if isinstance(msg, Cancel) else None


def _send(conn, msg) -> None:
    try:
        conn.send(msg)
    except (OSError, EOFError):
        pass
