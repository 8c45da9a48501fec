"""qw reset: soft, --hard, --uncheck, --task; an automatic backup first; refused under a
run's lock (held by another process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runhelpers import held_lock

from qw.backup import list_backups, restore
from qw.errors import LockHeld, UsageError
from qw.journal import Journal
from qw.statestore import IN_MEMORY, REPAIR, STRICT, StateStore
from qw.reset import reset
from qw.stateowner import live_pointer_path, owner_path

BOUND = 20.0

TASKS_MD = """# Tasks

Some notes that are not tasks.

- [x] 1. First
  - File: src/one.py
- [ ] 2. Second
- [x] 3. Group
  - [x] 3.1 Sub one
  - [x] 3.2 Sub two
- [ ] 4. Fourth
- [~] 5. Fifth, blocked by hand
- [ ] 6. Sixth
"""


def ev(kind, t=1.0, **fields):
    return {"type": kind, "t": t, **fields}


def attempt(task, t, outcome="ok"):
    return [ev("attempt_started", t, task=task, attempt=1, worker=0, timeout_s=60),
            ev("attempt_ended", t + 1, task=task, attempt=1, outcome=outcome,
               message="" if outcome == "ok" else "it broke", cost_usd=0.25, duration_s=1.0,
               session_id="s", exit_code=0)]


def a_run():
    """A run that died: 1, 3.1, 3.2 done; 2 failed; 6 skipped; 4 running."""
    return ([ev("run_started", run_id="r1", spec="demo", pid=1,
                tasks=[["1", "First"], ["2", "Second"], ["3.1", "Sub one"], ["3.2", "Sub two"],
                       ["4", "Fourth"], ["5", "Fifth"], ["6", "Sixth"]])]
            + attempt("1", 2) + [ev("task_done", 3, task="1")]
            + attempt("2", 4, "error") + [ev("task_failed", 5, task="2", error="it broke")]
            + attempt("3.1", 6) + [ev("task_done", 7, task="3.1")]
            + attempt("3.2", 8) + [ev("task_done", 9, task="3.2")]
            + [ev("task_status", 9, task="6", status="skipped", reason="needs 2, which failed"),
               ev("attempt_started", 10, task="4", attempt=1, worker=1, timeout_s=60)])


class Repo:
    def __init__(self, root):
        self.root = str(root)
        self.qw = os.path.join(self.root, ".qw")
        self.tasks = Path(self.root, ".claude", "specs", "demo", "tasks.md")
        self.tasks.parent.mkdir(parents=True)
        self.tasks.write_text(TASKS_MD)
        store = StateStore(self.qw, "demo", recover=REPAIR)
        store.load()
        for event in a_run():
            store.record(event)
        store.close()
        self.transcript = Path(store.journal_path("r1")).with_name("4.1.jsonl")
        self.transcript.write_text('{"type":"system"}\n')

    def state(self, mode=STRICT):
        return StateStore(self.qw, "demo", recover=mode).load()

    def statuses(self):
        return {r.id: (r.status, r.attempts) for r in self.state().tasks.values()}

    def snapshot_bytes(self):
        return Path(self.qw, "state", "demo.json").read_bytes()


@pytest.fixture
def repo(tmp_path):
    return Repo(tmp_path)


@pytest.fixture
def holder(repo):
    """Another process holding the spec's lock, as a run would."""
    with held_lock(os.path.join(repo.qw, "locks", "demo.lock"), "run-7", BOUND) as proc:
        yield proc


def test_soft_reset_returns_failed_interrupted_and_skipped_tasks_to_pending(repo):
    before = repo.snapshot_bytes()
    result = reset(repo.root, "demo")
    assert result.reset == ("2", "4", "6") and not result.forgot and result.unchecked == ()
    assert repo.statuses() == {"1": ("done", 1), "2": ("pending", 0), "3.1": ("done", 1),
                               "3.2": ("done", 1), "4": ("pending", 0), "5": ("pending", 0),
                               "6": ("pending", 0)}
    rec = repo.state().tasks["2"]
    assert rec.error is None and rec.cost_usd == 0.25   # spent money stays on the record
    # Recorded as events, so a replay of the journal agrees with the snapshot.
    events = Journal.read(StateStore(repo.qw, "demo").journal_path("r1"))
    assert [e["task"] for e in events if e["type"] == "task_reset"] == ["2", "4", "6"]
    assert repo.tasks.read_text() == TASKS_MD
    # The automatic backup holds the state as it was before.
    [backup] = list_backups(repo.root)
    assert backup.name == result.backup and backup.specs == ("demo",)
    assert backup.reason == "before reset demo"
    assert Path(backup.path, "state", "demo.json").read_bytes() == before


def test_a_reset_with_nothing_to_do_changes_nothing_and_takes_no_backup(repo):
    reset(repo.root, "demo")
    before = repo.snapshot_bytes()
    again = reset(repo.root, "demo")
    assert again.reset == () and again.backup is None and not again.changed
    assert repo.snapshot_bytes() == before and len(list_backups(repo.root)) == 1


