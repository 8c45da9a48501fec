"""qw.state: checked transitions, replay == live, the status view, snapshots, recovery."""

from __future__ import annotations

import json

import pytest

from qw.errors import StateError
from qw.state import (SNAPSHOT_FORMAT, STATUSES, RunState, decode_snapshot, encode_snapshot,
                      recover_interrupted, replay)

TASKS = [["1", "Create models"], ["2", "Add API"], ["3", "Write docs"]]


def ev(kind, t=100.0, **fields):
    return {"type": kind, "t": t, **fields}


def started(tasks=TASKS, run_id="r1", t=100.0):
    return ev("run_started", t, run_id=run_id, spec="demo", tasks=tasks, pid=4242)


def run(*events):
    """A state after run_started and `events`; returns (state, all events)."""
    events = [started(), *events]
    return replay(events), events


def task(state, task_id):
    return next(t for t in state.view()["tasks"] if t["id"] == task_id)


def test_a_task_runs_to_done_and_the_view_adds_it_up():
    state, _ = run(ev("task_status", task="1", status="ready"),
                   ev("attempt_started", 101, task="1", attempt=1, worker=0, timeout_s=1800),
                   ev("attempt_ended", 131, task="1", attempt=1, outcome="ok", message="",
                      cost_usd=0.25, duration_s=30.0, session_id="s-1", exit_code=0),
                   ev("task_done", 132, task="1"))
    view = state.view()
    assert task(state, "1") == {"id": "1", "title": "Create models", "status": "done",
                                "attempts": 1, "duration_s": 30.0, "cost_usd": 0.25,
                                "error": None, "outcome": "ok", "next_try_at": None,
                                "progress": {}}
    assert state.tasks["1"].session_id == "s-1"
    assert view["totals"]["done"] == 1 and view["totals"]["pending"] == 2
    assert view["totals"]["cost_usd"] == 0.25 and view["totals"]["attempts"] == 1


def test_a_failed_attempt_is_retried_and_costs_add_up_over_attempts():
    state, _ = run(ev("attempt_started", 101, task="2", attempt=1, worker=3, timeout_s=60),
                   ev("attempt_ended", 110, task="2", attempt=1, outcome="rate_limited",
                      message="429 from the API", cost_usd=0.1, duration_s=9.0,
                      session_id="s-1", exit_code=1))
    assert task(state, "2")["status"] == "failed"
    assert task(state, "2")["error"] == "429 from the API"
    state.apply(ev("retry_scheduled", 111, task="2", not_before=141.0, reason="backoff 30s"))
    assert task(state, "2")["status"] == "pending"
    assert task(state, "2")["next_try_at"] == 141.0
    assert task(state, "2")["error"] == "429 from the API"   # why it is being retried
    state.apply(ev("attempt_started", 141, task="2", attempt=2, worker=1, timeout_s=60))
    state.apply(ev("attempt_ended", 150, task="2", attempt=2, outcome="ok", message="",
                   cost_usd=0.3, duration_s=9.5, session_id="s-2", exit_code=0))
    state.apply(ev("task_done", 150, task="2"))
    row = task(state, "2")
    assert (row["status"], row["attempts"], row["error"]) == ("done", 2, None)
    assert row["cost_usd"] == pytest.approx(0.4) and row["duration_s"] == 18.5


def test_a_final_failure_keeps_its_error():
    state, _ = run(ev("attempt_started", task="1", attempt=1, worker=0, timeout_s=60),
                   ev("attempt_ended", task="1", attempt=1, outcome="timeout",
                      message="no result after 1m", cost_usd=None, duration_s=None,
                      session_id=None, exit_code=None),
                   ev("task_failed", task="1", error="timeout: gave up after 1 attempt"))
    assert task(state, "1")["status"] == "failed"
    assert task(state, "1")["error"] == "timeout: gave up after 1 attempt"
    assert state.view()["totals"]["failed"] == 1


def test_a_paused_attempt_may_reuse_its_number_and_still_counts():
    # The scheduler gives back an attempt that hit the usage limit (it did not run).
    state, _ = run(ev("attempt_started", task="1", attempt=1, worker=0, timeout_s=60),
                   ev("attempt_ended", task="1", attempt=1, outcome="usage_limit",
                      message="limit reached", cost_usd=0, duration_s=1, session_id=None,
                      exit_code=1),
                   ev("task_status", task="1", status="pending", reason="usage limit"),
                   ev("run_paused", until=500.0, reason="usage limit until 500"),
                   ev("run_paused", 500, until=None),
                   ev("attempt_started", 500, task="1", attempt=1, worker=0, timeout_s=60))
    assert task(state, "1")["status"] == "running"
    assert task(state, "1")["attempts"] == 2
    assert state.view()["paused_until"] is None


