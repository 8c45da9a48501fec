"""qw.journal and qw.statestore: atomic writes, the append-only journal, and the snapshot +
journal store."""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from qw.errors import StateError
from qw.journal import Journal, atomic_write, encode_line, new_run_id
from qw.statestore import IN_MEMORY, STRICT, StateStore
from qw.state import replay

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def leftovers(directory):
    return [name for name in os.listdir(directory) if name.endswith(".tmp")]


# ----- atomic_write


def test_atomic_write_creates_and_replaces(tmp_path):
    path = tmp_path / "tasks.md"
    atomic_write(str(path), b"one")
    atomic_write(str(path), b"two")
    assert path.read_bytes() == b"two"
    assert leftovers(tmp_path) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_atomic_write_keeps_an_existing_mode_and_sets_a_requested_one(tmp_path):
    kept = tmp_path / "tasks.md"
    kept.write_bytes(b"old")
    os.chmod(kept, 0o640)
    atomic_write(str(kept), b"new")
    assert stat.S_IMODE(os.stat(kept).st_mode) == 0o640
    secret = tmp_path / "owner.json"
    atomic_write(str(secret), b"{}", mode=0o600)
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600


def test_atomic_write_that_cannot_replace_leaves_the_target_alone(tmp_path):
    # A directory in the way: os.replace fails after the data was written.
    target = tmp_path / "state.json"
    target.mkdir()
    (target / "keep").write_text("kept")
    with pytest.raises(OSError):
        atomic_write(str(target), b"new")
    assert (target / "keep").read_text() == "kept"
    assert leftovers(tmp_path) == []


def test_atomic_write_interrupted_before_replace_keeps_the_old_content(tmp_path, monkeypatch):
    path = tmp_path / "tasks.md"
    path.write_bytes(b"old content")

    def interrupted(src, dst):
        raise KeyboardInterrupt   # Ctrl-C between writing the temp file and renaming it

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(path), b"new content")
    monkeypatch.undo()
    assert path.read_bytes() == b"old content"
    assert leftovers(tmp_path) == []


# ----- Journal


def test_journal_lines_round_trip_one_event_per_line(tmp_path):
    path = str(tmp_path / "runs" / "r1" / "events.jsonl")
    journal = Journal(path)
    events = [{"type": "a", "t": 1.0, "message": "two\nlines and ünïcode"},
              {"type": "run_ended", "t": 2, "status": "done", "exit_code": 0}]
    for event in events:
        journal.append(event)
    journal.close()
    with open(path, "rb") as f:
        assert f.read().count(b"\n") == 2
    read = Journal.read(path)
    assert list(read) == events and read.torn is None


def test_a_torn_last_line_is_skipped_reported_and_cut_before_the_next_append(tmp_path):
    path = str(tmp_path / "events.jsonl")
    journal = Journal(path)
    journal.append({"type": "a", "t": 1, "seq": 1})
    journal.close()
    with open(path, "ab") as f:
        f.write(b'{"type":"b","t":2,"se')        # a writer died mid-line
    read = Journal.read(path)
    assert list(read) == [{"type": "a", "t": 1, "seq": 1}]
    assert read.torn == b'{"type":"b","t":2,"se'
    journal = Journal(path)
    journal.append({"type": "c", "t": 3, "seq": 2})
    journal.close()
    read = Journal.read(path)
    assert [e["type"] for e in read] == ["a", "c"] and read.torn is None


def test_a_bad_line_inside_the_journal_names_its_line(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"type":"a","t":1}\nnot json\n{"type":"b","t":2}\n')
    with pytest.raises(StateError, match=re.escape(f"{path}:2")):
        Journal.read(str(path))


WRITER = r"""
import sys
from qw.journal import Journal
journal = Journal(sys.argv[1])
seq = 0
while True:
    seq += 1
    journal.append({"type": "x", "t": 0, "seq": seq, "pad": "p" * (seq % 5000)})
    if seq == 200:
        print("going", flush=True)
"""


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_a_writer_killed_mid_stream_leaves_a_readable_journal(tmp_path):
    path = str(tmp_path / "events.jsonl")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, path], stdout=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=REPO))
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            assert sel.select(timeout=30), "the writer did not start within 30 s"
        assert proc.stdout.readline() == b"going\n"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
    events = Journal.read(path)
    assert len(events) >= 200
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))


