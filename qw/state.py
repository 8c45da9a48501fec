"""A run's task states, and the one method that changes them (DESIGN §1, STYLE 4).

Pure: no files, no processes, no clock. Every change is an event, a JSON-able dict with
"type" and "t" (epoch seconds, stamped by whoever saw it happen), applied by
`RunState.apply`, which checks the transition first and raises ValueError on an illegal one
(a bug in the caller, not a user error). The journal holds the same events, so
`replay(events)` rebuilds exactly the state that was live.

A run starts from a clean slate: `run_started` lists the spec's tasks, all pending; what is
already done between runs is tasks.md's business (the runner reports checked tasks with
`task_status` done). A task's life inside one run:

    pending/ready ──attempt_started──► running ──attempt_ended ok──► running (verdict due)
         ▲   │                            │                            ├─task_done──► done
         │   ├─► blocked / skipped        └─attempt_ended not ok─► failed
         │   └─► done (checked in tasks.md)                          ├─task_failed─► failed
         └───────────── retry_scheduled (next_try_at) ◄──────────────┘ (also from a verdict)

`task_waiting` moves a pending task to `ready` with a `waiting` reason ("waiting for CPU:
..."): the run would start it but the machine has no room (qw.admission); its reason None
moves it back to pending. Only a live run's tasks wait: a view of a run that is not live
shows them pending.

Each attempt_ended may carry the attempt's `peak_rss_mb` and `cpu_s` (its process tree's
peak resident memory and CPU seconds) and its task's `agent`: the record keeps the peak over
attempts and the CPU summed, and the run state the last few peaks per agent
(`memory_peaks`, qw.admission's estimates). Those outlive `run_started`: a run starts from
what earlier ones measured (as far as the snapshot goes: a state rebuilt from a journal
alone knows only that run's). An ok attempt_ended with `changed_nothing: true` (the child
succeeded without changing a file) marks the record, until its next attempt ends. Its
`input_tokens` and `output_tokens` (what the child reported) are for qw.history alone.

`task_reset` (written by `qw reset`) returns a task whose attempt is not open to pending:
soft, it clears the attempts and the error (cost and duration stay: that money was spent);
`hard`, it forgets everything about the task.

`task_progress` is the one event that is never journaled: live progress of a running
attempt, shown by `qw status` and forgotten when the attempt ends.

On disk a snapshot is `encode_snapshot`'s JSON with a sha256 of its canonical body inside;
`decode_snapshot` tells a damaged one (Damaged: recoverable) from one written by a
newer qw (StateError: refused, never overwritten).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Tuple

from qw.admission import agent_key, remember
from qw.errors import StateError

PENDING, READY, RUNNING, DONE = "pending", "ready", "running", "done"
FAILED, BLOCKED, SKIPPED = "failed", "blocked", "skipped"
STATUSES = (PENDING, READY, RUNNING, DONE, FAILED, BLOCKED, SKIPPED)
OK = "ok"                    # the attempt outcome that means success
INTERRUPTED = "interrupted"  # error and outcome of an attempt cut short by a dead run

SNAPSHOT_FORMAT = 1
_SNAPSHOT_TAIL = re.compile(rb',"sha256":"([0-9a-f]{64})"\}\s*\Z')

# One encoder for every snapshot (json.dumps would build one per call).
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
# Statuses a `task_status` event may set; the others have events of their own.
_SETTABLE = (PENDING, READY, BLOCKED, SKIPPED, DONE)
# TaskRecord fields a snapshot keeps (progress is live-only).
_RECORD_FIELDS = ("id", "title", "status", "attempts", "attempt", "started_at", "ended_at",
                  "duration_s", "cost_usd", "error", "outcome", "session_id", "worker",
                  "next_try_at", "waiting", "peak_rss_mb", "cpu_s", "changed_nothing")


@dataclass(frozen=True)
class TaskRecord:
    """Where one task stands in the run."""

    id: str
    title: str
    status: str = PENDING
    attempts: int = 0                   # attempts started in this run
    attempt: int = 0                    # the runner's number of the current/last attempt
    started_at: Optional[float] = None  # start of the current/last attempt
    ended_at: Optional[float] = None
    duration_s: float = 0.0             # summed over attempts
    cost_usd: float = 0.0               # summed over attempts
    error: Optional[str] = None         # the last failure message (or why it is blocked)
    outcome: Optional[str] = None       # the last attempt's outcome kind; None while it runs
    session_id: Optional[str] = None    # the last attempt's Claude session
    worker: Optional[int] = None        # the worker running it
    next_try_at: Optional[float] = None  # a retry is scheduled, not before this time
    waiting: Optional[str] = None       # ready: why it has not started (the machine is busy)
    peak_rss_mb: Optional[float] = None  # the largest peak RSS of its attempts' trees
    cpu_s: Optional[float] = None       # CPU seconds of its attempts' trees, summed
    changed_nothing: bool = False       # its last attempt succeeded without changing a file
    # Live progress of the running attempt (last_event, tool, tokens, cost so far).
    # Never journaled nor snapshotted, so left out of equality: replay == live ignores it.
    progress: Dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def attempt_open(self) -> bool:
        """An attempt was started and has not ended."""
        return self.status == RUNNING and self.outcome is None


# A snapshot task entry leaves out what it holds here; "id" and "title" it must have.
_ABSENT = object()
_ENTRY_TEMPLATE = {"id": _ABSENT, "title": _ABSENT,
                   **{name: getattr(TaskRecord("", ""), name) for name in _RECORD_FIELDS[2:]},
                   "progress": None}
_OMITTED_WHEN = tuple((name, _ENTRY_TEMPLATE[name]) for name in _RECORD_FIELDS[3:])


class RunState:
    """The state of one spec's latest run. Change it only through `apply`."""

    def __init__(self, spec: Optional[str] = None):
        self.spec = spec
        self.run_id: Optional[str] = None
        self.pid: Optional[int] = None
        self.started_at: Optional[float] = None
        self.ended_at: Optional[float] = None
        self.run_status: Optional[str] = None   # run_ended's status word
        self.exit_code: Optional[int] = None
        self.stop_reason: Optional[str] = None
        self.paused_until: Optional[float] = None
        self.pause_reason: Optional[str] = None
        self.seq = 0                            # seq of the last journaled event applied
        self.tasks: Dict[str, TaskRecord] = {}  # document order
        # {agent key: its last peaks}, kept across runs. Replaced, never changed in place:
        # savepoint/rollback copy the run-level fields shallowly.
        self.memory_peaks: Dict[str, List[float]] = {}
        # Where the run's journal stood when the snapshot this state came from was written
        # (None: not known). Not state: a hint that lets a load read only the newer lines.
        self.journal_bytes: Optional[int] = None
        # Not state either: each task's snapshot JSON and the record it encodes (records are
        # replaced, never changed): a snapshot encodes only the tasks changed since the last.
        self._task_json: Dict[str, Tuple[TaskRecord, str]] = {}

    # ----- the one way to change it

    def apply(self, event: Dict[str, Any]) -> None:
        """Apply one event, or raise ValueError (and change nothing) if it is illegal now."""
        kind = event.get("type")
        handler = _HANDLERS.get(kind)  # type: ignore[arg-type]
        if handler is None:
            raise ValueError(f"unknown event type {kind!r}")
        t = event.get("t")
        if isinstance(t, bool) or not isinstance(t, (int, float)):
            raise ValueError(f"{kind} event needs a numeric 't', got {t!r}")
        seq = event.get("seq")
        if seq is not None and seq <= self.seq:
            raise ValueError(f"{kind} event seq {seq} is not after seq {self.seq}")
        handler(self, event, float(t))
        if seq is not None:
            self.seq = seq

    def savepoint(self, event: Dict[str, Any]) -> Tuple[Dict[str, Any], Any, Any]:
        """What `rollback` needs to undo applying `event` (and only that one event): the
        run-level fields and the one task record the event can replace. O(1), so it can be
        taken before every event."""
        task_id = event.get("task")
        rec = self.tasks.get(task_id) if isinstance(task_id, str) else None
        return dict(vars(self)), task_id, rec

    def rollback(self, point: Tuple[Dict[str, Any], Any, Any]) -> None:
        """Undo the one `apply` made since `savepoint` returned `point`."""
        attrs, task_id, rec = point
        vars(self).update(attrs)   # run_started swaps in a new tasks dict: this swaps it back
        if rec is not None:
            self.tasks[task_id] = rec

    # ----- run-level events

    def _run_started(self, e: Dict[str, Any], t: float) -> None:
        spec = _need(e, "spec")
        if self.spec is not None and spec != self.spec:
            raise ValueError(f"run_started for spec {spec!r} in the state of spec {self.spec!r}")
        tasks: Dict[str, TaskRecord] = {}
        for item in _need(e, "tasks"):
            if not isinstance(item, (list, tuple)) or len(item) != 2:
                raise ValueError(f"run_started task entry {item!r} is not [id, title]")
            task_id, title = str(item[0]), str(item[1])
            if task_id in tasks:
                raise ValueError(f"run_started lists task {task_id} twice")
            tasks[task_id] = TaskRecord(task_id, title)
        self.spec = spec
        self.run_id = str(_need(e, "run_id"))
        self.pid = e.get("pid")
        self.started_at, self.ended_at = t, None
        self.run_status = self.exit_code = self.stop_reason = None
        self.paused_until = self.pause_reason = None
        self.tasks, self._task_json = tasks, {}

    def _run_paused(self, e: Dict[str, Any], t: float) -> None:
        self._need_run("run_paused")
        self.paused_until = e.get("until")   # None: the pause is over
        self.pause_reason = e.get("reason") if self.paused_until is not None else None

    def _run_ended(self, e: Dict[str, Any], t: float) -> None:
        self._need_run("run_ended")
        if self.ended_at is not None:
            raise ValueError(f"run {self.run_id} already ended")
        self.ended_at = t
        self.run_status = _need(e, "status")
        self.exit_code = e.get("exit_code")
        self.stop_reason = e.get("reason")

    def _need_run(self, kind: str) -> None:
        if self.run_id is None:
            raise ValueError(f"{kind} before run_started")

    # ----- task events

    def _task_status(self, e: Dict[str, Any], t: float) -> None:
        rec = self._task(e)
        status, reason = _need(e, "status"), e.get("reason")
        if status not in _SETTABLE:
            raise ValueError(f"task_status cannot set status {status!r}")
        if rec.status == RUNNING and status == PENDING and reason == INTERRUPTED:
            self.tasks[rec.id] = _interrupted(rec, t)
            return
        if rec.attempt_open:
            _illegal(e, rec)
        if rec.status == DONE and status not in (PENDING, DONE):
            _illegal(e, rec)   # a done task is only ever reset to pending
        error = rec.error
        if status == BLOCKED:
            error = reason or BLOCKED
        elif rec.status == BLOCKED:
            error = None       # the block's reason no longer holds
        ended_at = t if status == DONE else rec.ended_at
        self.tasks[rec.id] = _replace(rec, status=status, error=error, next_try_at=None,
                                      ended_at=ended_at, waiting=None)

    def _task_waiting(self, e: Dict[str, Any], t: float) -> None:
        rec = self._task(e)
        if rec.status not in (PENDING, READY):
            _illegal(e, rec)
        reason = e.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise ValueError(f"task_waiting for task {rec.id}: reason {reason!r} is not text")
        self.tasks[rec.id] = _replace(rec, status=READY if reason else PENDING,
                                      waiting=reason or None)

    def _attempt_started(self, e: Dict[str, Any], t: float) -> None:
        rec = self._task(e)
        if rec.status not in (PENDING, READY):
            _illegal(e, rec)
        attempt = _need(e, "attempt")
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
            raise ValueError(f"attempt_started for task {rec.id}: bad attempt {attempt!r}")
        self.tasks[rec.id] = _replace(
            rec, status=RUNNING, attempts=rec.attempts + 1, attempt=attempt,
            worker=e.get("worker"), started_at=t, ended_at=None, outcome=None,
            session_id=None, next_try_at=None, waiting=None, progress={})

    def _attempt_ended(self, e: Dict[str, Any], t: float) -> None:
        rec = self._task(e)
        if not rec.attempt_open:
            _illegal(e, rec)
        if e.get("attempt") != rec.attempt:
            raise ValueError(f"attempt_ended for attempt {e.get('attempt')!r} of task {rec.id}, "
                             f"but attempt {rec.attempt} is the one running")
        outcome = str(_need(e, "outcome"))
        duration = e.get("duration_s")
        if duration is None:
            duration = max(0.0, t - (rec.started_at or t))
        ok = outcome == OK
        peak, cpu = _measure(e, "peak_rss_mb"), _measure(e, "cpu_s")
        self.tasks[rec.id] = _replace(
            rec, status=RUNNING if ok else FAILED, outcome=outcome,
            error=rec.error if ok else (e.get("message") or outcome),
            duration_s=rec.duration_s + float(duration),
            cost_usd=rec.cost_usd + float(e.get("cost_usd") or 0.0),
            session_id=e.get("session_id"), worker=None, ended_at=t, progress={},
            changed_nothing=ok and e.get("changed_nothing") is True,
            peak_rss_mb=rec.peak_rss_mb if peak is None else max(rec.peak_rss_mb or 0.0, peak),
            cpu_s=rec.cpu_s if cpu is None else round((rec.cpu_s or 0.0) + cpu, 3))
        if peak is not None and peak > 0:
            key = agent_key(e.get("agent"))
            self.memory_peaks = dict(self.memory_peaks)
            self.memory_peaks[key] = remember(self.memory_peaks.get(key, ()), peak)

    def _task_done(self, e: Dict[str, Any], t: float) -> None:
        rec = self._task(e)
        if rec.attempt_open:
            _illegal(e, rec)
        self.tasks[rec.id] = _replace(rec, status=DONE, error=None, next_try_at=None, ended_at=t)

    def _task_failed(self, e: Dict[str, Any], t: float) -> None:
        rec = self._task(e)
        if rec.attempt_open or rec.status == DONE:
            _illegal(e, rec)
        self.tasks[rec.id] = _replace(rec, status=FAILED, error=e.get("error") or rec.error,
                                      next_try_at=None, ended_at=t)

    def _retry_scheduled(self, e: Dict[str, Any], t: float) -> None:
        rec = self._task(e)
        # After a failed attempt, or an ok one whose verdict is "again" (e.g. verify failed).
        if not (rec.status == FAILED or (rec.status == RUNNING and not rec.attempt_open)):
            _illegal(e, rec)
        self.tasks[rec.id] = _replace(rec, status=PENDING, next_try_at=_need(e, "not_before"))

    def _task_reset(self, e: Dict[str, Any], t: float) -> None:
        rec = self._task(e)
        if rec.attempt_open:
            _illegal(e, rec)
        if e.get("hard"):
            self.tasks[rec.id] = TaskRecord(rec.id, rec.title)
            return
        if rec.status == DONE:
            _illegal(e, rec)   # only a hard reset forgets that a task was done
        self.tasks[rec.id] = _replace(rec, status=PENDING, attempts=0, attempt=0, error=None,
                                      outcome=None, next_try_at=None, worker=None, waiting=None)

    def _task_progress(self, e: Dict[str, Any], t: float) -> None:
        rec = self._task(e)
        # A worker's progress can race its own attempt's end: late news is dropped.
        info = _need(e, "info")
        if not isinstance(info, dict):
            raise ValueError(f"task_progress info for task {rec.id} is not a dict: {info!r}")
        if rec.attempt_open:
            self.tasks[rec.id] = _replace(rec, progress={**rec.progress, **info})

    def _task(self, e: Dict[str, Any]) -> TaskRecord:
        task_id = _need(e, "task")
        rec = self.tasks.get(task_id)
        if rec is None:
            raise ValueError(f"{e.get('type')} for unknown task {task_id!r}")
        return rec

    # ----- reading

    def view(self, live: bool = False) -> Dict[str, Any]:
        """The `qw status --json` shape (DESIGN §4); `live` is the caller's to say.

        A task entry has `waiting` while it is ready and waits for room on the machine,
        `changed_nothing` (true) when its last attempt succeeded but changed no file,
        and `peak_rss_mb` (MB, its attempts' largest) and `cpu_s` (summed) once one of its
        attempts was measured. The totals have the largest peak of any task (None: none
        measured) and the CPU seconds of all."""
        tasks = []
        counts = dict.fromkeys(STATUSES, 0)
        cost = duration = cpu = 0.0
        attempts = 0
        peak: Optional[float] = None
        for rec in self.tasks.values():
            status, waiting = rec.status, rec.waiting
            if status == READY and not live:
                status, waiting = PENDING, None   # nothing waits without a live run
            counts[status] += 1
            cost += rec.cost_usd
            duration += rec.duration_s
            attempts += rec.attempts
            cpu += rec.cpu_s or 0.0
            if rec.peak_rss_mb is not None:
                peak = max(peak or 0.0, rec.peak_rss_mb)
            # round() goes through a decimal string: a zero is its own rounding.
            entry = {"id": rec.id, "title": rec.title, "status": status,
                     "attempts": rec.attempts,
                     "duration_s": round(rec.duration_s, 3) if rec.duration_s else rec.duration_s,
                     "cost_usd": round(rec.cost_usd, 6) if rec.cost_usd else rec.cost_usd,
                     "error": rec.error, "outcome": rec.outcome,
                     "next_try_at": rec.next_try_at, "progress": dict(rec.progress)}
            for key, value in (("waiting", waiting), ("peak_rss_mb", rec.peak_rss_mb),
                               ("cpu_s", rec.cpu_s), ("changed_nothing", rec.changed_nothing
                                                      or None)):
                if value is not None:
                    entry[key] = value
            tasks.append(entry)
        totals = {"tasks": len(tasks), **counts, "cost_usd": round(cost, 6),
                  "duration_s": round(duration, 3), "attempts": attempts,
                  "cpu_s": round(cpu, 3), "peak_rss_mb": peak}
        return {"spec": self.spec, "run_id": self.run_id, "live": live,
                "started_at": self.started_at, "ended_at": self.ended_at,
                "run_status": self.run_status, "exit_code": self.exit_code,
                "tasks": tasks, "totals": totals, "paused_until": self.paused_until,
                "pause_reason": self.pause_reason, "stop_reason": self.stop_reason,
                "memory_peaks": {k: list(v) for k, v in self.memory_peaks.items()}}

    def to_snapshot(self) -> Dict[str, Any]:
        """Everything but live progress, as JSON-able data; `from_snapshot` reads it back."""
        return dict(self._run_fields(), tasks=[{name: getattr(rec, name) for name in
                                                _RECORD_FIELDS} for rec in self.tasks.values()])

    def _run_fields(self) -> Dict[str, Any]:
        """to_snapshot without its last key, "tasks"."""
        return {"format": SNAPSHOT_FORMAT, "spec": self.spec, "run_id": self.run_id,
                "pid": self.pid, "started_at": self.started_at, "ended_at": self.ended_at,
                "run_status": self.run_status, "exit_code": self.exit_code,
                "stop_reason": self.stop_reason, "paused_until": self.paused_until,
                "pause_reason": self.pause_reason, "seq": self.seq,
                "memory_peaks": {k: list(v) for k, v in self.memory_peaks.items()}}

    def _tasks_json(self) -> str:
        """The snapshot's tasks as compact JSON (_entry), re-encoding only changed records."""
        known = self._task_json
        parts = []
        for task_id, rec in self.tasks.items():
            entry = known.get(task_id)
            if entry is None or entry[0] is not rec:
                entry = known[task_id] = (rec, _ENCODER.encode(_entry(rec)))
            parts.append(entry[1])
        return "[" + ",".join(parts) + "]"

    @classmethod
    def from_snapshot(cls, data: Any, where: Optional[str] = None) -> "RunState":
        """The state a snapshot holds. StateError for a newer format or a malformed one."""
        fix = "run `qw reset SPEC` to rebuild it, or `qw backup restore NAME`"
        if _format_of(data) is None:
            raise StateError("the state snapshot has no format number", where, fix)
        refuse_newer("the state snapshot", data["format"], SNAPSHOT_FORMAT, where)
        state = cls(data.get("spec"))
        try:
            for name in ("run_id", "pid", "started_at", "ended_at", "run_status", "exit_code",
                         "stop_reason", "paused_until", "pause_reason"):
                setattr(state, name, data.get(name))
            state.seq = int(data.get("seq") or 0)
            state.memory_peaks = _peaks(data.get("memory_peaks") or {})
            for item in data["tasks"]:
                rec = _record(item)
                if rec.status not in STATUSES:
                    raise ValueError(f"task {rec.id} has unknown status {rec.status!r}")
                state.tasks[rec.id] = rec
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"the state snapshot is malformed ({exc})", where, fix) from None
        return state


