"""`qw stats`: the figures agree with the journals they come from. Each test recomputes
them here, straight from the events.jsonl lines, in a way of its own (overlaps by counting
at every start, not by a sweep), over real runs and over journals written to order."""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from qw.errors import UsageError
from qw.history import peak_overlap
from qw.statestore import StateStore
from qw.stats import compute_stats, nearest_rank, render_stats
from runhelpers import QwRepo

AGENT_FILE = """---
name: backend
description: Backend work
---
You build backends.
"""

# Two agents (backend, and none: "default"); retries for two causes; run twice.
TASKS = """
- [ ] 1. Backend base
  - _Agent: backend_
  - FAKE: sleep 0.2
- [ ] 2. Flaky backend
  - _Agent: backend_
  - FAKE: fail-first 3 529
  - _Depends: none_
- [ ] 3. Plain and broken
  - FAKE: no-result
  - _Depends: none_
- [ ] 4. After the base
  - _Depends: 1_
"""


def journal_events(path: Path) -> List[dict]:
    """A journal file's events as plain JSON lines: no header, no checksum field."""
    events = []
    for line in path.read_text().splitlines():
        event = json.loads(line)
        if "type" in event:
            event.pop("c", None)
            events.append(event)
    return events


def agents_in_tasks_md(root: Path, spec: str) -> Dict[str, Optional[str]]:
    """task id -> `_Agent:` name in the spec's tasks.md, read with a regex of our own."""
    import re

    path = root / ".claude" / "specs" / spec / "tasks.md"
    if not path.exists():
        return {}
    found, current = {}, None
    for line in path.read_text().splitlines():
        task = re.match(r"\s*- \[.\] ([\w.]+)\.", line)
        if task:
            current = task.group(1)
            found[current] = None
        agent = re.search(r"_Agent: (\w+)_", line)
        if agent and current:
            found[current] = agent.group(1)
    return found


def most_at_once(intervals) -> int:
    """The most intervals [s, e) holding a moment in common: count at every start."""
    return max((sum(1 for s, e in intervals if s <= t < e) for t, _ in intervals), default=0)


def agent_for(event: dict, tasks_md: Dict[str, Optional[str]]) -> str:
    """The event's agent if it names one (null: none), else tasks.md's for its task."""
    if "agent" in event:
        return event["agent"] or "default"
    if event["task"] not in tasks_md:
        return "unknown"
    return tasks_md[event["task"]] or "default"


def recompute(root: Path, spec: Optional[str] = None) -> dict:
    figures = defaultdict(lambda: {"durations": [], "ok": 0, "cost": 0.0, "retries": Counter(),
                                   "memory": [], "peak": 0, "unfinished": 0})
    runs = 0
    for path in sorted((root / ".qw" / "runs").glob("*/events.jsonl")):
        events = journal_events(path)
        run_spec = next(e["spec"] for e in events if e["type"] == "run_started")
        if spec is not None and run_spec != spec:
            continue
        runs += 1
        tasks_md = agents_in_tasks_md(root, run_spec)
        last_t = max(e["t"] for e in events)
        open_, last_agent, last_outcome = {}, {}, {}
        intervals = defaultdict(list)
        for e in events:
            if e["type"] == "attempt_started":
                open_[e["task"]] = e
            elif e["type"] == "attempt_ended":
                start = open_.pop(e["task"])
                agent = agent_for(e, tasks_md)
                last_agent[e["task"]], last_outcome[e["task"]] = agent, e["outcome"]
                f = figures[agent]
                f["durations"].append(e["duration_s"] if e.get("duration_s") is not None
                                      else e["t"] - start["t"])
                f["ok"] += e["outcome"] == "ok"
                f["cost"] += e.get("cost_usd") or 0.0
                if e.get("peak_rss_mb") is not None:
                    f["memory"].append(e["peak_rss_mb"])
                intervals[agent].append((start["t"], e["t"]))
            elif e["type"] == "retry_scheduled":
                figures[last_agent[e["task"]]]["retries"][last_outcome[e["task"]]] += 1
        for task, start in open_.items():
            agent = agent_for(start, tasks_md)
            figures[agent]["unfinished"] += 1
            intervals[agent].append((start["t"], last_t))
        for agent, spans in intervals.items():
            figures[agent]["peak"] = max(figures[agent]["peak"], most_at_once(spans))
        figures["all"]["peak"] = max(figures["all"]["peak"],
                                     most_at_once([s for v in intervals.values() for s in v]))
    return {"runs": runs, "figures": dict(figures)}


