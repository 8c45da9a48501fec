"""The dispatch state machine, stepped by hand: no processes, no clock, no sleeping."""

import random
from types import SimpleNamespace

import pytest

from qw.admission import Admission, Limits
from qw.outcome import INTERRUPTED, Outcome
from qw.plan import build_plan
from qw.probe import Snapshot
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


# ----- admission: the machine must have room (a scripted probe, qw.admission's limits)

FREE = """\
- [ ] 1. One
  - File: a.py
- [ ] 2. Two
  - File: b.py
- [ ] 3. Three
  - File: c.py
- [ ] 4. Four
  - File: d.py
"""


def machine(load=10.0, used=20.0, available=8000.0, total=16000.0):
    return Snapshot(cpu_count=2, load1=load / 50, load_per_cpu_percent=load,
                    memory_total_mb=total, memory_available_mb=available,
                    memory_used_percent=used, backend="scripted", note="")


class ScriptedProbe:
    """The machine as a test scripts it: each snapshot() the next one, the last repeated."""

    def __init__(self, *snapshots):
        self.snapshots = list(snapshots)

    def snapshot(self):
        return self.snapshots.pop(0) if len(self.snapshots) > 1 else self.snapshots[0]


def admitting(spec=FREE, agents=None, peaks=None, **limits):
    values = dict(cpu_limit_percent=80, memory_limit_percent=75, memory_reserve_mb=1024,
                  per_task_memory_mb=512)
    values.update(limits)
    plan = build_plan(parse_tasks(spec))
    return Scheduler(plan, [t.id for t in plan.tasks], (), run_config(), rng=random.Random(1),
                     admission=Admission(Limits(**values), peaks=peaks), agents=agents)


def reasons(s):
    return {tid: hold.reason for tid, hold in s.waiting.items()}


def test_a_busy_cpu_holds_tasks_until_the_load_drops():
    s = admitting()
    probe = ScriptedProbe(machine(load=150.0), machine(load=150.0), machine(load=40.0))
    # Nothing runs: one task starts however busy the machine; the others wait, saying why.
    assert started(s.dispatch(0.0, 4, probe.snapshot())) == ["1"]
    cpu = "waiting for CPU: load 150% per CPU > 80% limit ([resources] cpu_limit_percent)"
    assert reasons(s) == {"2": cpu, "3": cpu, "4": cpu}
    assert started(s.dispatch(1.0, 3, probe.snapshot())) == []
    assert set(s.waiting) == {"2", "3", "4"}
    assert started(s.dispatch(2.0, 3, probe.snapshot())) == ["2", "3", "4"]   # cleared
    assert s.waiting == {}


def test_memory_in_use_above_the_limit_holds_tasks():
    s = admitting()
    probe = ScriptedProbe(machine(used=90.0), machine(used=90.0), machine(used=60.0))
    assert started(s.dispatch(0.0, 2, probe.snapshot())) == ["1"]
    assert "2" in s.waiting
    s.observe("1", 512.0)   # all it was expected to take shows in the figures now
    assert started(s.dispatch(1.0, 1, probe.snapshot())) == []
    assert reasons(s) == {"2": "waiting for memory: 90% used > 75% limit "
                                "([resources] memory_limit_percent)"}
    assert started(s.dispatch(2.0, 1, probe.snapshot())) == ["2"]


def test_too_little_memory_for_the_estimate_holds_a_task_and_says_the_figures():
    s = admitting()
    s.dispatch(0.0, 1, machine(available=300.0))          # 1 starts: nothing was running
    s.observe("1", 600.0)                                 # it uses its estimate already
    assert started(s.dispatch(1.0, 1, machine(available=300.0))) == []
    assert reasons(s) == {"2": "waiting for memory: 300 MB available - 1024 MB reserve "
                                "< 512 MB estimate"}
    s.settle("1", OK, 2.0, peak_rss_mb=600.0)
    assert started(s.dispatch(2.0, 1, machine(available=900.0))) == ["2"]   # alone again