class Damaged(Exception):
    """A snapshot or journal line that cannot be trusted (cut short, garbage, checksum
    mismatch, malformed); `reason` says which. Recoverable: qw.journal rebuilds."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def encode_snapshot(state: "RunState", journal_bytes: Optional[int] = None) -> bytes:
    """The snapshot file's bytes: `to_snapshot()` as compact JSON, task entries as _entry
    has them (plus `journal_bytes`, the length of the run's journal it covers, when given),
    and a last key "sha256", the sha256 of those very bytes without it (one serialisation)."""
    # Compact JSON of a dict is its items' JSON in order: the body is put together in parts.
    text = _ENCODER.encode(state._run_fields())[:-1] + ',"tasks":' + state._tasks_json()
    if journal_bytes is not None:
        text += ',"journal_bytes":' + _ENCODER.encode(journal_bytes)
    body = (text + "}").encode("utf-8")
    digest = hashlib.sha256(body).hexdigest()
    return body[:-1] + b',"sha256":"' + digest.encode("ascii") + b'"}\n'


def decode_snapshot(raw: bytes, where: Optional[str] = None) -> "RunState":
    """The state in a snapshot file's bytes. Damaged if they cannot be trusted;
    StateError if a newer qw wrote them (never treat those as damage: they are fine)."""
    if not raw or raw.isspace():   # (not strip(): a copy of megabytes)
        raise Damaged("empty file")
    try:
        data = json.loads(raw)
    except ValueError:
        raise Damaged("not valid JSON: cut short or overwritten") from None
    if _format_of(data) is None:
        raise Damaged("no format number")
    refuse_newer("the state snapshot", data["format"], SNAPSHOT_FORMAT, where)
    digest = data.pop("sha256", None)   # absent: written before snapshots had one
    if digest is not None and not _digest_matches(raw, data, digest):
        raise Damaged("checksum mismatch")
    try:
        state = RunState.from_snapshot(data, where)
    except StateError as exc:
        raise Damaged(exc.what) from None
    hint = data.get("journal_bytes")
    state.journal_bytes = hint if isinstance(hint, int) and hint >= 0 else None
    return state


def refuse_newer(what: str, found: int, ours: int, where: Optional[str]) -> None:
    """StateError if `found` is a format newer than `ours`: only a newer qw can read it."""
    if found > ours:
        raise StateError(f"{what} was written by a newer qw (format {found}; this qw reads "
                         f"format {ours})", where, "upgrade qw; this qw leaves the file as it is")


def _format_of(data: Any) -> Optional[int]:
    fmt = data.get("format") if isinstance(data, dict) else None
    return fmt if isinstance(fmt, int) and not isinstance(fmt, bool) else None


def _digest_matches(raw: bytes, data: Dict[str, Any], digest: Any) -> bool:
    """Whether `digest` is the sha256 of the body as encode_snapshot wrote it (the bytes
    before its "sha256" key) or, as older qw wrote it, of the body's canonical form."""
    tail = _SNAPSHOT_TAIL.match(raw, max(0, raw.rfind(b',"sha256":"')))   # not a search: MBs
    if tail is not None and tail.group(1).decode("ascii") == digest and \
            hashlib.sha256(raw[:tail.start()] + b"}").hexdigest() == digest:
        return True
    return digest == _digest(data)


def _digest(body: Dict[str, Any]) -> str:
    # Canonical: sorted keys, so the digest does not depend on the order a writer used.
    text = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"),
                      allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _entry(rec: TaskRecord) -> Dict[str, Any]:
    """A task's snapshot entry: its fields but those at their default (id, title and status
    always there), which from_snapshot fills in again: a done task's is a third smaller."""
    entry = {"id": rec.id, "title": rec.title, "status": rec.status}
    fields = rec.__dict__
    for name, default in _OMITTED_WHEN:
        value = fields[name]
        if value is not default and not (type(value) is type(default) and value == default
                                         and math.copysign(1.0, value) > 0):
            entry[name] = value
    return entry


_HANDLERS = {kind: getattr(RunState, "_" + kind) for kind in (
    "run_started", "task_status", "attempt_started", "attempt_ended", "task_done", "task_failed",
    "retry_scheduled", "run_paused", "run_ended", "task_reset", "task_waiting", "task_progress")}
EVENT_TYPES = tuple(_HANDLERS)


def replay(events: Iterable[Dict[str, Any]], spec: Optional[str] = None) -> RunState:
    """The state that applying `events` in order produces."""
    state = RunState(spec)
    for event in events:
        state.apply(event)
    return state


def recover_interrupted(state: RunState, now: float) -> List[Dict[str, Any]]:
    """The events that return every task still `running` in a run that died to pending,
    with error "interrupted" (the attempt stays counted). Changes nothing itself: apply them
    to show a dead run as it stands, or record them to persist that."""
    return [{"type": "task_status", "t": now, "task": rec.id, "status": PENDING,
             "reason": INTERRUPTED}
            for rec in state.tasks.values() if rec.status == RUNNING]


def _record(item: Dict[str, Any]) -> TaskRecord:
    """TaskRecord(**item) for a snapshot's task entry (other keys ignored; TypeError without
    id or title), minus the frozen __init__'s setattr per field (180,000 at 10,000 tasks)."""
    fields = {**_ENTRY_TEMPLATE, **item, "progress": {}}
    if len(fields) != len(_ENTRY_TEMPLATE):   # keys of no field: leave them out
        fields = {name: fields[name] for name in _ENTRY_TEMPLATE}
    if fields["id"] is _ABSENT or fields["title"] is _ABSENT:
        raise TypeError(f"a task entry lacks its id or title: {sorted(item)!r}")
    rec = object.__new__(TaskRecord)
    rec.__dict__.update(fields)   # as qw.tasks._new_task fills a Task: one step, compact
    return rec


def _replace(rec: TaskRecord, **changes: Any) -> TaskRecord:
    """dataclasses.replace(rec, **changes) without its walk over the fields on every call
    (the state owner applies every transition through here). `changes` must name fields."""
    new = object.__new__(TaskRecord)
    new.__dict__.update(rec.__dict__, **changes)   # frozen: __setattr__ refuses
    return new


def _interrupted(rec: TaskRecord, t: float) -> TaskRecord:
    return _replace(rec, status=PENDING, error=INTERRUPTED, outcome=INTERRUPTED, worker=None,
                    ended_at=t, next_try_at=None, progress={})


def _measure(event: Dict[str, Any], key: str) -> Optional[float]:
    """The event's number at `key`: None when absent or null, ValueError when not a number."""
    value = event.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{event.get('type')} event: bad {key} {value!r}")
    return float(value)


def _peaks(data: Any) -> Dict[str, List[float]]:
    """A snapshot's memory_peaks, checked (ValueError/TypeError when malformed)."""
    if not isinstance(data, dict):
        raise ValueError(f"memory_peaks is not a map: {data!r}")
    out = {}
    for key, values in data.items():
        if not isinstance(values, list):
            raise ValueError(f"memory_peaks entry {key!r} is not a list of numbers")
        out[key] = [float(v) for v in values]
    return out


def _need(event: Dict[str, Any], key: str) -> Any:
    if key not in event:
        raise ValueError(f"{event.get('type')} event lacks {key!r}")
    return event[key]


def _illegal(event: Dict[str, Any], rec: TaskRecord) -> None:
    where = "with an attempt running" if rec.attempt_open else f"in status {rec.status}"
    raise ValueError(f"illegal transition: {event.get('type')} for task {rec.id} {where}")
