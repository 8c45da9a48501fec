"""`qw status` read from the stored state: the same table and JSON whichever form the
snapshot file has (every field, as qw wrote it before, or without default values), with
journal lines the snapshot does not cover, and for every status a task can be in."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qw.state import SNAPSHOT_FORMAT
from qw.statestore import STRICT, StateStore

ROOT = Path(__file__).resolve().parent.parent
TITLES = ["Done with cost", "Failed", "Blocked", "Skipped", "Running when the run died",
          "Waiting for room", "Retry scheduled", "Done, changed nothing", "Never started"]


def qw(repo, *args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "qw", *args], cwd=repo, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=60)


def ev(kind, t, **fields):
    return {"type": kind, "t": t, **fields}


def attempt(task, t, outcome="ok", **ended):
    return [ev("attempt_started", t, task=task, attempt=1, worker=0),
            ev("attempt_ended", t + 1, task=task, attempt=1, outcome=outcome, **ended)]


FIRST = [  # covered by the snapshot kept aside
    *attempt("1", 101, cost_usd=0.25, duration_s=30.5, peak_rss_mb=120.4, cpu_s=2.5,
             session_id="s1"),
    ev("task_done", 103, task="1"),
    *attempt("2", 104, "error", message="boom", duration_s=2.0, cost_usd=0.01),
    ev("task_failed", 106, task="2", error="boom"),
    ev("task_status", 107, task="3", status="blocked", reason="needs 2"),
    ev("task_status", 108, task="4", status="skipped"),
]
TAIL = [  # only in the journal: status replays them
    ev("attempt_started", 110, task="5", attempt=1, worker=1),
    ev("task_waiting", 111, task="6", reason="waiting for CPU: load 3.0"),
    *attempt("7", 112, "overloaded", message="529", duration_s=0.0),
    ev("retry_scheduled", 114, task="7", not_before=900.0),
    *attempt("8", 115, duration_s=1.25, changed_nothing=True, peak_rss_mb=0.0, cpu_s=0.0),
    ev("task_done", 117, task="8"),
]


@pytest.fixture
def repo(tmp_path):
    """A spec whose stored state has a task in every status, a snapshot that covers the
    first events and a journal that goes on; returns (repo, the snapshot's path)."""
    spec = tmp_path / ".claude" / "specs" / "demo"
    spec.mkdir(parents=True)
    (spec / "tasks.md").write_text("# Tasks\n\n" + "".join(
        f"- [ ] {n}. {title}\n" for n, title in enumerate(TITLES, 1)))
    store = StateStore(str(tmp_path / ".qw"), "demo", clock=lambda: 0.0)
    store.record(ev("run_started", 100, run_id="20260101-000000-abcd", spec="demo", pid=1,
                    tasks=[[str(n), title] for n, title in enumerate(TITLES, 1)]))
    for event in FIRST:
        store.record(event)
    store.flush()
    kept = tmp_path / "covers-the-first-events.json"
    shutil.copy(store.snapshot_path, kept)
    for event in TAIL:
        store.record(event)
    store.close()
    shutil.copy(kept, store.snapshot_path)   # as if the run died before its next snapshot
    return tmp_path, Path(store.snapshot_path)


def full_form(path):
    """Rewrite the snapshot as qw wrote it before its entries left default values out:
    every field of every task, the sha256 of that body."""
    data = StateStore(str(path.parent.parent), "demo", recover=STRICT).load()
    body = dict(data.to_snapshot(), journal_bytes=data.journal_bytes)
    raw = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    digest = hashlib.sha256(raw).hexdigest().encode("ascii")
    path.write_bytes(raw[:-1] + b',"sha256":"' + digest + b'"}\n')


def test_status_shows_every_status_the_same_from_either_form_of_the_snapshot(repo):
    root, snapshot = repo
    entries = json.loads(snapshot.read_bytes())["tasks"]
    assert entries[3] == {"id": "4", "title": "Skipped", "status": "skipped"}
    text, as_json = qw(root, "status", "demo"), qw(root, "status", "demo", "--json")
    assert text.returncode == 0 and as_json.returncode == 0, text.stderr + as_json.stderr
    assert text.stderr == ""
    view = json.loads(as_json.stdout)
    assert [t["status"] for t in view["tasks"]] == [
        "done", "failed", "blocked", "skipped", "pending", "pending", "pending", "done",
        "pending"]
    by_id = {t["id"]: t for t in view["tasks"]}
    assert by_id["5"]["error"] == "interrupted" and by_id["5"]["attempts"] == 1
    assert "waiting" not in by_id["6"]             # nothing waits without a live run
    assert by_id["7"]["next_try_at"] == 900.0 and by_id["8"]["changed_nothing"] is True
    assert (by_id["1"]["cost_usd"], by_id["1"]["peak_rss_mb"]) == (0.25, 120.4)
    assert view["totals"]["done"] == 2 and view["totals"]["attempts"] == 5
    rows = text.stdout.splitlines()
    assert rows[2].split()[:5] == ["1", "done", "1", "30s", "$0.2500"]
    assert rows[9].endswith("changed nothing")

    full_form(snapshot)
    assert len(json.loads(snapshot.read_bytes())["tasks"][3]) == 18
    assert qw(root, "status", "demo").stdout == text.stdout
    assert qw(root, "status", "demo", "--json").stdout == as_json.stdout


def test_status_leaves_the_collector_as_it_found_it(repo, monkeypatch, capsys):
    # `qw status` pauses the cyclic collector while it reads (qw.commands.collector_paused);
    # a caller running it in-process must get the collector back as it was.
    from qw.cli import main

    root, snapshot = repo
    before = snapshot.read_bytes()
    monkeypatch.chdir(root)
    try:
        for enabled in (True, False):
            gc.enable() if enabled else gc.disable()
            assert main(["status", "demo"]) == 0
            assert gc.isenabled() is enabled
    finally:
        gc.enable()
    assert "2/9 done, 1 failed, 0 running, 4 pending" in capsys.readouterr().out
    assert snapshot.read_bytes() == before
    assert json.loads(before)["format"] == SNAPSHOT_FORMAT