"""Phase children: the claude sessions of the workflow's phases, run as tasks are (issue 8).

    PhaseSession (one `qw new` / `qw workflow`)
       ├─ .qw/runs/<run-id>/workflow.jsonl        phase_started, attempt_*, phase_ended ...
       ├─ .qw/runs/<run-id>/<job>.<n>.jsonl        each attempt's stream-json transcript
       └─ run(jobs) ─► Pool (workers) ─► guard ─► `claude -p` (one per job, in parallel)
                  ◄── AttemptResult ── qw.policy.decide: retry / backoff / pause / fail

A job is one child's work: a document phase (requirements, design, tasks), an analyst agent
of the design fan-out, the tester or the reviewer. Each goes through the same pool, worker,
command line, environment and retry policy as a task of `qw run`, so a phase survives a
rate limit and waits out a usage limit the same way. The transcripts are named after the
job, which is how `qw logs SPEC design` finds them. The journal is `workflow.jsonl`, not
`events.jsonl`: the run history and the task state read those, and a workflow run has no
tasks of its own.

The caller holds the spec's lock; this module starts no run of its own.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Deque, Dict, List, Optional, Tuple

from qw.agents import AgentDef
from qw.errors import ConfigError

LOOP_TICK_S = 0.5
GRACE_S = 5.0
CANCEL_REPORT_S = 30.0     # how long cancelled attempts get to report before qw moves on
JOURNAL_FILE = "workflow.jsonl"

PAUSED, INTERRUPTED = "paused", "interrupted"   # how a job ends besides its outcome kinds


@dataclass(frozen=True)
class PhaseJob:
    """One child to run: `name` names its transcripts (`<name>.<n>.jsonl`)."""

    name: str
    prompt: str
    agent: Optional[AgentDef] = None


@dataclass(frozen=True)
class PhaseResult:
    """How a job ended: `kind` is its last attempt's outcome kind ("ok" on success), or
    PAUSED (a usage limit past max_pause) or INTERRUPTED; `text` is the child's final
    answer."""

    name: str
    kind: str
    message: str
    attempts: int
    cost_usd: float = 0.0
    transcript: str = ""
    text: str = ""

    @property
    def ok(self) -> bool:
        return self.kind == "ok"


class PhaseSession:
    """The run folder, journal and signal handling of one workflow command.

    `say` gets one line for the user at each retry, pause and failure (the command prints
    it). After a run, `interrupted` / `paused` say whether the whole command must stop.
    """

    def __init__(self, repo: str, spec: str, config, say: Callable[[str], None],
                 command: str = "workflow"):
        from qw.journal import Journal, new_run_id

        self.repo, self.spec, self.config, self.say = repo, spec, config, say
        self.run_id = new_run_id(time.time())
        self.run_dir = os.path.join(repo, ".qw", "runs", self.run_id)
        os.makedirs(self.run_dir, exist_ok=True)
        self.journal = Journal(os.path.join(self.run_dir, JOURNAL_FILE),
                               header={"spec": spec, "run_id": self.run_id, "kind": "workflow",
                                       "command": command})
        self.launches: Dict[str, int] = {}   # attempts started per job name, this session
        self.interrupted = False
        self.paused = False
        self.rng = random.Random()

    def event(self, kind: str, **fields) -> None:
        """One line in the session's journal."""
        self.journal.append(dict({"type": kind, "t": time.time()}, **fields))

    def next_path(self, name: str, suffix: str) -> Tuple[int, str]:
        """The next attempt number of `name` and its file in the run folder."""
        self.launches[name] = self.launches.get(name, 0) + 1
        number = self.launches[name]
        return number, os.path.join(self.run_dir, f"{name}.{number}.{suffix}")

    def close(self) -> None:
        from qw.proctree import kill_marked

        try:
            self.journal.close()
        finally:
            kill_marked(self.run_id)   # a tool's background job that escaped its guard

    def check_claude(self) -> None:
        """ConfigError unless the claude executable can be found (every job would fail)."""
        from qw.claude import build_command, build_env
        from qw.proctree import resolve_command

        command = build_command(self.config.claude)[0]
        env = build_env(os.environ, self.config.claude, run_id="-", task_id="-", attempt=0)
        try:
            resolve_command(command, env, self.repo)
        except FileNotFoundError:
            raise ConfigError(f"the claude command {command!r} was not found",
                              "[claude] command",
                              "install Claude Code (`claude` on PATH), or set [claude] "
                              "command or QW_CLAUDE to its path; `qw doctor` checks it") from None

    def run(self, jobs: List[PhaseJob]) -> List[PhaseResult]:
        """Run the jobs in parallel (at most [run] max_concurrent at once), each retried as
        qw.policy decides; their results in the order given. Ctrl-C/SIGTERM cancels them
        (`interrupted`); a usage limit pauses them all, or ends them (`paused`) when it
        resets later than max_pause allows."""
        if not jobs:
            return []
        names = [job.name for job in jobs]
        if len(set(names)) != len(names):
            raise ValueError(f"job names must differ: {names}")
        return _Batch(self, jobs).run()


