"""What a run tells the user while it goes and when it ends.

On a TTY: one live status line, redrawn in place, with events printed above it. Not a TTY
(cron, CI, a pipe): plain timestamped lines, one per event. With --json: events go to
stderr as plain lines and stdout gets one JSON document at the end.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Optional, TextIO

from qw.durations import format_duration
from qw.report import STATUS_HEADER, status_rows, table, totals_line

REDRAW_EVERY_S = 0.5


class RunReporter:
    def __init__(self, spec: str, json_output: bool = False,
                 out: Optional[TextIO] = None, err: Optional[TextIO] = None):
        self.spec = spec
        self.json_output = json_output
        self.out = out or sys.stdout
        self.events = err or (sys.stderr if json_output else self.out)
        self.live = (not json_output) and _isatty(self.events)
        self.started_at = time.time()
        self.last_draw = 0.0
        self.line_shown = False
        self.cost = 0.0

    # ----- events

    def note(self, text: str) -> None:
        self._event(text)

    def started(self, run_id: str, n_tasks: int, jobs: int) -> None:
        self.started_at = time.time()
        self._event(f"run {run_id}: {n_tasks} task{'s' if n_tasks != 1 else ''} "
                    f"of {self.spec} on {jobs} worker{'s' if jobs != 1 else ''}")

    def attempt_started(self, task_id: str, attempt: int, worker: int, title: str) -> None:
        again = f" (attempt {attempt})" if attempt > 1 else ""
        self._event(f"start {task_id}{again} on worker {worker}: {title}")

    def waiting(self, task_ids, reason: str) -> None:
        """Ready tasks held back by [resources] limits, for a reason not shown just before."""
        self._event(f"wait  {', '.join(task_ids)}: {reason}")

    def progress(self, task_id: str, info: dict) -> None:
        pass   # shown through the live line's counters; `qw status` has the detail

    def attempt_ended(self, result, settled, sched) -> None:
        self.cost = sched.spent_usd
        took = format_duration(max(0.0, result.ended_at - result.started_at))
        action = settled.decision.action
        tid = result.task_id
        outcome = result.outcome
        if action == "done":
            cost = f", ${outcome.cost_usd:.4f}" if outcome.cost_usd else ""
            peak = f", peak {result.peak_rss_mb:.0f} MB" if result.peak_rss_mb else ""
            # The child reported success, yet the working tree is as it was: worth a look.
            nothing = " (changed nothing)" if result.changed_nothing else ""
            self._event(f"done  {tid} in {took}{cost}{peak}{nothing}")
        elif action == "retry" and sched.stop_reason is not None:
            self._event(f"stop  {tid} after {took}: {outcome.kind}: {outcome.message} "
                        "(not retried: the run is stopping)")
        elif action == "retry":
            wait = max(0.0, settled.decision.not_before - time.time())
            self._event(f"retry {tid} in {format_duration(wait)}: {outcome.kind}: "
                        f"{outcome.message}")
        elif action == "interrupted":
            self._event(f"stopped {tid} after {took}")
        elif action == "pause":
            self._event(f"pause {tid}: {settled.decision.reason}")
        else:
            self._event(f"FAIL  {tid} after {took}: "
                        f"{settled.decision.reason or outcome.message}")
        for skipped in settled.skipped:
            self._event(f"skip  {skipped}: needs {tid}")

    def tick(self, sched) -> None:
        if not self.live or time.time() - self.last_draw < REDRAW_EVERY_S:
            return
        self._draw(sched)

    def finished(self, view: dict, code: int, reason: Optional[str]) -> None:
        self._clear_line()
        if self.json_output:
            view = dict(view, exit_code=code, stop_reason=reason)
            self.out.write(json.dumps(view, indent=2, default=str) + "\n")
            self.out.flush()
            return
        self.out.write("\n" + table(status_rows(view), STATUS_HEADER) + "\n")
        elapsed = format_duration(time.time() - self.started_at)
        self.out.write(f"{totals_line(view.get('totals') or {})}; took {elapsed}\n")
        if reason and reason != "interrupted":
            self.out.write(f"stopped: {reason}\n")
        hint = _next_step(code, self.spec)
        if hint:
            self.out.write(hint + "\n")
        self.out.flush()

    # ----- drawing

    def _event(self, text: str) -> None:
        self._clear_line()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        self.events.write(f"{stamp} {text}\n" if not self.live else f"{text}\n")
        self.events.flush()

    def _draw(self, sched) -> None:
        self.last_draw = time.time()
        waiting = f" ({len(sched.waiting)} waiting for room)" if sched.waiting else ""
        line = (f"qw {self.spec}: {len(sched.done)} done, {len(sched.running())} running, "
                f"{len(sched.failed())} failed, {len(sched.queued())} queued{waiting}"
                f" · ${sched.spent_usd:.2f} · {format_duration(time.time() - self.started_at)}")
        if sched.paused_until:
            line += f" · paused until {time.strftime('%H:%M', time.localtime(sched.paused_until))}"
        self.events.write("\r\x1b[2K" + line)
        self.events.flush()
        self.line_shown = True

    def _clear_line(self) -> None:
        if self.line_shown:
            self.events.write("\r\x1b[2K")
            self.line_shown = False


def _next_step(code: int, spec: str) -> str:
    return {
        1: f"next: `qw logs {spec} TASK` shows why a task failed; `qw run {spec}` retries "
           "what is not done",
        3: "",
        75: f"next: run `qw run {spec}` again later; finished tasks stay finished",
        130: f"next: `qw run {spec}` continues where this run stopped",
    }.get(code, "")


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