# ----- StateStore


def run_started(run_id="r1", tasks=(("1", "One"), ("2", "Two"))):
    return {"type": "run_started", "t": 1.0, "run_id": run_id, "spec": "demo",
            "tasks": [list(t) for t in tasks], "pid": 1}


def some_events():
    return [
        run_started(),
        {"type": "attempt_started", "t": 2.0, "task": "1", "attempt": 1, "worker": 0,
         "timeout_s": 60},
        {"type": "attempt_ended", "t": 3.0, "task": "1", "attempt": 1, "outcome": "ok",
         "message": "", "cost_usd": 0.5, "duration_s": 1.0, "session_id": "s", "exit_code": 0},
        {"type": "task_done", "t": 3.0, "task": "1"},
        {"type": "attempt_started", "t": 4.0, "task": "2", "attempt": 1, "worker": 1,
         "timeout_s": 60},
    ]


class Ticks:
    """A clock that moves `step` seconds each time it is read."""

    def __init__(self, step):
        self.now, self.step = 0.0, step

    def __call__(self):
        self.now += self.step
        return self.now


class CountingWrites:
    def __init__(self):
        self.paths = []

    def __call__(self, path, data):
        self.paths.append(path)
        atomic_write(path, data)


def test_nothing_stored_loads_as_none(tmp_path):
    assert StateStore(str(tmp_path / ".qw"), "demo").load() is None


def test_load_is_the_snapshot_plus_the_journal_it_has_not_seen(tmp_path):
    qw = str(tmp_path / ".qw")
    store = StateStore(qw, "demo", snapshot_interval=3600.0)   # no snapshot after run_started
    store.load()
    for event in some_events():
        store.record(event)
    with open(store.snapshot_path) as f:
        assert json.load(f)["seq"] == 1                       # the snapshot is behind...
    loaded = StateStore(qw, "demo").load()                    # ...the journal is not
    assert loaded.to_snapshot() == store.state.to_snapshot()
    assert loaded.view()["tasks"][1]["status"] == "running"
    assert loaded.to_snapshot() == replay(some_events()).to_snapshot() | {"seq": 5}


def test_events_already_in_the_snapshot_are_not_applied_twice(tmp_path):
    qw = str(tmp_path / ".qw")
    store = StateStore(qw, "demo", snapshot_interval=0.0)     # a snapshot after every event
    store.load()
    for event in some_events()[:3]:
        store.record(event)
    store.record({"type": "task_done", "t": 5.0, "task": "1"})
    assert StateStore(qw, "demo").load().to_snapshot() == store.state.to_snapshot()


def snapshot_with_tail(tmp_path):
    """A store (still open: closing it would write a newer snapshot) whose snapshot covers the first three events and whose journal holds
    two more: the qw dir, the store, the journal's path and bytes, and the snapshot's
    journal_bytes."""
    qw = str(tmp_path / ".qw")
    store = StateStore(qw, "demo", snapshot_interval=3600.0)
    store.load()
    for event in some_events()[:3]:
        store.record(event)
    store.flush()                         # the snapshot, now; none for what follows
    for event in some_events()[3:]:
        store.record(event)
    with open(store.snapshot_path) as f:
        covered = json.load(f)["journal_bytes"]
    path = Path(store.journal_path("r1"))
    return SimpleNamespace(qw=qw, store=store, path=path, data=path.read_bytes(),
                           covered=covered)


def test_a_snapshot_says_how_much_of_the_journal_it_covers(tmp_path):
    j = snapshot_with_tail(tmp_path)
    assert j.data[:j.covered].count(b"\n") == 4        # the header and three events
    tail = Journal.scan(str(j.path), start=j.covered)
    assert [e["type"] for e in tail] == ["task_done", "attempt_started"]
    assert tail.lines == [5, 6] and tail.line_count == 6
    for mode in (IN_MEMORY, STRICT):
        loaded = StateStore(j.qw, "demo", recover=mode).load()
        assert loaded.to_snapshot() == j.store.state.to_snapshot()


