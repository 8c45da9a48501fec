"""qw.admission: when the machine has room for one more task, and how much a task needs;
and how the run state keeps what admission learns and says (qw.state). Pure: no probing."""

import pytest

from qw.admission import (CPU, MEMORY_FREE, MEMORY_USED, PEAKS_KEPT, Admission, Limits,
                          estimate_from, hold_for)
from qw.probe import Snapshot
from qw.state import RunState, decode_snapshot, encode_snapshot, replay

LIMITS = Limits(cpu_limit_percent=80, memory_limit_percent=75, memory_reserve_mb=1024,
                per_task_memory_mb=512)


def machine(load=10.0, used=20.0, available=8000.0, total=16000.0):
    return Snapshot(cpu_count=2, load1=None if load is None else load / 50,
                    load_per_cpu_percent=load, memory_total_mb=total,
                    memory_available_mb=available, memory_used_percent=used,
                    backend="scripted", note="")


# ----- the limits


def test_a_quiet_machine_holds_nothing():
    assert hold_for(machine(), LIMITS, 512) is None


def test_each_limit_holds_with_its_reason_and_key():
    cpu = hold_for(machine(load=150.0), LIMITS, 512)
    assert cpu.kind == CPU and cpu.machine_wide
    assert cpu.reason == ("waiting for CPU: load 150% per CPU > 80% limit "
                          "([resources] cpu_limit_percent)")
    used = hold_for(machine(used=90.0), LIMITS, 512)
    assert used.kind == MEMORY_USED and used.machine_wide
    assert used.reason == ("waiting for memory: 90% used > 75% limit "
                           "([resources] memory_limit_percent)")
    free = hold_for(machine(available=300.0), LIMITS, 512)
    assert free.kind == MEMORY_FREE and not free.machine_wide
    assert free.reason == ("waiting for memory: 300 MB available - 1024 MB reserve "
                           "< 512 MB estimate")


def test_the_reserve_and_the_estimate_must_both_fit():
    assert hold_for(machine(available=1536.0), LIMITS, 512) is None      # exactly fits
    assert hold_for(machine(available=1535.0), LIMITS, 512).kind == MEMORY_FREE
    assert hold_for(machine(available=1600.0), LIMITS, 600).kind == MEMORY_FREE


def test_memory_promised_to_started_tasks_counts_as_used():
    held = hold_for(machine(available=2000.0), LIMITS, 512, committed_mb=700.0)
    assert held.kind == MEMORY_FREE
    assert held.reason.startswith("waiting for memory: 1300 MB available (counting 700 MB "
                                  "that started tasks may still take)")
    # 20% used + 100 * 9000 / 16000 = 76% > 75%
    assert hold_for(machine(), LIMITS, 0, committed_mb=9000.0).kind == MEMORY_USED


def test_a_figure_the_platform_cannot_give_holds_nothing():
    unknown = Snapshot(cpu_count=2, load1=None, load_per_cpu_percent=None,
                       memory_total_mb=None, memory_available_mb=None,
                       memory_used_percent=None, backend="stdlib", note="")
    strict = Limits(cpu_limit_percent=1, memory_limit_percent=1, memory_reserve_mb=10 ** 9,
                    per_task_memory_mb=10 ** 9)
    assert hold_for(unknown, strict, 10 ** 9) is None


def test_a_cpu_limit_of_100_never_holds_however_long_the_run_queue():
    # The load counts as CPU use, which cannot pass 100%: 100 means "do not wait for CPU".
    assert hold_for(machine(load=400.0), Limits(cpu_limit_percent=100), 0) is None
    assert hold_for(machine(load=400.0), Limits(cpu_limit_percent=99), 0).kind == CPU


# ----- estimates


def test_the_estimate_starts_at_per_task_memory_and_learns_the_recent_maximum():
    admission = Admission(LIMITS)
    assert admission.estimate_mb("tester") == 512.0
    admission.learn("tester", 900.4)
    admission.learn("tester", 300.0)
    assert admission.estimate_mb("tester") == 901.0        # the max, in whole MB
    assert admission.estimate_mb(None) == 512.0            # other groups are their own
    admission.learn(None, None)                            # not measured: nothing learned
    assert admission.estimate_mb(None) == 512.0
    for _ in range(PEAKS_KEPT):                            # the big one ages out
        admission.learn("tester", 200.0)
    assert admission.estimate_mb("tester") == 200.0


def test_the_estimate_names_the_agent_in_the_reason():
    admission = Admission(LIMITS, peaks={"tester": [3000.0]})
    held = admission.hold(machine(available=3500.0), "tester")
    assert held.reason.endswith("< 3000 MB estimate for agent tester")
    assert admission.hold(machine(available=3500.0), None) is None
    assert estimate_from([], 512) == 512.0


def test_without_limits_or_a_snapshot_nothing_is_held():
    assert Admission(None).hold(machine(load=500.0), None) is None
    assert Admission(LIMITS).hold(None, None) is None


