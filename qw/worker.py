"""Runs inside a worker process (spawn start method): one task attempt at a time.

    runner ──AttemptRequest──► worker ──start_child──► guard ─► `claude -p` (+ its tree)
           ◄──Progress/AttemptResult──┘  ◄── stream-json lines ─┘

The worker talks only to the runner, over its own duplex pipe. It may import the pure
claude-output modules, `qw.proctree` and `qw.probe`, nothing that touches run state. EOF on
the pipe means the runner is gone: the worker stops its child tree and exits (the guard
does the same if the worker itself is killed).

While a child runs, the worker samples its process tree (qw.probe) every USAGE_EVERY_S,
from USAGE_EVERY_S after its start: progress carries the figures so far, from which the
runner's admission control learns how much memory a running task still may take. When the
tree is gone, its guard reports what the kernel counted for every process it reaped (the
largest peak RSS, all the CPU time); the result carries the larger of that and the samples.
Where no guard reaps the tree (Windows), the tree is sampled once more when its output ends
instead. A child that lives less than USAGE_EVERY_S thus costs no process-table walk.

After a child that succeeded, the same attempt goes on here (issue 8):

- "changed nothing": when the repository is a git work tree, `git status` before the child
  and after it (qw.treewatch) says whether the child changed anything; the result carries
  the flag. Not a failure, a note for the user.
- verify: the request's verify command runs under `start_child` (its tree supervised and
  stopped like the child's), in the repository with the child's environment and no input,
  its output (stdout and stderr together) saved next to the transcript. A non-zero exit or
  a run past its timeout turns the attempt into `verify_failed`; a command that cannot be
  started (not found, or not executable: a script without a #! line), into `verify_error`.
"""

from __future__ import annotations

import errno
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Tuple

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
    # Run after a child that succeeded (empty: none): argv, the command as the user wrote
    # it (for messages), its time limit, and the file its output goes to.
    verify_argv: Tuple[str, ...] = ()
    verify_command: str = ""
    verify_timeout_s: float = 600.0
    verify_log: str = ""
    # git pathspecs whose changes tell whether the child changed anything (see
    # qw.treewatch.change_pathspecs); None: do not look.
    watch: Optional[Tuple[str, ...]] = None


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
    # The child succeeded and the watched files are as they were before it (None: not
    # known: the child failed, or no git work tree, or git could not tell).
    changed_nothing: Optional[bool] = None
    # A verify command that ran: its exit code (None: stopped at its timeout, or it never
    # ran) and the last VERIFY_TAIL_CHARS of its output, for the prompt of the retry.
    verify_exit_code: Optional[int] = None
    verify_tail: str = ""
    # (input, output) tokens the child's output reported (None: no output was read).
    tokens: Optional[Tuple[int, int]] = None


PROGRESS_EVERY_S = 1.0
POLL_S = 0.5   # longest a worker goes without checking for Cancel and deadlines
# How often a running child's tree is measured. A sample walks the process table (a few
# ms): often enough to catch a peak that lasts a second, rare enough to cost nothing.
USAGE_EVERY_S = 0.5
# How much of a failed verify's output the retry's prompt gets: enough for a traceback or a
# compiler's errors, small next to the prompt itself.
VERIFY_TAIL_CHARS = 4000
# Runs the verify command with its stderr merged into its stdout (one pipe: the log holds
# both in the order they were written), then becomes it (POSIX) or waits for it (Windows,
# whose exec starts a new process and loses the exit code). -I -S: nothing of the user's
# site-packages or PYTHON* variables, and a faster start. When the command cannot be
# executed (a script without a #! line, a missing interpreter), the shim says so in one
# line starting with EXEC_FAILED_MARK (errno, then its text) instead of running anything:
# an exit code alone could not tell that from a check that failed.
EXEC_FAILED_MARK = b"\0qw-exec-failed "
_MERGE_POSIX = ("import os, sys\n"
                "os.dup2(1, 2)\n"
                "try:\n"
                "    os.execv(sys.argv[1], sys.argv[2:])\n"
                "except OSError as e:\n"
                "    os.write(1, b'\\0qw-exec-failed %d %s\\n'\n"
                "             % (e.errno or 0, (e.strerror or str(e)).encode()))\n"
                "    os._exit(126)\n")