def test_a_load_reads_only_the_lines_the_snapshot_does_not_cover(tmp_path):
    # What keeps `qw status` fast after a 10,000-task run: the covered lines are not read,
    # so a flipped byte there (which the snapshot makes harmless) is not even seen.
    j = snapshot_with_tail(tmp_path)
    data = bytearray(j.data)
    data[data.index(b"\n") + 1 + 5] ^= 0x20          # in the second line
    j.path.write_bytes(bytes(data))
    assert Journal.scan(str(j.path)).bad_line == 2   # a whole read sees it...
    look = StateStore(j.qw, "demo", recover=IN_MEMORY)
    assert look.load().tasks["2"].status == "running"
    assert look.warnings == []                       # ...a read-only look never reads it
    with pytest.raises(StateError, match="bad line"):
        StateStore(j.qw, "demo").load()              # a run's load reads it all


def test_a_covered_offset_that_is_not_a_line_start_reads_the_whole_journal(tmp_path):
    j = snapshot_with_tail(tmp_path)
    assert [e["seq"] for e in Journal.scan(str(j.path), start=j.covered - 3)] == [1, 2, 3, 4, 5]
    assert [e["seq"] for e in Journal.scan(str(j.path), start=10 ** 9)] == [1, 2, 3, 4, 5]


def test_a_journal_cut_below_what_the_snapshot_covers_is_still_damage(tmp_path):
    j = snapshot_with_tail(tmp_path)
    j.path.write_bytes(j.data[:j.covered - 5])       # a torn line inside the covered part
    rebuilt = StateStore(j.qw, "demo", recover=IN_MEMORY)
    state = rebuilt.load()
    assert state.seq == 3                              # the snapshot still stands
    assert any("torn last line" in w for w in rebuilt.warnings), rebuilt.warnings


def test_a_newer_journal_is_refused_even_when_only_its_tail_is_read(tmp_path):
    j = snapshot_with_tail(tmp_path)
    header_end = j.data.index(b"\n") + 1
    header = json.loads(j.data[:header_end])
    header.pop("sha256", None)
    newer = encode_line(dict(header, format=header["format"] + 1))
    j.path.write_bytes(newer + j.data[header_end:])
    with pytest.raises(StateError, match="newer qw"):
        Journal.scan(str(j.path), start=j.covered + len(newer) - header_end)


def test_a_new_run_gets_its_own_journal_and_the_store_follows_it(tmp_path):
    qw = str(tmp_path / ".qw")
    store = StateStore(qw, "demo")
    store.load()
    for event in some_events():
        store.record(event)
    store.record({"type": "run_ended", "t": 5.0, "status": "interrupted", "exit_code": 130})
    store.close()
    store = StateStore(qw, "demo", snapshot_interval=3600.0)
    store.load()
    store.record(run_started("r2"))
    store.record({"type": "task_done", "t": 6.0, "task": "2"})
    assert os.path.exists(store.journal_path("r1")) and os.path.exists(store.journal_path("r2"))
    assert [e["seq"] for e in Journal.read(store.journal_path("r2"))] == [7, 8]
    loaded = StateStore(qw, "demo").load()
    assert loaded.run_id == "r2" and loaded.tasks["2"].status == "done"


def test_a_torn_journal_line_is_reported_by_load(tmp_path):
    qw = str(tmp_path / ".qw")
    store = StateStore(qw, "demo")
    store.load()
    store.record(run_started())
    with open(store.journal_path("r1"), "ab") as f:
        f.write(b'{"type":"task_done","t":2,"ta')
    again = StateStore(qw, "demo")
    assert again.load().tasks["1"].status == "pending"
    assert again.torn == b'{"type":"task_done","t":2,"ta'


