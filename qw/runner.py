"""One `qw run`: lock, state owner, pool, the dispatch loop, shutdown.

    runner (this process) ── the one loop that decides ──┐
       ├─ SpecLock .qw/locks/<spec>.lock                 │ Scheduler (pure) says what to start
       ├─ state owner process (journal + snapshot) ◄─────┤ every transition recorded there
       ├─ Pool: N spawn workers ─► guard ─► claude -p    │ results and deaths come back here
       └─ RunReporter (terminal) ◄───────────────────────┘

A signal handler only records the signal (and wakes the loop through a socket); the loop
acts on it: the first Ctrl-C/SIGTERM stops dispatching and cancels running attempts; a
second one stops waiting for them to wind down gracefully.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from typing import Dict, List, Optional

from qw import __version__
from qw.claude import build_command, build_env
from qw.errors import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_PAUSED, UsageError)
from qw.journal import new_run_id
from qw.lock import SpecLock
from qw.outcome import Outcome
from qw.pool import Pool
from qw.prompt import build_prompt
from qw.runreport import RunReporter
from qw.scheduler import Scheduler
from qw.stateowner import start_owner
from qw.tasksfile import set_marks
from qw.worker import AttemptRequest, AttemptResult, Progress

LOOP_TICK_S = 0.5        # longest the loop sleeps without looking at the clock
GRACE_S = 5.0            # SIGINT -> SIGTERM -> SIGKILL spacing for a child tree


def run_spec(repo: str, spec, plan, config, only: Optional[List[str]] = None,
             json_output: bool = False) -> int:
    """Run the spec's pending tasks (or `only` those and their unfinished prerequisites)."""
    qw_dir = os.path.join(repo, ".qw")
    done = {t.id for t in plan.tasks if t.status == "done"}
    targets = plan.closure(only) if only else [t.id for t in plan.tasks]
    targets = [t for t in targets if t not in done]
    reporter = RunReporter(spec.name, json_output=json_output)
    if only:
        extra = [t for t in targets if t not in set(only)]
        if extra:
            reporter.note(f"--task also runs unfinished prerequisites: {', '.join(extra)}")
    if not targets:
        reporter.note("nothing to do: every task asked for is already checked in tasks.md")
        return EXIT_OK

    os.makedirs(os.path.join(qw_dir, "locks"), exist_ok=True)
    run_id = new_run_id(time.time())
    lock = SpecLock(os.path.join(qw_dir, "locks", f"{spec.name}.lock"))
    lock.acquire({"pid": os.getpid(), "run_id": run_id, "argv": sys.argv,
                  "spec": spec.name, "qw": __version__})
    try:
        return _Run(repo, qw_dir, run_id, spec, plan, config, targets, done, reporter).execute()
    finally:
        lock.release()


