"""qw backup create / list / restore / clean over real .qw/ state and tasks.md."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from runhelpers import held_lock

from qw.backup import BACKUP, CORRUPT, clean, create, list_backups, restore
from qw.errors import LockHeld, StateError, UsageError
from qw.journal import Journal
from qw.statestore import REPAIR, STRICT, StateStore
from qw.reset import reset

BOUND = 20.0
DAY = 86400.0


def ev(kind, t=1.0, **fields):
    return {"type": kind, "t": t, **fields}


def started(spec, run_id):
    return ev("run_started", run_id=run_id, spec=spec, pid=1,
              tasks=[["1", "One"], ["2", "Two"]])


class Repo:
    """Two specs: alpha (run once, task 1 done) and beta (never run)."""

    def __init__(self, root):
        self.root = str(root)
        self.qw = os.path.join(self.root, ".qw")
        for spec in ("alpha", "beta"):
            path = self.tasks(spec)
            path.parent.mkdir(parents=True)
            path.write_text(f"# {spec}\n\n- [ ] 1. One\n- [ ] 2. Two\n")
        self.record("alpha", started("alpha", "r1"), ev("task_done", 2, task="1"))
        self.tasks("alpha").write_text("# alpha\n\n- [x] 1. One\n- [ ] 2. Two\n")

    def tasks(self, spec):
        return Path(self.root, ".claude", "specs", spec, "tasks.md")

    def record(self, spec, *events):
        store = StateStore(self.qw, spec, recover=REPAIR)
        store.load()
        for event in events:
            store.record(event)
        store.close()

    def state(self, spec):
        state = StateStore(self.qw, spec).load()
        return state and state.to_snapshot()

    def picture(self):
        """Everything a restore is meant to bring back."""
        return {spec: (self.state(spec), self.tasks(spec).read_text())
                for spec in ("alpha", "beta")}


@pytest.fixture
def repo(tmp_path):
    return Repo(tmp_path)


@pytest.fixture
def holder(repo):
    with held_lock(os.path.join(repo.qw, "locks", "alpha.lock"), "run-7", BOUND) as proc:
        yield proc


def test_create_copies_what_each_spec_state_loads_from(repo):
    info = create(repo.root, now=1763709480.0)
    assert info.name == "20251121T071800Z" and info.kind == BACKUP
    assert info.specs == ("alpha", "beta") and info.reason == "manual"
    folder = Path(info.path)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["format"] == 1 and manifest["specs"]["alpha"] == {
        "snapshot": "state/alpha.json", "journal": "runs/r1/events.jsonl",
        "tasks": "specs/alpha/tasks.md", "tasks_path": ".claude/specs/alpha/tasks.md"}
    assert manifest["specs"]["beta"]["snapshot"] is None
    assert (folder / "specs" / "alpha" / "tasks.md").read_text() == \
        repo.tasks("alpha").read_text()
    assert (folder / "state" / "alpha.json").read_bytes() == \
        Path(repo.qw, "state", "alpha.json").read_bytes()
    assert [i.name for i in list_backups(repo.root)] == [info.name]
    assert not [n for n in os.listdir(Path(repo.qw, "backups")) if n.startswith(".")]


def test_a_journal_being_written_is_copied_up_to_its_last_whole_line(repo):
    journal = Path(StateStore(repo.qw, "alpha").journal_path("r1"))
    with journal.open("ab") as f:
        f.write(b'{"type":"task_done","t":3,"ta')   # a run mid-append
    info = create(repo.root, "mid-run")
    copied = (Path(info.path) / "runs" / "r1" / "events.jsonl").read_bytes()
    assert copied.endswith(b"\n") and journal.read_bytes().startswith(copied)


def test_create_needs_no_lock(repo, holder):
    assert create(repo.root, "during-a-run").specs == ("alpha", "beta")


@pytest.mark.parametrize("name, problem", [
    ("a/b", "contains a path separator"), ("..\\x", "contains a path separator"),
    ("../up", "contains a path separator"), ("", "is not a valid name"),
    (".hidden", "is not a valid name"), ("x" * 101, "is not a valid name"),
])
def test_bad_names_are_usage_errors(repo, name, problem):
    with pytest.raises(UsageError, match=problem):
        create(repo.root, name)
    assert list_backups(repo.root) == []


def test_a_taken_name_is_a_usage_error_and_default_names_do_not_collide(repo):
    create(repo.root, "mine")
    with pytest.raises(UsageError, match="backup mine already exists"):
        create(repo.root, "mine")
    first, second = create(repo.root, now=1.0e9), create(repo.root, now=1.0e9)
    assert second.name == first.name + "-2"


def test_restore_brings_back_state_and_tasks_md_after_backing_up_the_present(repo):
    then = repo.picture()
    info = create(repo.root, "then")
    # Afterwards: alpha's run goes on, beta runs, tasks.md is edited.
    repo.record("alpha", ev("task_done", 3, task="2"))
    repo.record("beta", started("beta", "r2"), ev("task_done", 4, task="2"))
    repo.tasks("alpha").write_text("# alpha edited\n\n- [x] 1. One\n- [x] 2. Two\n")
    now = repo.picture()
    result = restore(repo.root, "then")
    assert result.backup.name == "then" and result.specs == ("alpha", "beta")
    assert repo.picture() == then
    assert StateStore(repo.qw, "beta", recover=REPAIR).load() is None   # never run, then
    assert result.safety_backup.reason == "before restore then"
    assert result.safety_backup.name.startswith("auto-")
    restore(repo.root, result.safety_backup.name)                       # and back again
    assert repo.picture() == now
    assert info.name in [i.name for i in list_backups(repo.root)]


def test_restore_is_refused_while_a_run_holds_a_spec_lock(repo, holder):
    create(repo.root, "then")
    repo.tasks("beta").write_text("# beta changed\n\n- [ ] 1. One\n")
    before = repo.picture()
    with pytest.raises(LockHeld) as caught:
        restore(repo.root, "then")
    assert "spec alpha is being run by pid" in str(caught.value)
    assert repo.picture() == before                      # beta untouched too
    assert [i.name for i in list_backups(repo.root)] == ["then"]
    assert reset(repo.root, "beta").spec == "beta"   # beta's lock was let go again


def test_a_damaged_backup_is_refused(repo):
    info = create(repo.root, "then")
    (Path(info.path) / "specs" / "alpha" / "tasks.md").write_text("tampered\n")
    before = repo.picture()
    with pytest.raises(StateError, match="backup is damaged .specs/alpha/tasks.md"):
        restore(repo.root, "then")
    assert repo.picture() == before


def test_a_backup_from_a_newer_qw_is_refused(repo):
    info = create(repo.root, "then")
    manifest = Path(info.path) / "manifest.json"
    manifest.write_text(json.dumps(dict(json.loads(manifest.read_text()), format=2)))
    with pytest.raises(StateError, match="newer qw.*upgrade qw"):
        restore(repo.root, "then")


def test_a_manifest_cannot_send_files_outside_the_repository(repo):
    info = create(repo.root, "then")
    manifest = Path(info.path) / "manifest.json"
    data = json.loads(manifest.read_text())
    data["specs"]["alpha"]["tasks_path"] = "../outside.md"
    manifest.write_text(json.dumps(data))
    with pytest.raises(StateError, match="outside the repository"):
        restore(repo.root, "then")
    assert not Path(repo.root).parent.joinpath("outside.md").exists()


def test_restore_of_unknown_names_and_of_set_aside_files(repo):
    with pytest.raises(UsageError, match="no backup named nope"):
        restore(repo.root, "nope")
    Path(repo.qw, "state", "alpha.json").write_bytes(b"{garbage")
    StateStore(repo.qw, "alpha", recover=REPAIR).load()   # sets the damaged file aside
    [aside] = [i for i in list_backups(repo.root) if i.kind == CORRUPT]
    assert aside.name.startswith("corrupt-") and aside.name.endswith("-alpha.json")
    with pytest.raises(UsageError, match="damaged file qw set aside, not a backup"):
        restore(repo.root, aside.name)


def test_clean_removes_what_is_older_than_the_days_given(repo):
    now = time.time()
    for name, age in (("ten", 10), ("five", 5), ("one", 1)):
        info = create(repo.root, name)
        for path in (Path(info.path), Path(info.path) / "manifest.json"):
            os.utime(path, (now - age * DAY, now - age * DAY))
    Path(repo.qw, "state", "beta.json").write_bytes(b"\x00")
    StateStore(repo.qw, "beta", recover=REPAIR).load()
    [aside] = [i for i in list_backups(repo.root) if i.kind == CORRUPT]
    os.utime(aside.path, (now - 20 * DAY, now - 20 * DAY))
    leftover = Path(repo.qw, "backups", ".tmp-dead-1234")   # a create that died
    leftover.mkdir()
    os.utime(leftover, (now - 20 * DAY, now - 20 * DAY))
    assert [i.name for i in list_backups(repo.root)] == [aside.name, "ten", "five", "one"]
    assert clean(repo.root, 3, now=now) == [aside.name, "ten", "five"]
    assert [i.name for i in list_backups(repo.root)] == ["one"]
    assert not leftover.exists()
    assert clean(repo.root, 3, now=now) == []


@pytest.mark.parametrize("days", [-1, "3", float("nan"), True])
def test_clean_wants_a_number_of_days(repo, days):
    with pytest.raises(UsageError, match="days must be a number >= 0"):
        clean(repo.root, days)


def test_nothing_backed_up_yet(tmp_path):
    assert list_backups(str(tmp_path)) == [] and clean(str(tmp_path), 0) == []


def test_the_restored_journal_and_snapshot_load_without_a_warning(repo):
    create(repo.root, "then")
    Path(repo.qw, "state", "alpha.json").unlink()
    restore(repo.root, "then")
    store = StateStore(repo.qw, "alpha", recover=REPAIR)
    assert store.load().tasks["1"].status == "done" and store.warnings == []
    assert len(Journal.read(store.journal_path("r1"))) == 2
    assert StateStore(repo.qw, "alpha", recover=STRICT).load() is not None