def expected(f: dict) -> dict:
    durations = sorted(f["durations"])
    n = len(durations)
    middle = (durations[(n - 1) // 2] + durations[n // 2]) / 2 if n else None
    return {"attempts": n, "unfinished": f["unfinished"], "ok": f["ok"],
            "success_rate": round(f["ok"] / n, 4) if n else None,
            "median_duration_s": None if middle is None else round(middle, 3),
            "p95_duration_s": round(durations[math.ceil(0.95 * n) - 1], 3) if n else None,
            "cost_usd": round(f["cost"], 6), "retries": sum(f["retries"].values()),
            "retries_by_cause": dict(sorted(f["retries"].items())),
            "peak_concurrency": f["peak"],
            "peak_memory_mb": max(f["memory"]) if f["memory"] else None}


def check_against_journals(root: Path, spec: Optional[str] = None) -> dict:
    stats = compute_stats(str(root), spec)
    again = recompute(root, spec)
    agents = {k: v for k, v in again["figures"].items() if k != "all"}
    overall = {"durations": [d for f in agents.values() for d in f["durations"]],
               "ok": sum(f["ok"] for f in agents.values()),
               "cost": sum(f["cost"] for f in agents.values()),
               "retries": sum((f["retries"] for f in agents.values()), Counter()),
               "memory": [m for f in agents.values() for m in f["memory"]],
               "unfinished": sum(f["unfinished"] for f in agents.values()),
               "peak": again["figures"].get("all", {"peak": 0})["peak"]}
    assert stats["runs"] == again["runs"]
    assert stats["agents"] == {agent: expected(f) for agent, f in sorted(agents.items())}
    for key, value in expected(overall).items():
        assert stats["overall"][key] == (pytest.approx(value) if key == "cost_usd" else value), key
    return stats


# ----- real runs


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """Spec `s` run twice with the fake claude (both runs end with task 3 failed)."""
    repo = QwRepo(tmp_path_factory.mktemp("stats"))
    try:
        (repo.root / ".claude" / "agents").mkdir(parents=True)
        (repo.root / ".claude" / "agents" / "backend.md").write_text(AGENT_FILE)
        repo.configure(run="max_retries = 1")
        repo.write_tasks(TASKS)
        for _ in range(2):
            done = repo.run("run", "s", "-j", "3")
            assert done.code == 1, done
        yield repo
    finally:
        repo.check_no_leftovers()


def test_stats_of_real_runs_agree_with_their_journals(ran):
    stats = check_against_journals(ran.root, "s")
    assert stats["runs"] == 2 and set(stats["agents"]) == {"backend", "default"}
    backend = stats["agents"]["backend"]
    # Task 2 failed three times (529) across both runs, each time retried but the second.
    assert backend["retries_by_cause"] == {"overloaded": 2}
    assert stats["agents"]["default"]["retries_by_cause"] == {"crashed": 2}
    assert stats["overall"]["peak_concurrency"] >= 2
    assert check_against_journals(ran.root)["agents"] == stats["agents"]   # s is all there is


def test_stats_text_has_a_row_per_agent_and_the_total(ran):
    text = render_stats(compute_stats(str(ran.root), "s"))
    lines = text.splitlines()
    assert lines[0] == "qw stats: 2 runs of spec s"
    assert lines[1].split()[:3] == ["agent", "attempts", "ok"]
    assert [line.split()[0] for line in lines[2:5]] == ["backend", "default", "all"]
    assert "overloaded 2" in text and "crashed 2" in text


def test_an_unknown_spec_is_a_usage_error(ran):
    with pytest.raises(UsageError, match="unknown spec 'nope'"):
        compute_stats(str(ran.root), "nope")


# ----- journals written to order


def write_run(store: StateStore, run_id: str, t0: float, attempts: List[dict],
              ended: bool = True) -> None:
    """One run of spec `store.spec`: attempts are dicts of task, start, end (None: never
    ended), outcome, agent (absent: not journaled), rss, retried."""
    tasks = sorted({a["task"] for a in attempts})
    store.record({"type": "run_started", "t": t0, "run_id": run_id, "spec": store.spec,
                  "tasks": [[t, f"task {t}"] for t in tasks]})
    moments = []
    for n, a in enumerate(attempts):
        moments.append((t0 + a["start"], 1, n))
        if a["end"] is not None:
            moments.append((t0 + a["end"], 0, n))
    numbers: Dict[str, int] = {}
    for t, starting, n in sorted(moments):
        a = attempts[n]
        if starting:
            numbers[a["task"]] = numbers.get(a["task"], 0) + 1
            store.record({"type": "attempt_started", "t": t, "task": a["task"],
                          "attempt": numbers[a["task"]], "worker": a.get("worker", 1),
                          "timeout_s": 60.0})
            continue
        ended_event = {"type": "attempt_ended", "t": t, "task": a["task"],
                       "attempt": numbers[a["task"]], "outcome": a["outcome"],
                       "message": a["outcome"], "cost_usd": a.get("cost", 0.01),
                       "exit_code": 0, "duration_s": round(a["end"] - a["start"], 3),
                       "session_id": "x"}
        if "rss" in a:
            ended_event["peak_rss_mb"] = a["rss"]
        if "agent" in a:
            ended_event["agent"] = a["agent"]
        store.record(ended_event)
        if a["outcome"] == "ok":
            store.record({"type": "task_done", "t": t, "task": a["task"]})
        elif a.get("retried"):
            store.record({"type": "retry_scheduled", "t": t, "task": a["task"],
                          "not_before": t, "reason": "again"})
        else:
            store.record({"type": "task_failed", "t": t, "task": a["task"], "error": "no"})
    if ended:
        store.record({"type": "run_ended", "t": t0 + 1000, "status": "done", "exit_code": 0})


def test_stats_of_written_journals_are_exact(tmp_path):
    qw_dir = tmp_path / ".qw"
    store = StateStore(str(qw_dir), "syn")
    store.load()
    # Twenty backend attempts of 1..20 s, three at once at most; memory recorded.
    backend = [{"task": f"b{i}", "start": 100.0 * (i // 3) + 0.1 * (i % 3), "outcome": "ok",
                "agent": "backend", "rss": 100.0 + i} for i in range(20)]
    for i, a in enumerate(backend):
        a["end"] = a["start"] + i + 1
    # Two default-agent attempts of one task: a timeout (retried), then ok; no memory.
    plain = [{"task": "p", "start": 900.0, "end": 902.0, "outcome": "timeout", "agent": None,
              "retried": True, "worker": 2},
             {"task": "p", "start": 903.0, "end": 904.0, "outcome": "ok", "agent": None,
              "worker": 2}]
    write_run(store, "20260101-000000-aaaa", 1000.0, backend + plain)
    # A second run that died: one attempt never ended, one ended without an agent field.
    write_run(store, "20260102-000000-bbbb", 5000.0,
              [{"task": "q", "start": 1.0, "end": None, "outcome": None},
               {"task": "r", "start": 2.0, "end": 4.0, "outcome": "crashed", "agent": "x"}],
              ended=False)
    store.close()

    stats = check_against_journals(tmp_path)
    b = stats["agents"]["backend"]
    assert (b["attempts"], b["ok"], b["success_rate"]) == (20, 20, 1.0)
    assert (b["median_duration_s"], b["p95_duration_s"]) == (10.5, 19.0)
    assert (b["peak_concurrency"], b["peak_memory_mb"], b["cost_usd"]) == (3, 119.0, 0.2)
    d = stats["agents"]["default"]
    assert (d["attempts"], d["success_rate"], d["retries_by_cause"]) == \
        (2, 0.5, {"timeout": 1})
    assert d["peak_memory_mb"] is None
    # Task q's attempt never ended and its task is in no tasks.md: "unknown" agent.
    assert stats["agents"]["unknown"]["unfinished"] == 1
    assert stats["overall"]["unfinished"] == 1 and stats["overall"]["attempts"] == 23
    # A spec whose folder is gone still has its history.
    assert compute_stats(str(tmp_path), "syn")["runs"] == 2
    text = render_stats(stats)
    assert "1 attempt without an end" in text and "timeout 1" in text


def test_no_runs_yet(tmp_path):
    stats = compute_stats(str(tmp_path))
    assert stats["runs"] == 0 and stats["agents"] == {}
    assert stats["overall"]["success_rate"] is None and stats["overall"]["peak_memory_mb"] is None
    assert render_stats(stats) == "qw stats: 0 runs of all specs\nno attempts recorded yet\n"


def test_overlap_and_rank_definitions():
    assert peak_overlap([]) == 0
    assert peak_overlap([(0, 1), (1, 2), (2, 3)]) == 1     # touching is not overlapping
    assert peak_overlap([(0, 10), (1, 2), (1.5, 3), (2, 4)]) == 3
    assert nearest_rank([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0.95) == 10
    assert nearest_rank(list(range(1, 21)), 0.95) == 19
    assert nearest_rank([7], 0.95) == 7
