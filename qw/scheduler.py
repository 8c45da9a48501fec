"""The dispatch state machine of a run: which task to start, what a result means.

Pure: no processes, no clock, no sleeping. The runner feeds it results, `now` and a
snapshot of the machine, and carries out what it returns; tests step it by hand. Retry and
pause decisions come from `qw.policy`, whether the machine has room for one more task from
`qw.admission`; this module applies them to the task graph (a failed task skips its
dependents; the rest of the graph goes on, as `make -k` would).

Admission: a ready task starts when a worker is free and `Admission.hold` finds the machine
has room; otherwise it waits, and `waiting` says why. Ready tasks start in document order,
but one too big for the memory left does not hold back a smaller one behind it (the run is
finite: the big one starts at the latest when nothing else runs). When nothing is running,
one task always starts, whatever the machine looks like: a busy machine slows a run down,
it never stops it.
"""

from __future__ import annotations

import random
from bisect import bisect_left, insort
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Set

from qw.admission import Admission, Hold
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
                 timeouts: Optional[Dict[str, float]] = None,
                 admission: Optional[Admission] = None,
                 agents: Optional[Dict[str, Optional[str]]] = None):
        self.plan = plan
        self.run = run
        self.rng = rng or random.Random()
        self.done: Set[str] = set(done)
        self.targets: List[str] = [t for t in targets if t not in self.done]
        self.state: Dict[str, str] = {t: PENDING for t in self.targets}
        # Kept as the run goes, so that no call walks every target (a 10,000-task run
        # dispatches thousands of times): each target's position, the tasks that need
        # each task, how many prerequisites of each target are not done yet, the targets
        # in each state (in the order they entered it), and the ready ones (pending, every
        # prerequisite done; backoff not considered) as sorted positions.
        self.position: Dict[str, int] = {t: i for i, t in enumerate(self.targets)}
        self.dependents: Dict[str, List[str]] = {}
        self.unmet: Dict[str, int] = {}
        for tid in self.targets:
            deps = plan.deps.get(tid, ())
            for d in deps:
                self.dependents.setdefault(d, []).append(tid)
            self.unmet[tid] = sum(1 for d in deps if d not in self.done)
        self.members: Dict[str, Dict[str, None]] = {
            st: {} for st in (PENDING, RUNNING, DONE, FAILED, SKIPPED)}
        self.members[PENDING] = dict.fromkeys(self.targets)
        self.ready_positions: List[int] = [self.position[t] for t in self.targets
                                           if self.unmet[t] == 0]
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
        # Admission: the limits and learned estimates; each task's `_Agent:` (None: none).
        self.admission = admission or Admission()
        self.agents: Dict[str, Optional[str]] = dict(agents or {})
        # Ready tasks held by admission at the last dispatch, and why (at most as many as
        # there were workers left free: the rest wait for a worker, not for the machine).
        self.waiting: Dict[str, Hold] = {}
        # Per running task: the estimate it started with, and the RSS last seen of it. The
        # difference is memory it may still take, which no snapshot shows yet.
        self.estimate_at_start: Dict[str, float] = {}
        self.rss_seen: Dict[str, float] = {}

    # ----- queries

    def running(self) -> List[str]:
        return self._in_order(RUNNING)

    def failed(self) -> List[str]:
        return self._in_order(FAILED)

    def skipped(self) -> List[str]:
        return self._in_order(SKIPPED)

    def queued(self) -> List[str]:
        return self._in_order(PENDING)

    def finished(self) -> bool:
        """Nothing is running and nothing more will start."""
        if self.members[RUNNING]:
            return False
        return self.stop_reason is not None or not self.members[PENDING]

    def ready(self, now: float) -> List[str]:
        """Pending targets whose prerequisites are done and whose backoff has passed, in
        document order."""
        return [self.targets[i] for i in self.ready_positions
                if self.not_before.get(self.targets[i], 0.0) <= now]

    def next_wakeup(self, now: float) -> Optional[float]:
        """The earliest future time at which something could become dispatchable."""
        times = [t for tid, t in self.not_before.items()
                 if self.state.get(tid) == PENDING and t > now]
        if self.paused_until and self.paused_until > now:
            times.append(self.paused_until)
        return min(times) if times else None

    def committed_mb(self) -> float:
        """Memory the running tasks may still take beyond what they use now: per task, its
        estimate minus its RSS last seen (all of it until one is seen)."""
        return sum(max(0.0, estimate - self.rss_seen.get(tid, 0.0))
                   for tid, estimate in self.estimate_at_start.items())

    # ----- decisions

    def dispatch(self, now: float, free_workers: int, snapshot=None) -> List[Dispatch]:
        """The attempts to start now on up to `free_workers` idle workers, given the
        machine as `snapshot` (a qw.probe.Snapshot; None: do not look at the machine).
        Updates `waiting`."""
        self.waiting = {}
        if self.stop_reason is not None or free_workers <= 0:
            return []
        if self.paused_until is not None:
            if now < self.paused_until:
                return []
            self.paused_until = None
        out: List[Dispatch] = []
        committed = self.committed_mb()
        busy = bool(self.members[RUNNING])
        ready = self.ready_positions
        index = 0   # into `ready`, which loses each task started (no copy: it may be long)
        while index < len(ready) and len(out) < free_workers:
            tid = self.targets[ready[index]]
            if self.not_before.get(tid, 0.0) > now:
                index += 1
                continue
            agent = self.agents.get(tid)
            hold = self.admission.hold(snapshot, agent, committed)
            if hold is not None and (out or busy):
                room = free_workers - len(out)   # workers this task could have had
                if len(self.waiting) < room:
                    self.waiting[tid] = hold
                if hold.machine_wide and len(self.waiting) >= room:
                    break   # every task after it waits for the same
                index += 1
                continue
            estimate = self.admission.estimate_mb(agent)
            committed += estimate
            self.estimate_at_start[tid] = estimate
            self.attempts[tid] = self.attempts.get(tid, 0) + 1
            self._move(tid, RUNNING)
            out.append(Dispatch(tid, self.attempts[tid], self.timeout_s[tid]))
        return out

    def observe(self, task_id: str, rss_mb: float) -> None:
        """The running task's process tree uses `rss_mb` now (from its worker)."""
        if self.state.get(task_id) == RUNNING:
            self.rss_seen[task_id] = rss_mb

    def settle(self, task_id: str, outcome, now: float,
               peak_rss_mb: Optional[float] = None) -> Settled:
        """Apply one attempt's outcome; returns the decision and any skipped dependents.
        `peak_rss_mb`, the attempt's measured peak (None: not measured), teaches the
        memory estimate of the task's agent."""
        assert self.state.get(task_id) == RUNNING, (task_id, self.state.get(task_id))
        self.estimate_at_start.pop(task_id, None)
        self.rss_seen.pop(task_id, None)
        self.admission.learn(self.agents.get(task_id), peak_rss_mb)
        self.spent_usd += outcome.cost_usd or 0.0
        if outcome.kind == INTERRUPTED:
            # Cancelled by us (Ctrl-C, a stopping run): not the task's fault; it stays
            # pending, and the next run starts it again.
            self._move(task_id, PENDING)
            return Settled(task_id, Decision("interrupted", now, self.timeout_s[task_id],
                                             outcome.message))
        decision = decide(outcome, self.attempts[task_id], self.run, now=now, rng=self.rng,
                          timeout_s=self.timeout_s[task_id])
        skipped: tuple = ()
        action = decision.action
        if action == "done":
            self._move(task_id, DONE)
        elif action == "retry":
            # While the run stops, a retry waits for the next run: pending, not failed.
            self._move(task_id, PENDING)
            self.not_before[task_id] = decision.not_before
            self.timeout_s[task_id] = decision.timeout_s
        elif action in ("pause", "exit_paused"):
            # The attempt did not run for lack of quota: it does not count against the task.
            self._move(task_id, PENDING)
            self.attempts[task_id] -= 1
            if action == "pause":
                self.paused_until = max(self.paused_until or 0.0, decision.not_before)
            else:
                self.exit_paused = True
                self.stop(decision.reason)
        else:  # fail, stop_run
            self._move(task_id, FAILED)
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
        out, stack = [], [failed_id]
        while stack:
            for child in self.dependents.get(stack.pop(), ()):
                if self.state.get(child) == PENDING:
                    self._move(child, SKIPPED)
                    out.append(child)
                    stack.append(child)
        return tuple(out)

    def _move(self, tid: str, new: str) -> None:
        """Put target `tid` in state `new`, keeping the counts and the ready positions
        true; a task done lowers its dependents' unmet counts."""
        old = self.state[tid]
        del self.members[old][tid]
        self.members[new][tid] = None
        self.state[tid] = new
        if self.unmet[tid] == 0:
            if old == PENDING:
                position = self.position[tid]
                del self.ready_positions[bisect_left(self.ready_positions, position)]
            if new == PENDING:
                insort(self.ready_positions, self.position[tid])
        if new == DONE and tid not in self.done:
            self.done.add(tid)
            for child in self.dependents.get(tid, ()):
                if child in self.unmet:
                    self.unmet[child] -= 1
                    if self.unmet[child] == 0 and self.state[child] == PENDING:
                        insort(self.ready_positions, self.position[child])

    def _in_order(self, state: str) -> List[str]:
        """The targets in `state`, in document order."""
        return sorted(self.members[state], key=self.position.__getitem__)