_MERGE_WINDOWS = ("import subprocess, sys\n"
                  "try:\n"
                  "    code = subprocess.call(sys.argv[2:], executable=sys.argv[1], "
                  "stderr=subprocess.STDOUT)\n"
                  "except OSError as e:\n"
                  "    sys.stdout.buffer.write(b'\\0qw-exec-failed %d %s\\n'\n"
                  "                            % (e.errno or 0, (e.strerror or str(e)).encode()))\n"
                  "    sys.stdout.flush()\n"
                  "    code = 126\n"
                  "sys.exit(code)\n")


def worker_main(worker_id: int, conn) -> None:
    """Entry point of a worker process: serve attempt requests until the pipe closes."""
    # A terminal's Ctrl-C (or a SIGTERM to the process group, as service managers send)
    # reaches every worker too; the runner alone decides what it means and cancels
    # attempts through the pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _warm_up()
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


def _warm_up() -> None:
    """Before the first request: what the first attempt would otherwise wait for (the
    modules an attempt uses, a guard ready), done while the run is still starting its
    state owner, so that the first children start sooner."""
    import importlib

    from qw import proctree

    for module in ("qw.claude", "qw.outcome"):
        importlib.import_module(module)
    # Not the probe (psutil), where no fork server has imported it already (qw.forkhost):
    # the first sample comes USAGE_EVERY_S into a child, so a run of quick children never
    # needs it, and a long child can wait for its import.
    try:
        proctree.prepare()
    except OSError:
        pass   # the first attempt tries again, and reports why it cannot


def run_attempt(req: AttemptRequest, conn) -> AttemptResult:
    """Start the child, stream its output to the transcript, enforce limits, classify;
    after a success, tell whether it changed anything, and run the verify command."""
    from qw.claude import StreamState
    from qw.outcome import INTERRUPTED, Outcome, classify
    from qw.proctree import start_child
    from qw.treewatch import tree_fingerprint

    started = time.time()
    state = StreamState()
    os.makedirs(os.path.dirname(req.transcript), exist_ok=True)
    before = tree_fingerprint(req.cwd, req.watch, req.env) if req.watch is not None else None
    try:
        child = start_child(list(req.argv), env=req.env, cwd=req.cwd,
                            stdin_data=req.prompt.encode("utf-8"), grace=req.grace_s)
    except OSError as e:
        return AttemptResult(req.task_id, req.attempt, Outcome(
            "crashed", f"could not start {req.argv[0]}: {e.strerror or e}"),
            None, started, time.time())
    meter = _Meter(child.pid)
    try:
        with open(req.transcript, "ab") as transcript:
            stopped, cancel_reason = _stream(req, conn, child, state, transcript, started,
                                             meter)
        if child.guard_pid is None:   # no guard to count the tree: a last look, then
            meter.sample()
        exit_code = _end(child, bool(stopped or cancel_reason), req.grace_s)
        meter.add_final(child.usage)
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
    changed_nothing = verify_exit = None
    verify_tail = ""
    if outcome.kind == "ok":
        if before is not None:
            after = tree_fingerprint(req.cwd, req.watch, req.env)
            changed_nothing = None if after is None else after == before
        if req.verify_argv:
            outcome, verify_exit, verify_tail = _verify(req, conn, outcome)
            ended = time.time()
    return AttemptResult(req.task_id, req.attempt, outcome, exit_code, started, ended,
                         stderr_tail, child.pid, meter.peak_rss_mb, meter.cpu_s,
                         changed_nothing, verify_exit, verify_tail,
                         (state.input_tokens, state.output_tokens))


def _stream(req: AttemptRequest, conn, child, state, transcript, started: float, meter):
    """Copy the child's lines to the transcript until EOF, a limit, or a cancel; measure
    the child's tree on the way.

    Returns (stopped, cancel_reason): stopped is "timeout" or "hung" when a limit hit.
    """
    deadline = started + req.timeout_s
    last_event = started
    # From the start, not 0: a task shorter than PROGRESS_EVERY_S sends no Progress at all.
    last_progress = started
    # A tree that has only just started holds nothing worth a walk of the process table.
    next_sample = started + USAGE_EVERY_S
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