class _Batch:
    """One run() call: the loop that dispatches attempts and settles their results."""

    def __init__(self, session: PhaseSession, jobs: List[PhaseJob]):
        run = session.config.run
        self.session = session
        self.jobs = {job.name: job for job in jobs}
        self.order = [job.name for job in jobs]
        # (name, attempt counted by the policy, not before, timeout)
        self.queue: Deque[Tuple[str, int, float, float]] = deque(
            (job.name, 1, 0.0, run.timeout) for job in jobs)
        self.results: Dict[str, PhaseResult] = {}
        self.cost: Dict[str, float] = {}
        self.transcripts: Dict[str, str] = {}
        self.attempts: Dict[str, int] = {}
        self.paused_until: Optional[float] = None
        self.signals: List[int] = []
        self.stopping: Optional[str] = None   # why nothing more starts
        self.stop_kind = INTERRUPTED           # and how the jobs it stops end
        self.stopped_at: Optional[float] = None

    def run(self) -> List[PhaseResult]:
        from qw.pool import Pool, stop_signals

        with stop_signals(self.signals) as wake_r:
            pool = Pool(min(len(self.jobs), self.session.config.run.max_concurrent),
                        extra_fds=(wake_r,))
            try:
                pool.start()
                self._loop(pool, wake_r)
            finally:
                pool.shutdown(timeout=GRACE_S * 2 + 5)
        if self.signals:   # came with the last result or during the shutdown: still a stop
            self.session.interrupted = True
        return [self.results[name] for name in self.order]

    def _loop(self, pool, wake_r) -> None:
        from qw.worker import AttemptResult

        while len(self.results) < len(self.jobs):
            self._take_signals(pool)
            if self.stopped_at is not None and pool.busy() and \
                    time.monotonic() - self.stopped_at > CANCEL_REPORT_S:
                for request in pool.busy().values():   # the guards stop their trees
                    self._end(request.task_id, INTERRUPTED, "did not report after the stop")
                return
            now = time.time()
            self._dispatch(pool, now)
            waits = [nb for _, _, nb, _ in self.queue if nb > now]
            if self.paused_until is not None:
                waits.append(self.paused_until)
            timeout = min([LOOP_TICK_S] + [max(0.0, w - now) for w in waits])
            for kind, worker_id, payload in pool.wait(timeout):
                if kind == "wakeup":
                    try:
                        wake_r.recv(64)
                    except OSError:
                        pass
                elif kind == "died" and payload is not None:
                    self._settle_crash(payload, f"worker {worker_id} died")
                elif isinstance(payload, AttemptResult):
                    self._settle(payload)

    def _dispatch(self, pool, now: float) -> None:
        if self.stopping is not None:
            while self.queue:   # nothing more starts: what waits ends as the stop says
                self._end(self.queue.popleft()[0], self.stop_kind, self.stopping)
            return
        if self.paused_until is not None:
            if now < self.paused_until:
                return
            self.paused_until = None
            self.session.say("pause over: starting the workflow's children again")
        for worker_id in pool.idle():
            ready = next((item for item in self.queue if item[2] <= now), None)
            if ready is None:
                return
            self.queue.remove(ready)
            pool.submit(worker_id, self._request(*ready))

    def _request(self, name: str, attempt: int, _not_before: float, timeout_s: float):
        from qw.claude import build_command, build_env
        from qw.worker import AttemptRequest

        session, job = self.session, self.jobs[name]
        number, transcript = session.next_path(name, "jsonl")
        self.transcripts[name] = transcript
        self.attempts[name] = attempt
        argv = build_command(session.config.claude, agent=job.agent,
                             agents=[job.agent] if job.agent else ())
        env = build_env(os.environ, session.config.claude, run_id=session.run_id,
                        task_id=name, attempt=number)
        session.event("attempt_started", job=name, attempt=number,
                      agent=job.agent.name if job.agent else None,
                      transcript=os.path.basename(transcript))
        return AttemptRequest(task_id=name, attempt=attempt, argv=tuple(argv), env=env,
                              cwd=session.repo, prompt=job.prompt, timeout_s=timeout_s,
                              idle_timeout_s=session.config.run.idle_timeout,
                              transcript=transcript, grace_s=GRACE_S)

    def _settle_crash(self, request, why: str) -> None:
        from qw.outcome import Outcome
        from qw.worker import AttemptResult

        now = time.time()
        kind = INTERRUPTED if self.session.interrupted else "crashed"
        self._settle(AttemptResult(request.task_id, request.attempt,
                                   Outcome(kind, f"{why} while running {request.task_id}"),
                                   None, now, now), timeout_s=request.timeout_s)

    def _settle(self, result, timeout_s: Optional[float] = None) -> None:
        from qw.policy import decide

        name, outcome = result.task_id, result.outcome
        session = self.session
        self.cost[name] = self.cost.get(name, 0.0) + (outcome.cost_usd or 0.0)
        session.event("attempt_ended", job=name, attempt=session.launches.get(name),
                      outcome=outcome.kind, message=outcome.message,
                      cost_usd=outcome.cost_usd, exit_code=result.exit_code,
                      duration_s=round(result.ended_at - result.started_at, 3))
        if outcome.kind == INTERRUPTED or self.stopping is not None:
            self._end(name, self.stop_kind if self.stopping else INTERRUPTED,
                      self.stopping or outcome.message)
            return
        timeout_s = timeout_s or session.config.run.timeout
        decision = decide(outcome, result.attempt, session.config.run, now=time.time(),
                          rng=session.rng, timeout_s=timeout_s)
        if decision.action == "done":
            self._end(name, "ok", outcome.message)
        elif decision.action == "retry":
            session.say(f"{name}: {decision.reason}")
            self.queue.append((name, result.attempt + 1, decision.not_before,
                               decision.timeout_s))
        elif decision.action == "pause":
            # Not the job's fault: the same attempt number again, once the limit resets.
            session.say(f"{name}: {decision.reason}")
            self.paused_until = max(self.paused_until or 0.0, decision.not_before)
            self.queue.append((name, result.attempt, decision.not_before, timeout_s))
        elif decision.action == "exit_paused":
            session.paused = True
            self.stopping, self.stop_kind = decision.reason, PAUSED
            self._end(name, PAUSED, decision.reason)
        elif decision.action == "stop_run":
            # Every other child would fail the same way: none starts, running ones end so.
            self.stopping, self.stop_kind = decision.reason, outcome.kind
            self._end(name, outcome.kind, decision.reason)
        else:
            self._end(name, outcome.kind, decision.reason)

    def _end(self, name: str, kind: str, message: str) -> None:
        if name in self.results:
            return
        transcript = self.transcripts.get(name, "")
        self.results[name] = PhaseResult(
            name, kind, message, self.session.launches.get(name, 0),
            round(self.cost.get(name, 0.0), 6), transcript,
            final_text(transcript) if kind == "ok" else "")

    # ----- signals: the handler records, the loop acts

    def _take_signals(self, pool) -> None:
        if not self.signals:
            return
        del self.signals[:]
        if self.session.interrupted:
            return
        self.session.interrupted = True
        self.stopping, self.stop_kind = "interrupted", INTERRUPTED
        self.stopped_at = time.monotonic()
        self.session.say("stopping: cancelling the workflow's children")
        for worker_id in pool.busy():
            pool.cancel(worker_id, INTERRUPTED)


def final_text(transcript: str) -> str:
    """The child's final answer: the `result` text of the transcript's last result event
    ("" when there is none or the file cannot be read)."""
    text = ""
    try:
        with open(transcript, "rb") as handle:
            for line in handle:
                if b'"result"' not in line:
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict) and event.get("type") == "result" and \
                        isinstance(event.get("result"), str):
                    text = event["result"]
    except OSError:
        return ""
    return text
