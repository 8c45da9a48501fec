"""The dispatch state machine of a run: which task to start, what a result means.

Pure: no processes, no clock, no sleeping. The runner feeds it results and `now` and
carries out what it returns; tests step it by hand. Retry and pause decisions come from
`qw.policy`; this module applies them to the task graph (a failed task skips its
dependents; the rest of the graph goes on, as `make -k` would).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Set

from qw.plan import Plan
from qw.outcome import INTERRUPTED
from qw.policy import Decision, decide

# Task states inside a run (the subset of DESIGN §4's statuses the scheduler moves through).
PENDING, RUNNING, DONE, FAILED, SKIPPED = "pending", "running", "done", "failed", "skipped"


@dataclass(frozen=True)
class Dispatch:
    """Start `attempt` of `task_id` with this wall-clock limit."""

    task_id: str
    attempt: int
    timeout_s: float


@dataclass(frozen=True)
class Settled:
    """What the scheduler made of one finished attempt."""

    task_id: str
    decision: Decision
    skipped: tuple = ()   # dependents that can no longer run because this task failed


class Scheduler:
    """Tracks every target task of one run; one instance per run, driven by the runner."""

    def __init__(self, plan: Plan, targets: Iterable[str], done: Iterable[str], run,
                 *, attempts: Optional[Dict[str, int]] = None, rng: Optional[random.Random] = None,
                 timeouts: Optional[Dict[str, float]] = None):
        self.plan = plan
        self.run = run
        self.rng = rng or random.Random()
        self.done: Set[str] = set(done)
        self.targets: List[str] = [t for t in targets if t not in self.done]
        self.state: Dict[str, str] = {t: PENDING for t in self.targets}
        self.attempts: Dict[str, int] = dict(attempts or {})
        self.not_before: Dict[str, float] = {}
        # Per-task wall-clock limits: a task's own _Timeout:, else [run] timeout; grown on timeouts.
        self.timeout_s: Dict[str, float] = {t: (timeouts or {}).get(t, run.timeout)
                                            for t in self.targets}
        self.paused_until: Optional[float] = None
        self.stop_reason: Optional[str] = None   # set: no new dispatches
        self.exit_paused = False                 # usage limit or budget: exit 75
        self.interrupted = False
        # Running attempts are to be cancelled, not awaited: Ctrl-C, or an auth error that
        # every running task would hit too.
        self.cancel_running = False
        self.spent_usd = 0.0

    # ----- queries

    def running(self) -> List[str]:
        return [t for t, s in self.state.items() if s == RUNNING]

    def failed(self) -> List[str]:
        return [t for t, s in self.state.items() if s == FAILED]

    def skipped(self) -> List[str]:
        return [t for t, s in self.state.items() if s == SKIPPED]

    def queued(self) -> List[str]:
        return [t for t, s in self.state.items() if s == PENDING]

    def finished(self) -> bool:
        """Nothing is running and nothing more will start."""
        if self.running():
            return False
        return self.stop_reason is not None or not self.queued()

    def ready(self, now: float) -> List[str]:
        """Pending targets whose prerequisites are done and whose backoff has passed."""
        out = []
        for tid in self.targets:
            if self.state[tid] != PENDING or self.not_before.get(tid, 0.0) > now:
                continue
            if all(d in self.done for d in self.plan.deps.get(tid, ())):
                out.append(tid)
        return out

    def next_wakeup(self, now: float) -> Optional[float]:
        """The earliest future time at which something could become dispatchable."""
        times = [t for tid, t in self.not_before.items()
                 if self.state.get(tid) == PENDING and t > now]
        if self.paused_until and self.paused_until > now:
            times.append(self.paused_until)
        return min(times) if times else None

    # ----- decisions

    def dispatch(self, now: float, free_workers: int) -> List[Dispatch]:
        """The attempts to start now on up to `free_workers` idle workers."""
        if self.stop_reason is not None or free_workers <= 0:
            return []
        if self.paused_until is not None:
            if now < self.paused_until:
                return []
            self.paused_until = None
        out = []
        for tid in self.ready(now)[:free_workers]:
            self.attempts[tid] = self.attempts.get(tid, 0) + 1
            self.state[tid] = RUNNING
            out.append(Dispatch(tid, self.attempts[tid], self.timeout_s[tid]))
        return out

    def settle(self, task_id: str, outcome, now: float) -> Settled:
        """Apply one attempt's outcome; returns the decision and any skipped dependents."""
        assert self.state.get(task_id) == RUNNING, (task_id, self.state.get(task_id))
        self.spent_usd += outcome.cost_usd or 0.0
        if outcome.kind == INTERRUPTED:
            # Cancelled by us (Ctrl-C, a stopping run): not the task's fault; it stays
            # pending, and the next run starts it again.
            self.state[task_id] = PENDING
            return Settled(task_id, Decision("interrupted", now, self.timeout_s[task_id],
                                             outcome.message))
        decision = decide(outcome, self.attempts[task_id], self.run, now=now, rng=self.rng,
                          timeout_s=self.timeout_s[task_id])
        skipped: tuple = ()
        action = decision.action
        if action == "done":
            self.state[task_id] = DONE
            self.done.add(task_id)
        elif action == "retry":
            # While the run stops, a retry waits for the next run: pending, not failed.
            self.state[task_id] = PENDING
            self.not_before[task_id] = decision.not_before
            self.timeout_s[task_id] = decision.timeout_s
        elif action in ("pause", "exit_paused"):
            # The attempt did not run for lack of quota: it does not count against the task.
            self.state[task_id] = PENDING
            self.attempts[task_id] -= 1
            if action == "pause":
                self.paused_until = max(self.paused_until or 0.0, decision.not_before)
            else:
                self.exit_paused = True
                self.stop(decision.reason)
        else:  # fail, stop_run
            self.state[task_id] = FAILED
            skipped = self._skip_dependents(task_id)
            if action == "stop_run":
                self.stop(decision.reason)
                self.cancel_running = True
        if self.run.budget_usd and self.spent_usd >= self.run.budget_usd \
                and self.stop_reason is None:
            self.exit_paused = True
            self.stop(f"budget spent: ${self.spent_usd:.2f} of ${self.run.budget_usd:.2f} "
                      "([run] budget_usd); run again to continue")
        return Settled(task_id, decision, skipped)

    def interrupt(self) -> None:
        """Ctrl-C / SIGTERM: start nothing more; the runner stops what is running."""
        self.interrupted = True
        self.cancel_running = True
        self.stop("interrupted")

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason

    def _skip_dependents(self, failed_id: str) -> tuple:
        """Mark every pending target that (transitively) needs `failed_id` as skipped."""
        dependents: Dict[str, List[str]] = {}
        for tid, deps in self.plan.deps.items():
            for d in deps:
                dependents.setdefault(d, []).append(tid)
        out, stack = [], [failed_id]
        while stack:
            for child in dependents.get(stack.pop(), ()):
                if self.state.get(child) == PENDING:
                    self.state[child] = SKIPPED
                    out.append(child)
                    stack.append(child)
        return tuple(out)
