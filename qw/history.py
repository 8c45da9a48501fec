"""Every recorded run of a repository, read back from its journals (DESIGN §2).

    .qw/runs/<run-id>/events.jsonl ──History.run(id)──► RunHistory: the run, its tasks and
    .qw/runs/<run-id>/<task>.<n>.jsonl                   its attempts (start, end, outcome,
                                                         worker, cost, tokens)

Reading only: no lock is needed and nothing is written, so a run that is still going can
be read too (its journal is whole lines up to the one being written, which is left out).
`build_run` and `peak_overlap` are pure; `History` adds the files, and caches each journal
until it changes, so a dashboard polling every few seconds reads a finished run once.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, replace
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from qw.errors import StateError
from qw.journal import Journal
from qw.state import INTERRUPTED, OK, RunState, recover_interrupted

# A run id (20261121-071800-ab12) or a task id (2.1) as they may appear in a URL or a file
# name: no separators, no leading dot, so never `..` nor a path.
SAFE_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
# The agent of an attempt whose journal says it ran without one (Claude Code's own).
NO_AGENT = "default"
# How much of a transcript's end is read for its token counts: the result line is last.
TOKENS_TAIL_BYTES = 256 * 1024


def safe_name(text: str) -> bool:
    """True if `text` can only name a file inside one folder: no separator, not `..`."""
    return bool(SAFE_NAME.match(text)) and ".." not in text


@dataclass(frozen=True)
class AttemptRecord:
    """One attempt of a task in a run, as its journal tells it."""

    task: str
    attempt: int                  # the scheduler's attempt number
    launch: int                   # the n-th start of this task in the run: its transcript
    worker: Optional[int]
    started_at: float
    ended_at: Optional[float]     # None while it runs
    outcome: Optional[str]        # an outcome kind; None while it runs
    message: Optional[str] = None
    cost_usd: float = 0.0
    duration_s: Optional[float] = None
    exit_code: Optional[int] = None
    session_id: Optional[str] = None
    peak_rss_mb: Optional[float] = None
    cpu_s: Optional[float] = None
    agent: Optional[str] = None   # NO_AGENT for none; None when the journal does not say
    timeout_s: Optional[float] = None
    retried: bool = False         # a retry of the task was scheduled after it
    end_recorded: bool = False    # its attempt_ended is in the journal
    # From its attempt_ended, else from its transcript (History fills them in then).
    input_tokens: Optional[int] = None
    output_tokens: Optional[int] = None

    @property
    def transcript(self) -> str:
        """The transcript's file name in the run's folder."""
        return f"{self.task}.{self.launch}.jsonl"

    @property
    def failed(self) -> bool:
        return self.outcome is not None and self.outcome != OK


@dataclass(frozen=True)
class RunHistory:
    """One run: what it was asked, how it ended, every attempt in start order."""

    run_id: str
    spec: Optional[str]
    live: bool
    status: str                   # run_ended's word; "running" if live; else "interrupted"
    started_at: Optional[float]
    ended_at: Optional[float]     # when run_ended was recorded
    last_event_at: Optional[float]
    exit_code: Optional[int]
    stop_reason: Optional[str]
    max_concurrent: Optional[int]  # when run_started records it
    attempts: Tuple[AttemptRecord, ...]
    view: Dict[str, Any]          # the `qw status --json` view of the run as it stands
    warning: Optional[str] = None  # the journal has a bad line: read up to it

    def workers(self) -> List[Optional[int]]:
        """The workers that ran an attempt, in order (None: not recorded)."""
        seen = {a.worker for a in self.attempts}
        return sorted(seen, key=lambda w: (w is None, w or 0))

    def intervals(self, now: Optional[float] = None) -> List[Tuple[float, float]]:
        """Each attempt's [start, end); a running one ends at `now` (else the last event)."""
        until = now if now is not None else (self.last_event_at or 0.0)
        return [(a.started_at, a.ended_at if a.ended_at is not None
                 else max(a.started_at, until)) for a in self.attempts]

    def to_json(self) -> Dict[str, Any]:
        return {"run_id": self.run_id, "spec": self.spec, "live": self.live,
                "status": self.status, "started_at": self.started_at,
                "ended_at": self.ended_at, "last_event_at": self.last_event_at,
                "exit_code": self.exit_code, "stop_reason": self.stop_reason,
                "max_concurrent": self.max_concurrent, "warning": self.warning,
                "attempts": [attempt_json(a) for a in self.attempts],
                "workers": self.workers(),
                "peak_concurrency": peak_overlap(self.intervals()),
                "tasks": self.view.get("tasks", []), "totals": self.totals()}

    def totals(self) -> Dict[str, Any]:
        """The view's task counts and cost, with the attempts' tokens."""
        totals = dict(self.view.get("totals") or {})
        totals["input_tokens"] = sum(a.input_tokens or 0 for a in self.attempts)
        totals["output_tokens"] = sum(a.output_tokens or 0 for a in self.attempts)
        return totals