def test_blocked_skipped_and_checked_tasks():
    state, _ = run(ev("task_status", task="1", status="done", reason="checked in tasks.md"),
                   ev("task_status", task="2", status="blocked", reason="needs 9, missing"),
                   ev("task_status", task="3", status="skipped", reason="needs 2"))
    assert [t["status"] for t in state.view()["tasks"]] == ["done", "blocked", "skipped"]
    assert task(state, "2")["error"] == "needs 9, missing"
    state.apply(ev("task_status", task="2", status="ready"))
    assert task(state, "2")["error"] is None     # the block is lifted
    state.apply(ev("task_status", task="1", status="pending", reason="unchecked"))
    assert task(state, "1")["status"] == "pending"


def _illegal_cases():
    open_attempt = [ev("attempt_started", task="1", attempt=1, worker=0, timeout_s=5)]
    ended_failed = open_attempt + [ev("attempt_ended", task="1", attempt=1, outcome="crashed",
                                      message="no result", cost_usd=0, duration_s=1,
                                      session_id=None, exit_code=-9)]
    done = [ev("task_done", task="1")]
    return {
        "attempt_ended while pending": ([], ev("attempt_ended", task="1", attempt=1,
                                                outcome="ok")),
        "attempt_ended twice": (ended_failed, ev("attempt_ended", task="1", attempt=1,
                                                 outcome="ok")),
        "attempt_ended for another attempt": (open_attempt, ev("attempt_ended", task="1",
                                                               attempt=2, outcome="ok")),
        "attempt_started while running": (open_attempt, ev("attempt_started", task="1",
                                                           attempt=2, worker=1)),
        "attempt_started from failed": (ended_failed, ev("attempt_started", task="1",
                                                         attempt=2, worker=1)),
        "attempt_started from done": (done, ev("attempt_started", task="1", attempt=1,
                                               worker=1)),
        "attempt_started attempt 0": ([], ev("attempt_started", task="1", attempt=0)),
        "task_done while running": (open_attempt, ev("task_done", task="1")),
        "task_failed while running": (open_attempt, ev("task_failed", task="1", error="x")),
        "task_failed when done": (done, ev("task_failed", task="1", error="x")),
        "retry_scheduled while pending": ([], ev("retry_scheduled", task="1", not_before=1.0)),
        "task_status running": ([], ev("task_status", task="1", status="running")),
        "task_status failed": ([], ev("task_status", task="1", status="failed")),
        "task_status while running": (open_attempt, ev("task_status", task="1",
                                                       status="ready")),
        "done task made ready": (done, ev("task_status", task="1", status="ready")),
        "unknown task": ([], ev("task_done", task="9")),
        "unknown type": ([], ev("task_exploded", task="1")),
        "no t": ([], {"type": "task_done", "task": "1"}),
        "missing field": ([], ev("attempt_started", task="1")),
        "run_ended twice": ([ev("run_ended", status="done", exit_code=0)],
                            ev("run_ended", status="done", exit_code=0)),
        "progress info not a dict": (open_attempt, ev("task_progress", task="1", info=[1])),
    }


@pytest.mark.parametrize("name", sorted(_illegal_cases()))
def test_an_illegal_transition_raises_and_changes_nothing(name):
    before, event = _illegal_cases()[name]
    state, _ = run(*before)
    snapshot = state.to_snapshot()
    with pytest.raises(ValueError):
        state.apply(event)
    assert state.to_snapshot() == snapshot


def test_events_before_a_run_and_out_of_order_seqs_are_refused():
    with pytest.raises(ValueError):
        RunState("demo").apply(ev("run_paused", until=5.0))
    state = RunState()
    state.apply(dict(started(), seq=1))
    with pytest.raises(ValueError, match="seq"):
        state.apply(ev("task_done", task="1", seq=1))
    with pytest.raises(ValueError, match="spec"):
        state.apply(ev("run_started", run_id="r2", spec="other", tasks=[]))


def test_a_new_run_starts_from_a_clean_slate():
    state, _ = run(ev("task_done", task="1"),
                   ev("attempt_started", task="2", attempt=1, worker=0, timeout_s=5),
                   ev("run_ended", status="failed", exit_code=1, reason="stopped"))
    state.apply(started(tasks=[["1", "Create models v2"], ["4", "New task"]], run_id="r2",
                        t=200.0))
    view = state.view()
    assert view["run_id"] == "r2" and view["stop_reason"] is None and view["ended_at"] is None
    assert [(t["id"], t["title"], t["status"], t["attempts"]) for t in view["tasks"]] == \
        [("1", "Create models v2", "pending", 0), ("4", "New task", "pending", 0)]