def test_an_illegal_event_is_neither_applied_nor_journaled(tmp_path):
    store = StateStore(str(tmp_path / ".qw"), "demo")
    store.load()
    store.record(run_started())
    with pytest.raises(ValueError):
        store.record({"type": "task_done", "t": 2.0, "task": "nope"})
    with pytest.raises(ValueError):   # not JSON: NaN
        store.record({"type": "run_paused", "t": float("nan"), "until": None})
    store.record({"type": "task_done", "t": 2.0, "task": "1"})
    assert [e["seq"] for e in Journal.read(store.journal_path("r1"))] == [1, 2]


def test_the_journal_holds_each_event_as_applied_and_replay_gives_the_live_state(tmp_path):
    store = StateStore(str(tmp_path / ".qw"), "demo")
    store.load()
    for event in some_events():
        store.record(dict(event, tasks=tuple(map(tuple, event["tasks"])))
                     if event["type"] == "run_started" else event)
    lines = Journal.read(store.journal_path("r1"))
    with open(store.journal_path("r1"), "rb") as f:
        assert f.read().splitlines(keepends=True)[1:] == [encode_line(e) for e in lines]
    assert lines[0]["tasks"] == [["1", "One"], ["2", "Two"]]   # JSON's lists, as applied
    assert replay(lines).to_snapshot() == store.state.to_snapshot()


def test_a_newer_snapshot_is_refused_and_never_overwritten(tmp_path):
    qw = str(tmp_path / ".qw")
    os.makedirs(os.path.join(qw, "state"))
    path = os.path.join(qw, "state", "demo.json")
    newer = b'{"format": 2, "something": "new"}'
    with open(path, "wb") as f:
        f.write(newer)
    store = StateStore(qw, "demo")
    with pytest.raises(StateError, match="newer qw"):
        store.load()
    with pytest.raises(StateError, match="newer qw"):
        store.record(run_started())
    with open(path, "rb") as f:
        assert f.read() == newer


def test_a_snapshot_that_is_not_json_is_a_state_error(tmp_path):
    qw = tmp_path / ".qw"
    (qw / "state").mkdir(parents=True)
    (qw / "state" / "demo.json").write_text("{half")
    with pytest.raises(StateError, match="not valid JSON"):
        StateStore(str(qw), "demo").load()


def test_the_snapshot_is_rewritten_a_few_times_not_per_event(tmp_path):
    # 2,500 tasks x 4 transitions = 10,000 events over 10 "seconds" of a fake clock.
    writes = CountingWrites()
    tasks = [(str(i), f"Task {i}") for i in range(2500)]
    store = StateStore(str(tmp_path / ".qw"), "big", clock=Ticks(0.001), write_file=writes)
    store.load()
    store.record(dict(run_started(tasks=tasks), spec="big"))
    for i, (task_id, _title) in enumerate(tasks):
        store.record({"type": "task_status", "t": 2.0, "task": task_id, "status": "ready"})
        store.record({"type": "attempt_started", "t": 2.0, "task": task_id, "attempt": 1,
                      "worker": i % 8, "timeout_s": 60})
        store.record({"type": "attempt_ended", "t": 3.0, "task": task_id, "attempt": 1,
                      "outcome": "ok", "message": "", "cost_usd": 0.01, "duration_s": 1.0,
                      "session_id": None, "exit_code": 0})
        store.record({"type": "task_done", "t": 3.0, "task": task_id})
    store.record({"type": "run_ended", "t": 4.0, "status": "done", "exit_code": 0})
    store.close()
    assert 2 <= len(writes.paths) <= 15, f"{len(writes.paths)} snapshot writes"
    assert len(Journal.read(store.journal_path("r1"))) == 10002
    loaded = StateStore(str(tmp_path / ".qw"), "big").load()
    assert loaded.view()["totals"]["done"] == 2500


def test_run_ids_sort_by_time_and_differ():
    first, second = new_run_id(1763709480.0), new_run_id(1763709481.0)
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{4}", first)
    assert first.startswith("20251121-071800-")
    assert first < second
    assert len({new_run_id(1763709480.0) for _ in range(20)}) > 1