def _verify(req: AttemptRequest, conn, ok) -> Tuple[object, Optional[int], str]:
    """Run the request's verify command after the successful outcome `ok`; return the
    attempt's outcome (`ok` itself if it passed), its exit code and its output's tail."""
    from qw.claude import one_line
    from qw.config import duration_text   # as the user writes it: "10m", "1s"
    from qw.outcome import INTERRUPTED, VERIFY_ERROR, VERIFY_FAILED
    from qw.proctree import resolve_command, start_child

    command, name = req.verify_command or " ".join(req.verify_argv), req.verify_argv[0]
    # In messages, short enough to leave room for what went wrong (the log has it whole).
    shown = one_line(command, 60)
    started = time.time()
    tail = _Tail(VERIFY_TAIL_CHARS)
    with open(req.verify_log, "wb") as log:
        log.write(f"$ {command}\n".encode("utf-8"))
        log.flush()
        try:
            exe = resolve_command(name, req.env, req.cwd)
            child = start_child(_merged_output(exe, req.verify_argv), env=req.env,
                                cwd=req.cwd, stdin_data=b"", grace=req.grace_s)
        except OSError as error:
            why = "not found on PATH" if isinstance(error, FileNotFoundError) \
                else (error.strerror or str(error))
            log.write(f"qw: cannot start {name}: {why}\n".encode("utf-8"))
            return replace(ok, kind=VERIFY_ERROR, message=f"verify `{shown}` could not "
                           f"be started: {name}: {why}"), None, ""
        cancel_reason = None
        timed_out = False
        exec_failed = None   # (errno, its text): the shim could not execute the command
        try:
            deadline = started + req.verify_timeout_s
            while True:
                now = time.time()
                if now >= deadline:
                    timed_out = True
                    break
                cancel_reason = _cancel_requested(conn)
                if cancel_reason:
                    break
                line = child.read_line(max(0.01, min(POLL_S, deadline - now)))
                if line is None:
                    continue
                if line == b"":
                    break
                if line.startswith(EXEC_FAILED_MARK) and exec_failed is None:
                    exec_failed = _exec_failure(line)
                    continue
                log.write(line)
                log.flush()   # `qw logs --follow` shows it as it comes
                tail.add(line)
            exit_code = _end(child, bool(timed_out or cancel_reason), req.grace_s)
        finally:
            child.close()
        text = tail.text()
        if cancel_reason:
            log.write(b"\n[stopped: the run is stopping]\n")
            return replace(ok, kind=INTERRUPTED, message=cancel_reason, note=""), None, text
        if exec_failed is not None:
            why = exec_failed[1] + _EXEC_HINTS.get(exec_failed[0], "")
            log.write(f"qw: cannot start {name}: {why}\n".encode("utf-8"))
            return replace(ok, kind=VERIFY_ERROR, note="", message=f"verify `{shown}` could "
                           f"not be started: {name}: {why}"), None, ""
        if timed_out:
            limit = duration_text(req.verify_timeout_s)
            log.write(f"\n[stopped: still running after {limit}]\n".encode("utf-8"))
            return replace(ok, kind=VERIFY_FAILED, note="", message=(
                f"verify `{shown}` timed out after {limit} ([run] verify_timeout)")), \
                None, text
        log.write(f"[exit {exit_code}]\n".encode("utf-8"))
    if exit_code == 0:
        return ok, 0, text
    last = next((l for l in reversed(text.splitlines()) if l.strip()), "(no output)")
    return replace(ok, kind=VERIFY_FAILED, note="", message=(
        f"verify `{shown}` failed (exit {exit_code}): {one_line(last, 200)}")), \
        exit_code, text


# What an exec failure most often means, after its errno text.
_EXEC_HINTS = {errno.ENOEXEC: " (a script needs a #! line naming its interpreter)",
               errno.EACCES: " (check its permissions, and those of its #! interpreter)",
               errno.ENOENT: " (its #! line names an interpreter that does not exist?)"}


def _exec_failure(line: bytes) -> Tuple[int, str]:
    """(errno, its text) from the shim's EXEC_FAILED_MARK line."""
    number, _, text = line[len(EXEC_FAILED_MARK):].decode("utf-8", "replace").strip() \
        .partition(" ")
    try:
        code = int(number)
    except ValueError:
        code = 0
    return code, text or os.strerror(code)


def _merged_output(exe: str, argv: Tuple[str, ...]) -> List[str]:
    """The argv that runs `exe` (found for argv[0]) with argv, stderr into stdout."""
    code = _MERGE_WINDOWS if os.name == "nt" else _MERGE_POSIX
    return [sys.executable, "-I", "-S", "-c", code, exe] + list(argv)