def test_tasks_started_but_not_grown_yet_keep_their_memory_promised():
    s = admitting(memory_reserve_mb=0, per_task_memory_mb=800)
    # 2000 MB free: two 800 MB tasks fit, a third would not, though no snapshot shows them.
    assert started(s.dispatch(0.0, 3, machine(available=2000.0))) == ["1", "2"]
    assert "counting 1600 MB that started tasks may still take" in reasons(s)["3"]
    s.observe("1", 800.0)
    s.observe("2", 300.0)     # still growing: 500 MB of it is promised
    assert s.committed_mb() == 500.0
    assert started(s.dispatch(1.0, 1, machine(available=1200.0))) == []
    assert started(s.dispatch(2.0, 1, machine(available=1400.0))) == ["3"]


def test_the_learned_estimate_of_an_agent_is_used_for_its_next_task():
    agents = {"1": "builder", "2": "builder", "3": "builder", "4": None}
    s = admitting(agents=agents, memory_reserve_mb=0)
    assert started(s.dispatch(0.0, 1, machine(available=2000.0))) == ["1"]
    s.settle("1", OK, 1.0, peak_rss_mb=2999.2)            # builder tasks need ~3 GB
    assert started(s.dispatch(1.0, 1, machine(available=2000.0))) == ["2"]  # runs alone
    s.observe("2", 3000.0)
    # The next builder task does not fit in 2000 MB; the task without an agent (512 MB
    # by [resources] per_task_memory_mb) does, and goes first rather than idle a worker.
    assert started(s.dispatch(2.0, 2, machine(available=2000.0))) == ["4"]
    assert reasons(s) == {"3": "waiting for memory: 2000 MB available - 0 MB reserve "
                                "< 3000 MB estimate for agent builder"}
    s.settle("2", OK, 3.0, peak_rss_mb=2500.0)
    assert s.admission.peaks == {"builder": [2999.2, 2500.0]}
    s.settle("4", OK, 3.0, peak_rss_mb=100.0)
    assert started(s.dispatch(4.0, 1, machine(available=2000.0))) == ["3"]  # alone again


def test_estimates_learned_by_earlier_runs_are_used_from_the_start():
    s = admitting(peaks={"": [4000.0]}, memory_reserve_mb=0)
    assert started(s.dispatch(0.0, 2, machine(available=5000.0))) == ["1"]
    assert reasons(s)["2"].endswith("< 4000 MB estimate")


def test_never_a_deadlock_when_every_limit_is_exceeded_tasks_run_one_at_a_time():
    s = admitting(SPEC)
    hopeless = machine(load=400.0, used=99.0, available=10.0)
    most = 0
    for now in range(20):
        for d in s.dispatch(float(now), 3, hopeless):
            most = max(most, len(s.running()))
        for tid in s.running():
            s.settle(tid, OK, float(now))
        if s.finished():
            break
    assert s.finished() and s.done == {"1", "2", "3", "4"}
    assert most == 1


def test_only_as_many_tasks_wait_for_room_as_there_are_free_workers():
    s = admitting()
    s.dispatch(0.0, 2, machine(load=150.0))               # 1 starts alone
    assert list(s.waiting) == ["2"]                      # one worker left: one waits
    assert s.dispatch(1.0, 0, machine(load=150.0)) == [] and s.waiting == {}


def test_nothing_waits_once_the_run_stops():
    s = admitting()
    s.dispatch(0.0, 3, machine(load=150.0))
    assert s.waiting
    s.interrupt()
    assert s.dispatch(1.0, 3, machine()) == [] and s.waiting == {}


def test_without_a_snapshot_admission_does_not_look_at_the_machine():
    s = admitting()
    assert started(s.dispatch(0.0, 4)) == ["1", "2", "3", "4"]


def test_a_task_in_backoff_is_passed_over_and_the_ones_after_it_start():
    sched = make(spec="".join(f"- [ ] {i}. Task {i}\n  - File: f{i}.py\n" for i in range(1, 7)),
                 max_retries=1)
    assert started(sched.dispatch(0.0, 2)) == ["1", "2"]
    sched.settle("1", Outcome("overloaded", "529"), now=1.0)    # backoff: not before ~11 s
    sched.settle("2", OK, now=1.0)
    assert started(sched.dispatch(2.0, 3)) == ["3", "4", "5"]
    assert sched.queued() == ["1", "6"]
    assert started(sched.dispatch(3.0, 9)) == ["6"]
    assert started(sched.dispatch(100.0, 9)) == ["1"]