def _scenario():
    return [
        started(),
        ev("task_status", 100.5, task="1", status="ready"),
        ev("attempt_started", 101, task="1", attempt=1, worker=0, timeout_s=60),
        ev("task_progress", 102, task="1", info={"tool": "Bash", "tokens": 900}),
        ev("attempt_started", 101, task="3", attempt=1, worker=1, timeout_s=60),
        ev("attempt_ended", 120, task="1", attempt=1, outcome="overloaded", message="529",
           cost_usd=0.05, duration_s=19.0, session_id="a", exit_code=1),
        ev("retry_scheduled", 120, task="1", not_before=150.0, reason="backoff"),
        ev("attempt_ended", 125, task="3", attempt=1, outcome="ok", message="",
           cost_usd=0.5, duration_s=24.0, session_id="b", exit_code=0),
        ev("task_done", 125, task="3"),
        ev("task_status", 126, task="2", status="blocked", reason="needs 1"),
        ev("attempt_started", 150, task="1", attempt=2, worker=0, timeout_s=120),
        ev("task_progress", 151, task="1", info={"last_event": "assistant"}),
        ev("run_paused", 152, until=900.0, reason="usage limit"),
    ]


def test_replay_rebuilds_the_live_state_and_progress_stays_live_only():
    live = RunState()
    for event in _scenario():
        live.apply(event)
    assert live.view()["tasks"][0]["progress"] == {"last_event": "assistant"}
    journaled = [e for e in _scenario() if e["type"] != "task_progress"]
    rebuilt = replay(journaled)
    assert rebuilt.to_snapshot() == live.to_snapshot()
    assert rebuilt.tasks == live.tasks     # progress is not part of a record's equality
    assert rebuilt.view()["tasks"][0]["progress"] == {}


def test_progress_is_forgotten_when_the_attempt_ends_and_late_news_is_dropped():
    state, _ = run(ev("attempt_started", task="1", attempt=1, worker=0, timeout_s=5),
                   ev("task_progress", task="1", info={"tool": "Edit", "cost_usd": 0.01}),
                   ev("task_progress", task="1", info={"tokens": 12}))
    assert task(state, "1")["progress"] == {"tool": "Edit", "cost_usd": 0.01, "tokens": 12}
    state.apply(ev("attempt_ended", task="1", attempt=1, outcome="ok", message="",
                   cost_usd=0.02, duration_s=1, session_id="s", exit_code=0))
    state.apply(ev("task_progress", task="1", info={"tool": "late"}))
    assert task(state, "1")["progress"] == {}


def test_the_view_has_the_status_json_shape():
    live = replay([e for e in _scenario()])
    view = live.view(live=True)
    assert {"spec", "run_id", "live", "tasks", "totals", "paused_until",
            "stop_reason"} <= set(view)
    assert view["spec"] == "demo" and view["run_id"] == "r1" and view["live"] is True
    for row in view["tasks"]:
        assert {"id", "title", "status", "attempts", "duration_s", "cost_usd", "error",
                "outcome", "progress"} <= set(row)
        assert row["status"] in STATUSES
    totals = view["totals"]
    assert {"tasks", "done", "failed", "running", "pending", "cost_usd", "duration_s",
            "attempts"} <= set(totals)
    assert (totals["tasks"], totals["done"], totals["running"], totals["blocked"]) == \
        (3, 1, 1, 1)
    assert totals["cost_usd"] == 0.55 and totals["attempts"] == 3
    assert view["paused_until"] == 900.0 and view["pause_reason"] == "usage limit"
    assert sum(totals[s] for s in STATUSES) == totals["tasks"]


def test_recover_interrupted_returns_running_tasks_to_pending_with_the_attempt_counted():
    state, _ = run(ev("attempt_started", task="1", attempt=1, worker=0, timeout_s=5),
                   ev("attempt_started", task="2", attempt=1, worker=1, timeout_s=5),
                   ev("attempt_ended", task="2", attempt=1, outcome="ok", message="",
                      cost_usd=0.1, duration_s=2, session_id="s", exit_code=0))
    events = recover_interrupted(state, now=300.0)
    assert [e["task"] for e in events] == ["1", "2"]
    assert task(state, "1")["status"] == "running"           # nothing changed yet
    for event in events:
        state.apply(event)
    for task_id in ("1", "2"):
        row = task(state, task_id)
        assert (row["status"], row["error"], row["attempts"]) == ("pending", "interrupted", 1)
    assert recover_interrupted(state, now=301.0) == []
    state.apply(ev("attempt_started", 302, task="1", attempt=2, worker=0, timeout_s=5))
    assert task(state, "1")["attempts"] == 2