class _Tail:
    """The last `limit` characters of a stream of output lines."""

    def __init__(self, limit: int):
        self.limit = limit
        self.parts: List[bytes] = []
        self.size = 0

    def add(self, data: bytes) -> None:
        self.parts.append(data)
        self.size += len(data)
        # Bytes, then characters: 4 bytes per character at most in UTF-8.
        while len(self.parts) > 1 and self.size - len(self.parts[0]) >= self.limit * 4:
            self.size -= len(self.parts.pop(0))

    def text(self) -> str:
        return b"".join(self.parts).decode("utf-8", "replace")[-self.limit:]


# ----- what the runner asks for


def verify_argv(task, run, tasks_path: str) -> Tuple[Tuple[str, ...], str]:
    """The verify command for `task` (its `_Verify:` line, else `[run] verify`) as argv,
    and as written; ((), "") when there is none (also `none`, or empty). SpecError or
    ConfigError when it cannot be split into words (an unclosed quote)."""
    from qw.errors import ConfigError, SpecError

    own = task.verify is not None   # even `none` or empty: the task's line wins
    command = (task.verify if own else run.verify or "").strip()
    if command.lower() in ("", "none"):
        return (), ""
    try:
        argv = split_command(command)
    except ValueError as error:
        what = f"cannot split the verify command {command!r} into words ({error})"
        fix = "close the quote; the command runs without a shell (write `sh -c '...'`)"
        if own:
            raise SpecError(f"task {task.id}: {what}", f"{tasks_path}:{task.line}",
                            fix) from None
        raise ConfigError(what, "[run] verify", fix) from None
    return (tuple(argv), command) if argv else ((), "")


def split_command(command: str) -> List[str]:
    """`command` split into words like a POSIX shell would, without running one (no
    pipes, no variables). ValueError for an unclosed quote. On Windows, backslashes stay
    (they are path separators there) and quotes around a word are removed."""
    if os.name != "nt":
        return shlex.split(command)
    words = shlex.split(command, posix=False)
    return [w[1:-1] if len(w) > 1 and w[0] == w[-1] and w[0] in "\"'" else w for w in words]


def _end(child, stop_now: bool, grace_s: float) -> int:
    """The exit code of a child whose output has ended (or that must stop now): stopped at
    once, or given time to exit, and stopped if it closed its output but does not exit."""
    code = None if stop_now else child.wait(grace_s * 2 + 5)
    return child.stop() if code is None else code


class _Meter:
    """The peak RSS and CPU seconds of one child's process tree, from repeated samples."""

    def __init__(self, pid: int):
        self.pid = pid
        self.peak_rss_mb: Optional[float] = None
        self.cpu_s: Optional[float] = None
        self.rss_mb: Optional[float] = None   # the last sample's

    def sample(self) -> bool:
        """Measure the tree now; False when it cannot be seen (gone, or no probe)."""
        from qw.probe import shared_probe
        try:
            # Found on the first sample (warmed in the fork server, where there is one);
            # None: nothing can be measured here.
            probe = shared_probe()
            usage = probe.tree_usage(self.pid) if probe is not None else None
        except Exception:   # a measurement must never cost the attempt
            usage = None
        if usage is None:
            return False
        self.rss_mb = usage.rss_mb
        self.peak_rss_mb = max(self.peak_rss_mb or 0.0, usage.rss_mb)
        # CPU time only grows; a process reaped between two looks can hide a moment's.
        self.cpu_s = max(self.cpu_s or 0.0, usage.cpu_s)
        return True

    def add_final(self, usage: Optional[Tuple[float, float]]) -> None:
        """Count the kernel's figures for the whole tree once it is gone: (the largest
        process's peak RSS, MB; all its CPU seconds), or None when there are none."""
        if usage is None:
            return
        peak_mb, cpu_s = usage
        self.peak_rss_mb = round(max(self.peak_rss_mb or 0.0, peak_mb), 1)
        self.cpu_s = round(max(self.cpu_s or 0.0, cpu_s), 2)

    def progress(self) -> Dict[str, object]:
        """The figures for a Progress message: RSS now, and CPU seconds so far."""
        if self.rss_mb is None:
            return {}
        return {"rss_mb": self.rss_mb, "cpu_s": self.cpu_s}


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