class _Run:
    def __init__(self, repo, qw_dir, run_id, spec, plan, config, targets, done, reporter):
        from qw.agents import load_agents

        self.repo, self.qw_dir, self.run_id = repo, qw_dir, run_id
        self.spec, self.plan, self.config = spec, plan, config
        self.reporter = reporter
        self.run_dir = os.path.join(qw_dir, "runs", run_id)
        self.agents = load_agents(repo)
        self.by_id = {t.id: t for t in spec.tasks}
        timeouts = {t: self.by_id[t].timeout_s for t in targets
                    if self.by_id[t].timeout_s is not None}
        self.sched = Scheduler(plan, targets, done, config.run, timeouts=timeouts)
        for t in targets:
            agent = self.by_id[t].agent
            if agent and agent not in self.agents:
                raise UsageError(f"task {t} names unknown agent '{agent}'",
                                 where=f"{spec.paths.tasks}:{self.by_id[t].line}",
                                 fix=f"define .claude/agents/{agent}.md or fix the _Agent: line")
        self.signals: List[int] = []
        self.owner = None
        self.pool: Optional[Pool] = None
        self.worker_of: Dict[str, int] = {}

    # ----- the run

    def execute(self) -> int:
        os.makedirs(self.run_dir, exist_ok=True)
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        old_handlers = self._install_signals(wake_w)
        try:
            self.owner = start_owner(self.qw_dir, self.spec.name, self.run_id,
                                     [self._run_started_event()])
            self._record_initial()
            self.pool = Pool(self.config.run.max_concurrent, extra_fds=(wake_r,))
            self.pool.start()
            self.reporter.started(self.run_id, len(self.sched.targets),
                                  self.config.run.max_concurrent)
            self._loop(wake_r)
            return self._finish()
        finally:
            self._restore_signals(old_handlers)
            if self.pool is not None:
                self.pool.shutdown(timeout=GRACE_S * 2 + 5)
            if self.owner is not None:
                self.owner.shutdown()
            wake_r.close()
            wake_w.close()

    def _loop(self, wake_r) -> None:
        escalated = False
        while True:
            if self.signals:
                count = len(self.signals)
                self.signals.clear()
                if not self.sched.interrupted:
                    self.sched.interrupt()
                    self.reporter.note("stopping: cancelling running tasks "
                                       "(press Ctrl-C again to stop at once)")
                    for worker_id in self.pool.busy():
                        self.pool.cancel(worker_id)
                    count -= 1
                if count > 0 and not escalated:
                    escalated = True
                    self.reporter.note("stopping at once")
                    return
            now = time.time()
            self._dispatch(now)
            if self.sched.finished():
                return
            wakeup = self.sched.next_wakeup(now)
            timeout = LOOP_TICK_S if wakeup is None else max(0.0, min(LOOP_TICK_S, wakeup - now))
            for kind, worker_id, payload in self.pool.wait(timeout):
                if kind == "wakeup":
                    try:
                        wake_r.recv(64)
                    except OSError:
                        pass
                elif kind == "died":
                    self._worker_died(worker_id, payload)
                elif isinstance(payload, Progress):
                    self.owner.proxy.progress(payload.task_id, payload.info)
                    self.reporter.progress(payload.task_id, payload.info)
                elif isinstance(payload, AttemptResult):
                    self._settle(worker_id, payload)
            self.reporter.tick(self.sched)

    def _dispatch(self, now: float) -> None:
        idle = self.pool.idle()
        for d in self.sched.dispatch(now, len(idle)):
            worker_id = idle.pop(0)
            task = self.by_id[d.task_id]
            req = self._request(task, d.attempt, d.timeout_s)
            self._record({"type": "attempt_started", "task": d.task_id, "attempt": d.attempt,
                          "worker": worker_id, "timeout_s": d.timeout_s})
            if self.config.spec.mark_in_progress:
                self._mark({d.task_id: "-"})
            self.pool.submit(worker_id, req)
            self.worker_of[d.task_id] = worker_id
            self.reporter.attempt_started(d.task_id, d.attempt, worker_id, task.title)

    def _request(self, task, attempt: int, timeout_s: float) -> AttemptRequest:
        agent = self.agents.get(task.agent) if task.agent else None
        argv = build_command(self.config.claude, agent=agent,
                             agents=[agent] if agent else ())
        env = build_env(os.environ, self.config.claude, run_id=self.run_id, task_id=task.id,
                        attempt=attempt)
        return AttemptRequest(
            task_id=task.id, attempt=attempt, argv=tuple(argv), env=env, cwd=self.repo,
            prompt=build_prompt(self.spec, task),
            timeout_s=timeout_s, idle_timeout_s=self.config.run.idle_timeout,
            transcript=os.path.join(self.run_dir, f"{task.id}.{attempt}.jsonl"),
            grace_s=GRACE_S)

    def _worker_died(self, worker_id: int, request: Optional[AttemptRequest]) -> None:
        self.reporter.note(f"worker {worker_id} died"
                           + (f" while running {request.task_id}" if request else "")
                           + "; started a new one")
        if request is None:
            return
        now = time.time()
        self._settle(worker_id, AttemptResult(
            request.task_id, request.attempt,
            Outcome("crashed", f"worker {worker_id} died while running {request.task_id}"),
            None, now, now))

    def _settle(self, worker_id: int, result: AttemptResult) -> None:
        tid = result.task_id
        self.worker_of.pop(tid, None)
        outcome = result.outcome
        self._record({"type": "attempt_ended", "task": tid, "attempt": result.attempt,
                      "outcome": outcome.kind, "message": outcome.message,
                      "cost_usd": outcome.cost_usd, "exit_code": result.exit_code,
                      "duration_s": round(result.ended_at - result.started_at, 3),
                      "session_id": outcome.session_id})
        settled = self.sched.settle(tid, outcome, time.time())
        action = settled.decision.action
        if action == "done":
            completed = self.plan.groups_completed_by(tid, self.sched.done)
            self._mark({tid: "x", **{g: "x" for g in completed}})
            self._record({"type": "task_done", "task": tid})
        elif self.sched.state[tid] == "pending":
            if self.config.spec.mark_in_progress:
                self._mark({tid: " "})
            if action == "retry":
                self._record({"type": "retry_scheduled", "task": tid,
                              "not_before": settled.decision.not_before,
                              "reason": settled.decision.reason})
            else:
                self._record({"type": "task_status", "task": tid, "status": "pending",
                              "reason": settled.decision.reason})
            if action == "pause":
                self._record({"type": "run_paused", "until": self.sched.paused_until,
                              "reason": settled.decision.reason})
        else:
            if self.config.spec.mark_in_progress:
                self._mark({tid: " "})
            self._record({"type": "task_failed", "task": tid,
                          "error": settled.decision.reason or outcome.message})
        for skipped in settled.skipped:
            self._record({"type": "task_status", "task": skipped, "status": "skipped",
                          "reason": f"needs {tid}, which failed"})
        self.reporter.attempt_ended(result, settled, self.sched)

    def _finish(self) -> int:
        sched = self.sched
        if sched.interrupted:
            code = EXIT_INTERRUPTED
        elif sched.exit_paused:
            code = EXIT_PAUSED
        elif sched.failed() or sched.skipped() or sched.stop_reason:
            code = EXIT_FAILED
        else:
            code = EXIT_OK
        self._record({"type": "run_ended", "status": _status_word(code), "exit_code": code,
                      "reason": sched.stop_reason})
        view = self.owner.proxy.view()
        self.reporter.finished(view, code, sched.stop_reason)
        return code

    # ----- state and files

    def _run_started_event(self) -> dict:
        return {"type": "run_started", "t": time.time(), "run_id": self.run_id,
                "spec": self.spec.name, "pid": os.getpid(),
                "tasks": [[t.id, t.title] for t in self.plan.tasks]}

    def _record_initial(self) -> None:
        for tid in self.sched.done:
            if tid in self.by_id:
                self._record({"type": "task_status", "task": tid, "status": "done",
                              "reason": "checked in tasks.md"})

    def _record(self, event: dict) -> None:
        event.setdefault("t", time.time())
        self.owner.proxy.record(event)

    def _mark(self, marks: Dict[str, str]) -> None:
        missing = set_marks(self.spec.paths.tasks, marks)
        if missing:
            self.reporter.note(f"tasks.md no longer has task {', '.join(missing)}; "
                               "its checkbox was not written")

    # ----- signals

    def _install_signals(self, wake_w):
        def handler(signum, frame):
            self.signals.append(signum)

        old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, handler)
        try:
            old["wakeup_fd"] = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        except (ValueError, OSError):
            pass
        return old

    def _restore_signals(self, old) -> None:
        if "wakeup_fd" in old:
            signal.set_wakeup_fd(old.pop("wakeup_fd"))
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _status_word(code: int) -> str:
    return {EXIT_OK: "done", EXIT_FAILED: "failed", EXIT_PAUSED: "paused",
            EXIT_INTERRUPTED: "interrupted"}.get(code, "ended")
