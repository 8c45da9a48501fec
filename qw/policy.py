"""What to do after an attempt: the retry policy, as one pure function of its Outcome.

Pure: `decide` takes `now` and a `random.Random` and returns a Decision; the runner acts on
it (starts the retry at `not_before`, pauses the pool, stops the run). The run settings are
duck-typed: anything with max_retries, retry_backoff, timeout_multiplier and max_pause.

    ok                                         -> done
    auth                                       -> stop_run (every task would fail)
    rate_limited, overloaded, server_error,
    crashed, hung, verify_failed               -> retry after exponential backoff (a
                                                  verify_failed retry resumes the session)
    timeout                                    -> retry at once with a longer timeout
    max_turns, budget, denied, verify_error    -> fail (a retry would end the same way)
    usage_limit                                -> pause the pool until the reset, or
                                                  exit_paused when that is too far off

`run_exit_code` turns the scheduler's final state into the run's exit code.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Optional

from .durations import format_duration
from .errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_PAUSED

ACTIONS = ("done", "retry", "fail", "stop_run", "pause", "exit_paused")

BACKOFF_CAP_S = 600.0   # no backoff longer than 10 minutes, whatever the attempt number
JITTER = 0.2            # ±20%, so that tasks failing together do not retry together
# Waiting this long after a usage limit's stated reset time: the CLI shows it rounded and
# clocks differ.
RESET_MARGIN_S = 60.0
# A usage limit without a readable reset time: try again after this long (or max_pause if
# shorter). A limit that is still there costs one quick failed call per hour.
UNKNOWN_RESET_PAUSE_S = 3600.0

_BACKOFF_KINDS = ("rate_limited", "overloaded", "server_error", "crashed", "hung",
                  "verify_failed")
_FINAL = {
    "max_turns": "retrying would stop at the same limit: raise [claude] max_turns or split "
                 "the task",
    "budget": "retrying would hit the same budget: raise the budget or split the task",
    "denied": "retrying would be denied again: allow the tool ([claude] allowed_tools or "
              "permission_mode)",
    # The command could not be started: another Claude session cannot fix the config.
    "verify_error": "check [run] verify or the task's _Verify: line (the command is run "
                    "without a shell: write `sh -c '...'` for shell syntax)",
}


@dataclass(frozen=True)
class Decision:
    """What the runner does next with the task (or the whole run).

    `not_before` is the epoch when a retry may start or a pause ends; `timeout_s` is the
    wall-clock limit for the next attempt.
    """

    action: str
    not_before: float
    timeout_s: float
    reason: str


def decide(outcome: Any, attempt: int, run: Any, *, now: float, rng: random.Random,
           timeout_s: float) -> Decision:
    """The Decision after attempt number `attempt` (1-based) ended with `outcome`.

    Retries are allowed while `attempt <= run.max_retries`. A usage limit is not the task's
    fault: its decision ignores `attempt`, and the runner should not count that attempt.
    """
    kind = outcome.kind
    if kind == "ok":
        return Decision("done", now, timeout_s, outcome.note or "done")
    if kind == "auth":
        return Decision("stop_run", now, timeout_s,
                        f"{outcome.message}: every task would fail; check ANTHROPIC_API_KEY "
                        "or run `claude /login`")
    if kind == "usage_limit":
        return _usage_limit(outcome, run, now, timeout_s)
    if kind in _FINAL:
        return Decision("fail", now, timeout_s, f"{outcome.message}; {_FINAL[kind]}")
    if kind not in _BACKOFF_KINDS and kind != "timeout":
        raise ValueError(f"unknown outcome kind {kind!r}")
    if attempt > run.max_retries:
        plural = "s" if attempt != 1 else ""
        return Decision("fail", now, timeout_s,
                        f"gave up after {attempt} attempt{plural}: {outcome.message}")
    next_try = f"attempt {attempt + 1} of {run.max_retries + 1}"
    if kind == "timeout":
        # A slow task is not helped by waiting, only by more time.
        longer = timeout_s * run.timeout_multiplier
        return Decision("retry", now, longer, f"{outcome.message}; {next_try} now with a "
                                              f"{format_duration(longer)} timeout")
    delay = backoff_s(attempt, run.retry_backoff, rng, outcome.retry_after_s)
    return Decision("retry", now + delay, timeout_s,
                    f"{outcome.message}; {next_try} in {format_duration(delay)}")


def backoff_s(attempt: int, base_s: float, rng: random.Random,
              retry_after_s: Optional[float] = None) -> float:
    """Seconds to wait before retrying after attempt `attempt`.

    `base_s * 2**(attempt-1)`, capped at BACKOFF_CAP_S, with ±JITTER (still within the cap);
    never less than the `retry_after_s` the API asked for.
    """
    exponential = min(base_s * 2 ** max(0, attempt - 1), BACKOFF_CAP_S)
    delay = min(exponential * rng.uniform(1 - JITTER, 1 + JITTER), BACKOFF_CAP_S)
    return max(delay, retry_after_s or 0.0)


def _usage_limit(outcome: Any, run: Any, now: float, timeout_s: float) -> Decision:
    reset_at = outcome.reset_at
    if reset_at is None:
        pause = min(run.max_pause, UNKNOWN_RESET_PAUSE_S)
        if pause <= 0:
            return Decision("exit_paused", now, timeout_s,
                            f"{outcome.message}; the reset time is unknown: run again later")
        return Decision("pause", now + pause, timeout_s,
                        f"{outcome.message}; the reset time is unknown: pausing "
                        f"{format_duration(pause)} before trying again")
    resume = max(now, reset_at + RESET_MARGIN_S)
    when = datetime.fromtimestamp(reset_at).astimezone().isoformat(timespec="minutes")
    if resume - now <= run.max_pause:
        return Decision("pause", resume, timeout_s,
                        f"{outcome.message}; pausing until {when} "
                        f"({format_duration(resume - now)})")
    return Decision("exit_paused", resume, timeout_s,
                    f"{outcome.message}; the limit resets at {when}, later than max_pause "
                    f"({format_duration(run.max_pause)}) allows: run again after that")


def run_exit_code(sched: Any, signalled: bool = False) -> int:
    """The exit code of a run that ended with scheduler `sched` (duck-typed: interrupted,
    exit_paused, failed(), skipped(), stop_reason): 130 when it was interrupted, also
    when `signalled` (a Ctrl-C/SIGTERM came only after its last attempt ended: nothing
    was left to stop, but whoever sent it must not read success); else 75 when it paused
    (a usage limit, the budget), 1 when a task failed or was skipped or the run stopped
    early, 0 when everything asked for is done."""
    if sched.interrupted or signalled:
        return EXIT_INTERRUPTED
    if sched.exit_paused:
        return EXIT_PAUSED
    if sched.failed() or sched.skipped() or sched.stop_reason:
        return EXIT_FAILED
    return EXIT_OK


def budget_exhausted(spent: float, budget_usd: float) -> bool:
    """True when a run with budget `budget_usd` (0: none) has spent all of it."""
    return budget_usd > 0 and spent >= budget_usd


def budget_left(spent: float, budget_usd: float) -> Optional[float]:
    """Dollars a run may still spend (for `--max-budget-usd`), or None without a budget."""
    if budget_usd <= 0:
        return None
    return max(0.0, budget_usd - spent)