# ----- what the run state keeps and shows


def started(spec="s", run_id="r1", tasks=(("1", "One"), ("2", "Two"))):
    return {"type": "run_started", "t": 0.0, "spec": spec, "run_id": run_id,
            "tasks": [list(t) for t in tasks]}


def ended(task, attempt=1, peak=None, cpu=None, agent=None, outcome="ok", t=5.0):
    return {"type": "attempt_ended", "t": t, "task": task, "attempt": attempt,
            "outcome": outcome, "peak_rss_mb": peak, "cpu_s": cpu, "agent": agent}


def entry(state, task, live=True):
    return next(t for t in state.view(live=live)["tasks"] if t["id"] == task)


def test_a_waiting_task_is_ready_with_its_reason_while_the_run_is_live():
    state = replay([started(), {"type": "task_waiting", "t": 1.0, "task": "2",
                                "reason": "waiting for CPU: load 150% per CPU > 80% limit"}])
    row = entry(state, "2")
    assert (row["status"], row["waiting"]) == ("ready", "waiting for CPU: load 150% per CPU "
                                                        "> 80% limit")
    assert state.view(live=True)["totals"]["ready"] == 1
    # Read from a snapshot with no run live, nothing waits: the task is pending.
    assert entry(state, "2", live=False)["status"] == "pending"
    assert "waiting" not in entry(state, "2", live=False)
    # Starting it ends the wait; so does a reason of None.
    state.apply({"type": "attempt_started", "t": 2.0, "task": "2", "attempt": 1})
    assert entry(state, "2")["status"] == "running" and "waiting" not in entry(state, "2")
    state.apply({"type": "task_waiting", "t": 2.0, "task": "1", "reason": "x"})
    state.apply({"type": "task_waiting", "t": 3.0, "task": "1", "reason": None})
    assert entry(state, "1")["status"] == "pending"


def test_only_a_pending_task_can_wait():
    state = replay([started(), {"type": "attempt_started", "t": 1.0, "task": "1",
                                "attempt": 1}])
    with pytest.raises(ValueError, match="illegal transition: task_waiting"):
        state.apply({"type": "task_waiting", "t": 2.0, "task": "1", "reason": "x"})


def test_attempts_add_up_cpu_and_keep_the_largest_peak():
    state = replay([started(),
                    {"type": "attempt_started", "t": 1.0, "task": "1", "attempt": 1},
                    ended("1", peak=300.0, cpu=2.5, outcome="overloaded"),
                    {"type": "retry_scheduled", "t": 5.0, "task": "1", "not_before": 6.0},
                    {"type": "attempt_started", "t": 6.0, "task": "1", "attempt": 2},
                    ended("1", attempt=2, peak=250.0, cpu=1.0, t=9.0)])
    row = entry(state, "1")
    assert (row["peak_rss_mb"], row["cpu_s"]) == (300.0, 3.5)
    assert "peak_rss_mb" not in entry(state, "2")       # never measured
    totals = state.view()["totals"]
    assert (totals["peak_rss_mb"], totals["cpu_s"]) == (300.0, 3.5)
    assert state.view()["memory_peaks"] == {"": [300.0, 250.0]}


def test_learned_peaks_outlive_the_run_and_its_snapshot():
    state = replay([started(),
                    {"type": "attempt_started", "t": 1.0, "task": "1", "attempt": 1},
                    ended("1", peak=700.0, cpu=1.0, agent="tester")])
    again = decode_snapshot(encode_snapshot(state))
    assert again.memory_peaks == {"tester": [700.0]}
    again.apply(started(run_id="r2"))                   # a new run starts from them
    assert again.view()["memory_peaks"] == {"tester": [700.0]}
    assert entry(again, "1").get("peak_rss_mb") is None  # the tasks start afresh


def test_a_bad_measurement_is_refused_and_changes_nothing():
    state = replay([started(), {"type": "attempt_started", "t": 1.0, "task": "1",
                                "attempt": 1}])
    before = state.to_snapshot()
    with pytest.raises(ValueError, match="bad peak_rss_mb"):
        state.apply(ended("1", peak="lots"))
    assert state.to_snapshot() == before


def test_a_rolled_back_attempt_end_forgets_its_peak():
    state = replay([started(), {"type": "attempt_started", "t": 1.0, "task": "1",
                                "attempt": 1}])
    event = ended("1", peak=123.0)
    point = state.savepoint(event)
    state.apply(event)
    state.rollback(point)
    assert state.memory_peaks == {}


def test_an_old_snapshot_without_measurements_still_loads():
    data = replay([started()]).to_snapshot()
    del data["memory_peaks"]
    for task in data["tasks"]:
        for key in ("waiting", "peak_rss_mb", "cpu_s"):
            del task[key]
    state = RunState.from_snapshot(data)
    assert state.memory_peaks == {} and entry(state, "1")["status"] == "pending"