def test_soft_reset_of_one_task(repo):
    result = reset(repo.root, "demo", task="2")
    assert result.reset == ("2",)
    statuses = repo.statuses()
    assert statuses["2"] == ("pending", 0) and statuses["6"] == ("skipped", 0)
    assert statuses["4"] == ("running", 1)     # not asked for: left as the run left it


def test_hard_reset_forgets_the_state_but_keeps_history_and_tasks_md(repo):
    result = reset(repo.root, "demo", hard=True)
    assert result.forgot and result.backup and result.unchecked == ()
    for mode in (STRICT, IN_MEMORY, REPAIR):   # the journal is not taken for state to rebuild
        assert repo.state(mode) is None
    assert os.path.exists(StateStore(repo.qw, "demo").journal_path("r1"))
    assert repo.transcript.exists()
    assert repo.tasks.read_text() == TASKS_MD
    # The next run starts from a clean slate and its seqs keep rising.
    store = StateStore(repo.qw, "demo")
    store.load()
    store.record(dict(a_run()[0], run_id="r2"))
    store.close()
    assert [e["seq"] for e in Journal.read(store.journal_path("r2"))] == [len(a_run()) + 1]


def test_hard_reset_with_uncheck_unticks_qw_marks_and_keeps_every_other_byte(repo):
    result = reset(repo.root, "demo", hard=True, uncheck=True)
    assert result.unchecked == ("1", "3", "3.1", "3.2")
    assert repo.tasks.read_text() == TASKS_MD.replace("[x]", "[ ]")   # the [~] stays
    assert repo.state() is None


def test_hard_reset_of_one_subtask_unticks_it_and_its_group(repo):
    result = reset(repo.root, "demo", hard=True, uncheck=True, task="3.1")
    assert result.reset == ("3.1",) and result.unchecked == ("3.1", "3")
    assert repo.tasks.read_text() == TASKS_MD.replace("[x] 3. Group", "[ ] 3. Group") \
        .replace("[x] 3.1", "[ ] 3.1")
    rec = repo.state().tasks["3.1"]
    assert (rec.status, rec.attempts, rec.cost_usd) == ("pending", 0, 0.0)
    assert repo.statuses()["1"] == ("done", 1)


def test_hard_reset_of_a_group_covers_its_subtasks(repo):
    result = reset(repo.root, "demo", hard=True, uncheck=True, task="3")
    assert result.reset == ("3.1", "3.2") and result.unchecked == ("3", "3.1", "3.2")
    assert "[x] 1. First" in repo.tasks.read_text()


def test_hard_reset_clears_a_dead_run_live_pointer(repo):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(BOUND)
    Path(live_pointer_path(repo.qw, "demo")).write_text(json.dumps({"run_id": "r1"}))
    Path(owner_path(repo.qw, "r1")).write_text(json.dumps({"pid": dead.pid}))
    reset(repo.root, "demo", hard=True)
    assert not os.path.exists(live_pointer_path(repo.qw, "demo"))
    assert not os.path.exists(owner_path(repo.qw, "r1"))


def test_a_state_owner_still_alive_stops_the_reset(repo):
    Path(live_pointer_path(repo.qw, "demo")).write_text(json.dumps({"run_id": "r1"}))
    Path(owner_path(repo.qw, "r1")).write_text(json.dumps({"pid": os.getppid()}))
    with pytest.raises(LockHeld, match="still writing"):
        reset(repo.root, "demo", hard=True)
    assert repo.state() is not None and list_backups(repo.root) == []


@pytest.mark.parametrize("kwargs, message", [
    ({"uncheck": True}, "--uncheck needs --hard"),
    ({"task": "9"}, "spec has no task 9"),
])
def test_bad_requests_are_usage_errors(repo, kwargs, message):
    with pytest.raises(UsageError, match=message):
        reset(repo.root, "demo", **kwargs)


def test_an_unknown_spec_is_a_usage_error(repo):
    with pytest.raises(UsageError, match="unknown spec 'nope'"):
        reset(repo.root, "nope")


def test_reset_is_refused_while_a_run_holds_the_lock(repo, holder):
    before = repo.snapshot_bytes()
    with pytest.raises(LockHeld) as caught:
        reset(repo.root, "demo", hard=True, uncheck=True)
    assert str(holder.pid) in str(caught.value)
    assert repo.snapshot_bytes() == before and repo.tasks.read_text() == TASKS_MD
    assert list_backups(repo.root) == []


def test_reset_repairs_damaged_state_and_says_so(repo):
    Path(repo.qw, "state", "demo.json").write_bytes(b"{cut sh")
    result = reset(repo.root, "demo")
    assert len(result.warnings) == 1 and "demo.json" in result.warnings[0]
    assert result.reset == ("2", "4", "6")
    assert repo.statuses()["2"] == ("pending", 0)


def test_restoring_the_automatic_backup_undoes_a_reset(repo):
    before = repo.state().to_snapshot()
    result = reset(repo.root, "demo", hard=True, uncheck=True)
    restore(repo.root, result.backup)
    assert repo.state().to_snapshot() == before
    assert repo.tasks.read_text() == TASKS_MD