def attempt_json(a: AttemptRecord) -> Dict[str, Any]:
    return {"task": a.task, "attempt": a.attempt, "launch": a.launch, "worker": a.worker,
            "started_at": a.started_at, "ended_at": a.ended_at, "outcome": a.outcome,
            "message": a.message, "cost_usd": a.cost_usd, "duration_s": a.duration_s,
            "exit_code": a.exit_code, "session_id": a.session_id,
            "peak_rss_mb": a.peak_rss_mb, "cpu_s": a.cpu_s, "agent": a.agent,
            "timeout_s": a.timeout_s, "retried": a.retried, "end_recorded": a.end_recorded,
            "input_tokens": a.input_tokens, "output_tokens": a.output_tokens,
            "transcript": a.transcript}


def build_run(run_id: str, events: Sequence[Dict[str, Any]], live: bool = False,
              warning: Optional[str] = None) -> RunHistory:
    """The run that `events` (its journal, header left out) record. An attempt that never
    ended in a run that is not live ended as interrupted when the run's last event did."""
    started: Dict[str, Any] = {}
    ended: Dict[str, Any] = {}
    attempts: List[Dict[str, Any]] = []
    open_of: Dict[str, Dict[str, Any]] = {}       # task -> its attempt without an end yet
    last_of: Dict[str, Dict[str, Any]] = {}       # task -> its latest attempt
    launches: Dict[str, int] = {}
    state = RunState()
    last_t: Optional[float] = None
    for event in events:
        kind, t = event.get("type"), _number(event.get("t"))
        # `qw reset` writes into the last run's journal, maybe days later: its events are
        # no sign of the run's life, and what it interrupts ended when the run went quiet.
        afterwards = kind == "task_reset" or (kind == "task_status"
                                              and event.get("reason") == INTERRUPTED)
        if t is not None and not afterwards:
            last_t = t if last_t is None else max(last_t, t)
        try:
            state.apply(event)
        except ValueError:
            pass   # a line the state cannot take: its attempts are still read below
        task = event.get("task")
        if kind == "run_started" and not started:
            started = event
        elif kind == "run_ended":
            ended = event
        elif kind == "attempt_started" and isinstance(task, str) and t is not None:
            launches[task] = launches.get(task, 0) + 1
            record = {"task": task, "attempt": _int(event.get("attempt")) or 0,
                      "launch": launches[task], "worker": _int(event.get("worker")),
                      "started_at": t, "ended_at": None, "outcome": None,
                      "agent": _agent(event),
                      "timeout_s": _number(event.get("timeout_s"))}
            attempts.append(record)
            open_of[task] = last_of[task] = record
        elif kind == "attempt_ended" and isinstance(task, str) and task in open_of:
            record = open_of.pop(task)
            record.update(
                ended_at=t if t is not None else record["started_at"],
                outcome=str(event.get("outcome") or "unknown"),
                message=_text(event.get("message")),
                cost_usd=_number(event.get("cost_usd")) or 0.0,
                duration_s=_number(event.get("duration_s")),
                exit_code=_int(event.get("exit_code")),
                session_id=_text(event.get("session_id")),
                peak_rss_mb=_number(event.get("peak_rss_mb")),
                cpu_s=_number(event.get("cpu_s")), end_recorded=True,
                input_tokens=_int(event.get("input_tokens")),
                output_tokens=_int(event.get("output_tokens")))
            record["agent"] = _agent(event) or record["agent"]
        elif kind == "retry_scheduled" and isinstance(task, str) and task in last_of:
            last_of[task]["retried"] = True
        elif afterwards and isinstance(task, str) and task in open_of:
            _interrupt(open_of.pop(task), last_t)
    if not live:
        for record in open_of.values():
            _interrupt(record, last_t)
        if state.run_id is not None and last_t is not None:
            for event in recover_interrupted(state, last_t):
                state.apply(event)
    if ended:
        status = str(ended.get("status") or "ended")
    else:
        status = "running" if live else INTERRUPTED
    view = state.view(live=live) if state.run_id is not None else {"tasks": [], "totals": {}}
    return RunHistory(
        run_id=run_id, spec=_text(started.get("spec")), live=live, status=status,
        started_at=_number(started.get("t")), ended_at=_number(ended.get("t")),
        last_event_at=last_t, exit_code=_int(ended.get("exit_code")),
        stop_reason=_text(ended.get("reason")),
        max_concurrent=_int(started.get("max_concurrent")),
        attempts=tuple(AttemptRecord(**r) for r in attempts), view=view, warning=warning)