def test_a_snapshot_round_trips():
    live = replay(_scenario())
    again = RunState.from_snapshot(live.to_snapshot())
    assert again.to_snapshot() == live.to_snapshot()
    assert again.view()["tasks"][0]["progress"] == {}
    assert live.to_snapshot()["format"] == SNAPSHOT_FORMAT


def test_each_snapshot_holds_the_state_as_it_is_then_even_as_tasks_change():
    # A snapshot re-encodes only the tasks that changed since the one before: every
    # snapshot along a run must still be exactly the state's JSON at that moment.
    state = RunState()
    for index, event in enumerate(_scenario() + [started(TASKS[:2], run_id="r2", t=200.0)]):
        state.apply(event)
        raw = encode_snapshot(state, journal_bytes=index)
        body = dict(state.to_snapshot(), journal_bytes=index)
        body["tasks"] = [_without_defaults(entry) for entry in body["tasks"]]
        compact = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        assert raw.startswith(compact[:-1] + b',"sha256":"')
        assert decode_snapshot(raw).to_snapshot() == state.to_snapshot()
    assert [t["id"] for t in json.loads(raw)["tasks"]] == ["1", "2"]   # the new run's


def _without_defaults(entry):
    """A task's snapshot entry as the file holds it: what a new record holds is left out
    (id, title and status are always there)."""
    fresh = RunState.from_snapshot({"format": SNAPSHOT_FORMAT, "tasks": [
        {"id": "x", "title": "x"}]}).to_snapshot()["tasks"][0]
    return {key: value for key, value in entry.items()
            if key in ("id", "title", "status") or value != fresh[key]
            or type(value) is not type(fresh[key])}


def test_a_snapshot_file_leaves_out_default_values_and_any_qw_of_its_format_reads_it():
    # Entries were always allowed to leave fields out (older snapshots lacked the newer
    # ones): the file of a done task is a third smaller, and reads back the same state.
    state, _ = run(ev("attempt_started", 101, task="1", attempt=1, worker=0, timeout_s=5),
                   ev("attempt_ended", 102, task="1", attempt=1, outcome="ok",
                      duration_s=1.0, cost_usd=0.0, peak_rss_mb=12.0, cpu_s=0.0),
                   ev("task_done", 103, task="1"))
    raw = encode_snapshot(state, journal_bytes=7)
    entries = json.loads(raw)["tasks"]
    assert entries[1] == {"id": "2", "title": "Add API", "status": "pending"}
    assert set(entries[0]) == {"id", "title", "status", "attempts", "attempt", "started_at",
                               "ended_at", "duration_s", "outcome", "peak_rss_mb", "cpu_s"}
    again = decode_snapshot(raw)
    assert again.to_snapshot() == state.to_snapshot() and again.journal_bytes == 7
    assert again.view() == state.view()
    # Every field written out, as qw wrote snapshots before, reads the same.
    full = dict(state.to_snapshot())
    assert RunState.from_snapshot(full).to_snapshot() == state.to_snapshot()
    # A zero of another type, or a negative zero, is not the default: it stays.
    odd = dict(state.to_snapshot(), tasks=[dict(full["tasks"][1], attempts=0.0,
                                                cost_usd=-0.0)])
    entry = json.loads(encode_snapshot(RunState.from_snapshot(odd)))["tasks"][0]
    assert entry["attempts"] == 0.0 and isinstance(entry["attempts"], float)
    assert str(entry["cost_usd"]) == "-0.0"


def test_a_snapshot_from_a_newer_qw_is_refused_with_a_message():
    data = dict(replay(_scenario()).to_snapshot(), format=SNAPSHOT_FORMAT + 1)
    with pytest.raises(StateError) as caught:
        RunState.from_snapshot(data, where=".qw/state/demo.json")
    message = str(caught.value)
    assert "newer qw" in message and ".qw/state/demo.json" in message and "upgrade" in message


@pytest.mark.parametrize("data", [
    [], {"spec": "demo"}, {"format": "1"}, {"format": 1, "tasks": [{"title": "no id"}]},
    {"format": 1, "tasks": [{"id": "1", "title": "x", "status": "exploded"}]},
])
def test_a_malformed_snapshot_is_a_state_error(data):
    with pytest.raises(StateError):
        RunState.from_snapshot(data, where="s.json")
