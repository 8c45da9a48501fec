"""Damaged state: detected on load, set aside, rebuilt from the journal and tasks.md;
a newer qw's files refused and kept; a full disk reported without breaking anything."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import subprocess
import time

import pytest

from qw.errors import StateError
from qw.journal import Journal
from qw.statestore import IN_MEMORY, REPAIR, STRICT, StateStore
from qw.state import replay
from qw.stateowner import start_owner

TASKS_MD = "# Tasks\n\n- [ ] 1. First\n- [ ] 2. Second\n- [ ] 3. Third\n- [ ] 4. Fourth\n"


def ev(kind, t=1.0, **fields):
    return {"type": kind, "t": t, **fields}


def history(run_id="r1"):
    """A run that got somewhere: 1 done, 2 failed, 3 done, 4 running."""
    return [
        ev("run_started", run_id=run_id, spec="demo", pid=1,
           tasks=[["1", "First"], ["2", "Second"], ["3", "Third"], ["4", "Fourth"]]),
        ev("attempt_started", 2, task="1", attempt=1, worker=0, timeout_s=60),
        ev("attempt_ended", 3, task="1", attempt=1, outcome="ok", message="", cost_usd=0.5,
           duration_s=1.0, session_id="s1", exit_code=0),
        ev("task_done", 3, task="1"),
        ev("attempt_started", 4, task="2", attempt=1, worker=0, timeout_s=60),
        ev("attempt_ended", 5, task="2", attempt=1, outcome="error", message="boom",
           cost_usd=0.1, duration_s=1.0, session_id="s2", exit_code=1),
        ev("task_failed", 5, task="2", error="boom"),
        ev("attempt_started", 6, task="3", attempt=1, worker=1, timeout_s=60),
        ev("attempt_ended", 7, task="3", attempt=1, outcome="ok", message="", cost_usd=0.2,
           duration_s=1.0, session_id="s3", exit_code=0),
        ev("task_done", 7, task="3"),
        ev("attempt_started", 8, task="4", attempt=1, worker=1, timeout_s=60),
    ]


class Repo:
    """A repository with spec demo and the state a run of `history()` left."""

    def __init__(self, root, snapshot_interval=3600.0):
        self.root = str(root)
        self.qw = os.path.join(self.root, ".qw")
        self.tasks = os.path.join(self.root, ".claude", "specs", "demo", "tasks.md")
        os.makedirs(os.path.dirname(self.tasks))
        with open(self.tasks, "w") as f:
            f.write(TASKS_MD.replace("[ ] 1.", "[x] 1.").replace("[ ] 3.", "[x] 3."))
        store = self.store(REPAIR, snapshot_interval=snapshot_interval)
        store.load()
        for event in history():
            store.record(event)
        store.close()
        self.truth = store.state.to_snapshot()
        self.snapshot = store.snapshot_path
        self.journal = store.journal_path("r1")

    def store(self, mode, **kwargs):
        return StateStore(self.qw, "demo", recover=mode, tasks_path=self.tasks, **kwargs)

    def read(self, path):
        with open(path, "rb") as f:
            return f.read()

    def write(self, path, data):
        with open(path, "wb") as f:
            f.write(data)

    def set_aside(self):
        folder = os.path.join(self.qw, "backups")
        return sorted(os.listdir(folder)) if os.path.isdir(folder) else []

    def statuses(self, state):
        return {rec.id: rec.status for rec in state.tasks.values()}


@pytest.fixture
def repo(tmp_path):
    return Repo(tmp_path)


def loads_quietly(repo):
    """A second load after a repair: no warning, the same state."""
    store = repo.store(REPAIR)
    state = store.load()
    assert store.warnings == []
    return state


# ----- what is on disk


def test_sound_state_carries_checksums_and_loads_without_a_warning(repo):
    snapshot = json.loads(repo.read(repo.snapshot))
    assert snapshot["format"] == 1 and len(snapshot["sha256"]) == 64
    lines = repo.read(repo.journal).splitlines()
    assert json.loads(lines[0])["journal"] == "qw" and json.loads(lines[0])["spec"] == "demo"
    assert all(b',"c":' in line for line in lines)
    store = repo.store(REPAIR)
    assert store.load().to_snapshot() == repo.truth
    assert store.warnings == [] and repo.set_aside() == []


def test_journal_lines_written_without_checksums_still_load(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"type":"a","t":1}\n{"type":"b","t":2}\n')
    assert [e["type"] for e in Journal.read(str(path))] == ["a", "b"]


# ----- a damaged snapshot


@pytest.mark.parametrize("damage, reason", [
    (lambda raw: raw[:len(raw) // 2], "not valid JSON"),                     # truncated
    (lambda raw: bytes(random.Random(1).randrange(256) for _ in raw), "not valid JSON"),
    (lambda raw: b"", "empty file"),
    (lambda raw: raw.replace(b'"status":"failed"', b'"status":"done"'), "checksum mismatch"),
])
def test_a_damaged_snapshot_is_set_aside_and_rebuilt_from_the_journal(repo, damage, reason):
    bad = damage(repo.read(repo.snapshot))
    repo.write(repo.snapshot, bad)
    store = repo.store(REPAIR)
    state = store.load()
    assert state.to_snapshot() == repo.truth
    assert len(store.warnings) == 1
    warning = store.warnings[0]
    assert reason in warning and ".qw/state/demo.json" in warning and "rebuilt" in warning
    [aside] = repo.set_aside()
    assert aside.startswith("corrupt-") and aside.endswith("-demo.json")
    assert repo.read(os.path.join(repo.qw, "backups", aside)) == bad
    assert loads_quietly(repo).to_snapshot() == repo.truth


def test_strict_mode_names_a_damaged_snapshot_and_what_to_do(repo):
    repo.write(repo.snapshot, b"{half")
    with pytest.raises(StateError) as caught:
        repo.store(STRICT).load()
    message = str(caught.value)
    assert "damaged" in message and repo.snapshot in message and "qw reset" in message


def test_in_memory_mode_rebuilds_but_touches_no_file(repo):
    repo.write(repo.snapshot, b"garbage")
    store = repo.store(IN_MEMORY)
    assert store.load().to_snapshot() == repo.truth
    assert "qw reset demo" in store.warnings[0]
    assert repo.read(repo.snapshot) == b"garbage" and repo.set_aside() == []
    with pytest.raises(ValueError, match="read-only"):
        store.record(ev("task_done", task="2"))


def test_a_missing_snapshot_is_rebuilt_from_the_spec_newest_journal(repo):
    os.remove(repo.snapshot)
    # An older run of the same spec, and a newer run of another spec: neither is chosen.
    other = StateStore(repo.qw, "other")
    other.load()
    other.record(dict(history("r9")[0], spec="other"))
    other.close()
    store = repo.store(REPAIR)
    assert store.load().to_snapshot() == repo.truth
    assert "demo.json: missing" in store.warnings[0]
    assert loads_quietly(repo).to_snapshot() == repo.truth


def test_damaged_snapshot_and_no_journal_leaves_nothing_to_rebuild(repo):
    os.remove(repo.journal)
    repo.write(repo.snapshot, b"\x00\x01")
    store = repo.store(REPAIR)
    assert store.load() is None
    assert "nothing to rebuild" in store.warnings[0] and len(repo.set_aside()) == 1
    assert loads_quietly(repo) is None


def test_a_journal_without_a_run_is_not_rebuilt_from_twice(repo):
    os.remove(repo.snapshot)
    lines = repo.read(repo.journal).splitlines(keepends=True)
    repo.write(repo.journal, lines[0] + b"garbage\n")   # the header, then nothing usable
    store = repo.store(REPAIR)
    assert store.load() is None and "nothing to rebuild" in store.warnings[0]
    assert loads_quietly(repo) is None


# ----- a damaged journal


def test_a_torn_last_line_is_dropped_and_tasks_md_restores_what_it_lost(tmp_path):
    repo = Repo(tmp_path)
    os.remove(repo.snapshot)                       # rebuild from the journal alone
    lines = repo.read(repo.journal).splitlines(keepends=True)
    # The run died writing task_done for 3, which it had already ticked in tasks.md.
    repo.write(repo.journal, b"".join(lines[:-2]) + lines[-2][:15])
    store = repo.store(REPAIR)
    state = store.load()
    assert store.torn == lines[-2][:15]
    assert repo.statuses(state) == {"1": "done", "2": "failed", "3": "done", "4": "pending"}
    assert "torn last line" in store.warnings[0]
    assert repo.read(repo.journal) == b"".join(lines[:-2])   # whole lines again
    assert any(n.endswith("r1-events.jsonl") for n in repo.set_aside())
    assert loads_quietly(repo).to_snapshot() == state.to_snapshot()


def test_a_torn_last_line_in_strict_mode_is_skipped_with_a_warning(repo):
    with open(repo.journal, "ab") as f:
        f.write(b'{"type":"task_done","t":9,"ta')
    store = repo.store(STRICT)
    assert store.load().to_snapshot() == repo.truth
    assert store.torn and "torn last line" in store.warnings[0]


@pytest.mark.parametrize("garble", [
    lambda line: line.replace(b'"task":"3"', b'"task":"9"'),   # fails its checksum
    lambda line: b"\x00" * len(line),                          # not JSON at all
])
def test_the_journal_is_trusted_up_to_its_first_bad_line(tmp_path, garble):
    repo = Repo(tmp_path)
    os.remove(repo.snapshot)
    lines = repo.read(repo.journal).splitlines(keepends=True)
    bad = 9   # line 9 (the header is line 1): attempt_started of task 3
    assert b'"attempt_started"' in lines[bad - 1] and b'"task":"3"' in lines[bad - 1]
    lines[bad - 1] = garble(lines[bad - 1][:-1]) + b"\n"
    repo.write(repo.journal, b"".join(lines))
    store = repo.store(REPAIR)
    state = store.load()
    # Lines 9 on are not trusted (they may depend on line 9): 3 is done because tasks.md
    # says so, 4 never started as far as qw knows.
    assert repo.statuses(state) == {"1": "done", "2": "failed", "3": "done", "4": "pending"}
    assert state.tasks["3"].attempts == 0
    assert f".qw/runs/r1/events.jsonl:{bad}:" in store.warnings[0]
    assert repo.read(repo.journal) == b"".join(lines[:bad - 1])
    assert loads_quietly(repo).to_snapshot() == state.to_snapshot()


def test_strict_mode_names_the_bad_journal_line(repo):
    lines = repo.read(repo.journal).splitlines(keepends=True)
    lines[-1] = lines[-1].replace(b'"worker":1', b'"worker":2')
    repo.write(repo.journal, b"".join(lines))
    os.remove(repo.snapshot)
    repo.write(repo.snapshot, json.dumps({"format": 1, "spec": "demo", "run_id": "r1",
                                          "seq": 0, "tasks": []}).encode())
    with pytest.raises(StateError, match=f"checksum mismatch.*events.jsonl:{len(lines)}"):
        repo.store(STRICT).load()


# ----- a newer qw's files


def test_a_newer_snapshot_is_refused_in_every_mode_and_kept(repo):
    newer = json.dumps({"format": 7, "spec": "demo", "what": "new"}).encode()
    repo.write(repo.snapshot, newer)
    for mode in (STRICT, IN_MEMORY, REPAIR):
        store = repo.store(mode)
        with pytest.raises(StateError) as caught:
            store.load()
        message = str(caught.value)
        assert "newer qw" in message and "format 7" in message and "upgrade qw" in message
        assert repo.snapshot in message
        if mode != IN_MEMORY:   # (read-only anyway)
            with pytest.raises(StateError, match="newer qw"):
                store.record(history("r2")[0])
    assert repo.read(repo.snapshot) == newer and repo.set_aside() == []


def test_a_newer_journal_is_refused_and_kept(repo):
    lines = repo.read(repo.journal).splitlines(keepends=True)
    header = b'{"journal":"qw","format":3,"spec":"demo","run_id":"r1"}\n'
    damaged = header + b"".join(lines[1:]) + b'{"torn'
    repo.write(repo.journal, damaged)
    for mode in (STRICT, IN_MEMORY, REPAIR):
        with pytest.raises(StateError, match="run journal was written by a newer qw"):
            repo.store(mode).load()
    with pytest.raises(StateError, match="newer qw"):
        Journal(repo.journal)                     # opening it to append: refused too
    assert repo.read(repo.journal) == damaged and repo.set_aside() == []


# ----- random damage


def test_random_damage_is_detected_and_recovered_without_losing_a_finished_task(tmp_path):
    rng = random.Random(20251121)
    done_in_truth = {"1", "3"}
    for round_ in range(40):
        repo = Repo(tmp_path / str(round_), snapshot_interval=rng.choice([0.0, 3600.0]))
        target = rng.choice([repo.snapshot, repo.journal])
        data = bytearray(repo.read(target))
        how = rng.choice(["truncate", "flip", "zero"])
        if how == "truncate":
            data = data[:rng.randrange(len(data))]
        elif how == "flip":
            for _ in range(rng.randint(1, 3)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        else:
            start = rng.randrange(len(data))
            data[start:start + 64] = bytes(len(data[start:start + 64]))
        repo.write(target, bytes(data))
        store = repo.store(REPAIR)
        try:
            state = store.load()
        except StateError as exc:
            # A flipped format digit reads as a newer qw's file: refused, never destroyed.
            assert "newer qw" in str(exc) and repo.read(target) == bytes(data), how
            continue
        context = f"round {round_}: {how} {os.path.basename(target)}: {store.warnings}"
        if not store.warnings:   # only a cut at a line's end looks like a run that died there
            assert how == "truncate" and target == repo.journal and data.endswith(b"\n"), \
                context
        if state is not None:
            statuses = repo.statuses(state)
            assert done_in_truth <= {t for t, s in statuses.items() if s == "done"}, context
            assert statuses.get("2") != "done" and statuses.get("4") != "done", context
        again = loads_quietly(repo)
        assert (again and again.to_snapshot()) == (state and state.to_snapshot()), context
        store.record(history("r2")[0])           # and the next run can start
        store.close()


# ----- a full disk


def test_a_disk_full_append_leaves_no_half_line_and_no_half_applied_event(repo):
    room = {"left": None}

    def filling_disk(fd, data):
        if room["left"] is None:
            return os.write(fd, data)
        if room["left"] == 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = os.write(fd, bytes(data[:room["left"]]))
        room["left"] -= n
        return n

    store = repo.store(REPAIR, journal_write=filling_disk)
    store.load()
    snapshot_before = repo.read(repo.snapshot)
    room["left"] = 10                              # the disk fills 10 bytes into the line
    with pytest.raises(StateError) as caught:
        store.record(ev("task_done", 9, task="2"))
    assert str(caught.value) == f"disk full writing {repo.journal}; free space and run again"
    assert store.state.to_snapshot() == repo.truth            # not applied either
    assert repo.read(repo.journal).endswith(b"\n")
    assert repo.read(repo.snapshot) == snapshot_before
    fresh = repo.store(REPAIR)
    assert fresh.load().to_snapshot() == repo.truth and fresh.warnings == []
    room["left"] = None                            # space freed: the same event goes in
    store.record(ev("task_status", 9, task="2", status="pending"))
    store.close()
    assert repo.store(REPAIR).load().tasks["2"].status == "pending"


def test_a_disk_full_snapshot_write_keeps_the_old_snapshot_and_says_so(repo):
    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    store = repo.store(REPAIR, write_file=full, snapshot_interval=0.0)
    store.load()
    before = repo.read(repo.snapshot)
    store.record(ev("task_status", 9, task="2", status="pending"))   # journaled: no error
    with pytest.raises(StateError, match="disk full writing .*demo.json; free space"):
        store.flush()
    assert repo.read(repo.snapshot) == before
    assert repo.store(REPAIR).load().tasks["2"].status == "pending"  # from the journal


@pytest.fixture
def tiny_disk(tmp_path):
    """A 256 KiB tmpfs (root on Linux only)."""
    if os.name != "posix" or os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root on Linux")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                          capture_output=True, timeout=30)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode(errors='replace').strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


def test_a_real_full_disk_stops_the_journal_cleanly(tiny_disk):
    repo = Repo(tiny_disk)
    store = repo.store(REPAIR)
    state = store.load()
    filler = os.path.join(str(tiny_disk), "filler")
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"x" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    with pytest.raises(StateError) as caught:
        for n in range(10000):   # until the journal's last block is full
            store.record(ev("run_paused", 10 + n, until=None))
    assert str(caught.value) == f"disk full writing {repo.journal}; free space and run again"
    recorded = store.state.to_snapshot()
    assert repo.read(repo.journal).endswith(b"\n")
    fresh = repo.store(REPAIR)
    assert fresh.load().to_snapshot() == recorded and fresh.warnings == []
    assert state is store.state
    os.remove(filler)
    store.record(ev("run_ended", 20000, status="failed", exit_code=1))
    store.close()
    assert repo.store(REPAIR).load().run_status == "failed"


# ----- the state owner


def test_the_state_owner_repairs_damaged_state_and_passes_on_one_warning(repo):
    repo.write(repo.snapshot, b"{not json")
    handle = start_owner(repo.qw, "demo", "r2", [dict(history("r2")[0], t=time.time())],
                         tasks_path=repo.tasks)
    try:
        assert len(handle.warnings) == 1 and "demo.json" in handle.warnings[0]
        handle.proxy.record(ev("task_done", time.time(), task="1"))
    finally:
        handle.shutdown()
    state = repo.store(REPAIR).load()
    assert state.run_id == "r2" and state.tasks["1"].status == "done"
    assert len(repo.set_aside()) == 1


def test_replay_of_a_reset_matches_the_live_state(repo):
    store = repo.store(REPAIR)
    store.load()
    store.record(ev("task_status", 9, task="4", status="pending", reason="interrupted"))
    store.record(ev("task_reset", 10, task="2"))
    store.record(ev("task_reset", 10, task="1", hard=True))
    store.close()
    events = Journal.read(repo.journal)
    assert replay(events).to_snapshot() == store.state.to_snapshot()
    rec = store.state.tasks["2"]
    assert (rec.status, rec.attempts, rec.error, rec.cost_usd) == ("pending", 0, None, 0.1)