def peak_overlap(intervals: Iterable[Tuple[float, float]]) -> int:
    """The most intervals [start, end) that hold one moment in common (one ending as
    another starts do not overlap)."""
    points = []
    for start, end in intervals:
        points.append((start, 1))
        points.append((max(start, end), -1))
    most = now = 0
    for _, step in sorted(points):   # at a tie, -1 sorts first: an end before a start
        now += step
        most = max(most, now)
    return most


class History:
    """The runs recorded under one `.qw/` folder. Thread-safe; each journal is read again
    only when its size or modification time changes."""

    def __init__(self, qw_dir: str):
        self.qw_dir = os.fspath(qw_dir)
        self.runs_dir = os.path.join(self.qw_dir, "runs")
        self._lock = threading.Lock()
        self._journals: Dict[str, Tuple[Tuple[int, int], List[Dict[str, Any]],
                                        Optional[str]]] = {}
        self._tokens: Dict[str, Tuple[Tuple[int, int], Tuple[int, int]]] = {}
        self._built: Dict[str, Tuple[Tuple[int, int], RunHistory]] = {}

    def run_ids(self) -> List[str]:
        """Every run with a journal, oldest first (run ids sort by start time)."""
        try:
            names = os.listdir(self.runs_dir)
        except OSError:
            return []
        return sorted(n for n in names if self.has_run(n))

    def has_run(self, run_id: str) -> bool:
        """True if `run_id` is a run with a journal, in a folder really inside `.qw/runs`
        (a link out of it is not followed)."""
        if not safe_name(run_id):
            return False
        run_dir = os.path.join(self.runs_dir, run_id)
        return os.path.isfile(os.path.join(run_dir, "events.jsonl")) and \
            os.path.dirname(os.path.realpath(run_dir)) == os.path.realpath(self.runs_dir)

    def run(self, run_id: str, live: bool = False) -> Optional[RunHistory]:
        """The run, or None if there is no such run. `live`: its owner is running now."""
        if not self.has_run(run_id):
            return None
        found = self._events(run_id)
        if found is None:
            return None
        events, warning, key = found
        with self._lock:
            cached = self._built.get(run_id)
        # A run that is not live changes only by its journal (transcripts are written
        # before their attempt's end is), so its history is kept until that does.
        if not live and cached is not None and cached[0] == key:
            return cached[1]
        history = build_run(run_id, events, live=live, warning=warning)
        run_dir = os.path.join(self.runs_dir, run_id)
        attempts = []
        for a in history.attempts:
            # The attempt_ended of older journals, and attempts still running, do not say:
            # their transcripts do.
            if a.input_tokens is None or a.output_tokens is None:
                tokens = self._transcript_tokens(os.path.join(run_dir, a.transcript))
                a = replace(a, input_tokens=tokens[0], output_tokens=tokens[1])
            attempts.append(a)
        history = replace(history, attempts=tuple(attempts))
        if not live:
            with self._lock:
                self._built[run_id] = (key, history)
        return history

    def runs(self, spec: Optional[str] = None) -> List[RunHistory]:
        """Every run (of `spec`, if given), oldest first; none is taken as live."""
        found = []
        for run_id in self.run_ids():
            history = self.run(run_id)
            if history is not None and (spec is None or history.spec == spec):
                found.append(history)
        return found

    def spec_of(self, run_id: str) -> Optional[str]:
        found = self._events(run_id) if self.has_run(run_id) else None
        for event in (found[0] if found else []):
            if event.get("type") == "run_started":
                return _text(event.get("spec"))
        return None

    def transcript_path(self, run_id: str, task: str, launch: int) -> Optional[str]:
        """The transcript of the `launch`-th start of `task` in the run, if it exists and
        is a file inside the run's folder (a link out of `.qw/` is not followed)."""
        if not (self.has_run(run_id) and safe_name(task)) or launch < 1:
            return None
        run_dir = os.path.realpath(os.path.join(self.runs_dir, run_id))
        path = os.path.realpath(os.path.join(run_dir, f"{task}.{launch}.jsonl"))
        if os.path.dirname(path) != run_dir or not os.path.isfile(path):
            return None
        return path

    # ----- files, cached

    def _events(self, run_id: str) -> Optional[Tuple[List[Dict[str, Any]], Optional[str],
                                                       Tuple[int, int]]]:
        """The run's journal events, the warning about a bad line, and the file's
        (size, mtime) they were read at."""
        path = os.path.join(self.runs_dir, run_id, "events.jsonl")
        try:
            st = os.stat(path)
        except OSError:
            return None
        key = (st.st_size, st.st_mtime_ns)
        with self._lock:
            cached = self._journals.get(run_id)
        if cached is not None and cached[0] == key:
            return cached[1], cached[2], key
        try:
            scanned = Journal.scan(path)
        except (OSError, StateError):
            return None   # gone meanwhile, or written by a newer qw: not ours to read
        warning = None
        if scanned.bad_line is not None:
            warning = (f"{path}:{scanned.bad_line}: {scanned.bad_reason}; "
                       "read up to that line")
        events = list(scanned)
        with self._lock:
            self._journals[run_id] = (key, events, warning)
        return events, warning, key

    def _transcript_tokens(self, path: str) -> Tuple[int, int]:
        try:
            st = os.stat(path)
        except OSError:
            return (0, 0)
        key = (st.st_size, st.st_mtime_ns)
        with self._lock:
            cached = self._tokens.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        tokens = transcript_tokens(path)
        with self._lock:
            self._tokens[path] = (key, tokens)
        return tokens


def transcript_tokens(path: str) -> Tuple[int, int]:
    """(input, output) tokens a transcript reports: its result line's totals, else what its
    assistant messages said so far. Reads at most the last TOKENS_TAIL_BYTES."""
    from qw.claude import StreamState

    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - TOKENS_TAIL_BYTES))
            data = f.read()
    except OSError:
        return (0, 0)
    if size > TOKENS_TAIL_BYTES:
        data = data.split(b"\n", 1)[-1]   # the first line is cut: it would not parse
    stream = StreamState()
    for line in data.splitlines():
        stream.feed(line)
    return (stream.input_tokens, stream.output_tokens)


def _interrupt(record: Dict[str, Any], last_t: Optional[float]) -> None:
    record.update(ended_at=max(record["started_at"], last_t or 0.0), outcome=INTERRUPTED,
                  message="the run stopped before this attempt ended")


def _agent(event: Dict[str, Any]) -> Optional[str]:
    """The agent an event names: NO_AGENT if it says none, None if it does not say."""
    if "agent" not in event:
        return None
    return _text(event["agent"]) or NO_AGENT


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _int(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: Any) -> Optional[str]:
    return value if isinstance(value, str) else None
