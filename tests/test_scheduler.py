"""The dispatch state machine, stepped by hand: no processes, no clock, no sleeping."""

import random
from types import SimpleNamespace

import pytest

from qw.outcome import INTERRUPTED, Outcome
from qw.plan import build_plan
from qw.scheduler import Scheduler
from qw.tasks import parse_tasks

SPEC = """\
- [ ] 1. First
  - File: a.py
- [ ] 2. Second, needs 1
  - File: b.py
  - _Depends: 1_
- [ ] 3. Third, free
  - File: c.py
- [ ] 4. Fourth, needs 2
  - File: d.py
  - _Depends: 2_
"""


def run_config(**overrides):
    values = dict(max_retries=2, retry_backoff=10.0, timeout=100.0, timeout_multiplier=2.0,
                  max_pause=3600.0, budget_usd=0.0)
    values.update(overrides)
    return SimpleNamespace(**values)


def make(spec=SPEC, done=(), targets=None, **run):
    plan = build_plan(parse_tasks(spec))
    ids = [t.id for t in plan.tasks] if targets is None else targets
    return Scheduler(plan, ids, done, run_config(**run), rng=random.Random(1))


OK = Outcome("ok", "done", cost_usd=0.5)


def started(dispatches):
    return [d.task_id for d in dispatches]


def test_dispatch_respects_dependencies_and_free_workers():
    s = make()
    assert started(s.dispatch(0.0, free_workers=1)) == ["1"]
    assert started(s.dispatch(0.0, free_workers=5)) == ["3"]     # 2 waits for 1
    s.settle("1", OK, 1.0)
    assert started(s.dispatch(1.0, free_workers=5)) == ["2"]
    assert s.dispatch(1.0, free_workers=0) == []


def test_a_run_finishes_when_every_target_is_done():
    s = make()
    for now in range(10):
        for d in s.dispatch(float(now), free_workers=2):
            s.settle(d.task_id, OK, float(now))
        if s.finished():
            break
    assert s.finished() and s.done == {"1", "2", "3", "4"}
    assert s.spent_usd == pytest.approx(2.0)


def test_already_done_tasks_are_not_targets_and_satisfy_dependencies():
    s = make(done={"1"})
    assert sorted(started(s.dispatch(0.0, free_workers=5))) == ["2", "3"]


def test_a_transient_error_retries_after_backoff_then_succeeds():
    s = make(targets=["3"])
    (d,) = s.dispatch(0.0, 1)
    settled = s.settle("3", Outcome("overloaded", "529"), 0.0)
    assert settled.decision.action == "retry"
    wake = s.next_wakeup(0.0)
    assert 8.0 <= wake <= 12.0                    # 10 s backoff with ±20 % jitter
    assert s.dispatch(wake - 0.01, 1) == []       # not before the backoff ends
    (again,) = s.dispatch(wake, 1)
    assert again.attempt == 2
    s.settle("3", OK, wake + 1)
    assert s.finished() and s.done == {"3"}


def test_out_of_retries_fails_and_skips_every_dependent():
    s = make(max_retries=1)
    s.dispatch(0.0, 1)                            # 1 starts
    s.settle("1", Outcome("server_error", "500"), 0.0)
    (d,) = s.dispatch(100.0, 1)
    settled = s.settle("1", Outcome("server_error", "500"), 100.0)
    assert settled.decision.action == "fail"
    assert set(settled.skipped) == {"2", "4"}     # 4 needs 2 needs 1
    assert s.failed() == ["1"]
    # The independent task still runs: like make -k, one failure does not stop the rest.
    assert started(s.dispatch(100.0, 2)) == ["3"]


def test_a_timeout_retries_at_once_with_a_longer_limit():
    s = make(targets=["3"])
    (d,) = s.dispatch(0.0, 1)
    assert d.timeout_s == 100.0
    s.settle("3", Outcome("timeout", "timed out"), 100.0)
    (again,) = s.dispatch(100.0, 1)
    assert again.timeout_s == 200.0


def test_a_task_timeout_overrides_the_run_timeout():
    plan = build_plan(parse_tasks(SPEC))
    s = Scheduler(plan, ["3"], (), run_config(), timeouts={"3": 7.0})
    assert s.dispatch(0.0, 1)[0].timeout_s == 7.0


def test_auth_stops_the_run_and_starts_nothing_more():
    s = make()
    s.dispatch(0.0, 2)                            # 1 and 3 run
    settled = s.settle("1", Outcome("auth", "API error 401: Invalid API key"), 0.0)
    assert settled.decision.action == "stop_run"
    assert "ANTHROPIC_API_KEY" in s.stop_reason
    assert s.dispatch(0.0, 5) == []
    assert not s.finished()                       # 3 is still running
    s.settle("3", OK, 1.0)
    assert s.finished()


def test_a_usage_limit_pauses_everyone_until_the_reset_and_does_not_count():
    s = make(targets=["1", "3"])
    s.dispatch(0.0, 1)
    settled = s.settle("1", Outcome("usage_limit", "limit", reset_at=600.0), 0.0)
    assert settled.decision.action == "pause"
    assert s.paused_until >= 600.0
    assert s.dispatch(599.0, 5) == []             # the whole pool waits
    assert s.next_wakeup(0.0) == s.paused_until
    again = s.dispatch(s.paused_until, 5)
    assert started(again) == ["1", "3"]
    assert again[0].attempt == 1                  # the limited attempt was not counted


def test_a_usage_limit_beyond_max_pause_ends_the_run_paused():
    s = make(targets=["1"], max_pause=60.0)
    s.dispatch(0.0, 1)
    settled = s.settle("1", Outcome("usage_limit", "limit", reset_at=7200.0), 0.0)
    assert settled.decision.action == "exit_paused"
    assert s.exit_paused and s.finished()


def test_the_budget_stops_new_dispatches_once_spent():
    s = make(budget_usd=1.0)
    s.dispatch(0.0, 1)
    s.settle("1", Outcome("ok", "done", cost_usd=1.25), 1.0)
    assert s.exit_paused and "budget" in s.stop_reason
    assert s.dispatch(1.0, 5) == []
    assert s.finished()


def test_an_interrupted_attempt_leaves_the_task_pending_for_the_next_run():
    s = make(targets=["1", "3"])
    s.dispatch(0.0, 2)
    s.interrupt()
    settled = s.settle("1", Outcome(INTERRUPTED, "interrupted"), 1.0)
    assert settled.decision.action == "interrupted"
    assert s.state["1"] == "pending" and not s.failed()
    assert not s.finished()                       # 3 still winding down
    s.settle("3", Outcome(INTERRUPTED, "interrupted"), 1.0)
    assert s.finished() and s.interrupted


def test_groups_are_never_dispatched_only_their_subtasks():
    spec = """\
- [ ] 1. Group
  - [ ] 1.1 One
    - File: a.py
  - [ ] 1.2 Two
    - File: b.py
- [ ] 2. After the group
  - _Depends: 1_
"""
    s = make(spec)
    assert started(s.dispatch(0.0, 5)) == ["1.1", "1.2"]
    s.settle("1.1", OK, 1.0)
    assert s.dispatch(1.0, 5) == []               # 2 waits for the whole group
    s.settle("1.2", OK, 2.0)
    assert started(s.dispatch(2.0, 5)) == ["2"]
