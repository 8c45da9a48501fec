"""`qw stats [SPEC]`: how the attempts went, per agent and overall, over every recorded run.

The figures, each over the journals of `.qw/runs/` (of SPEC's runs, if named):

    attempts          attempts whose end is journaled (attempt_ended)
    unfinished        attempts started without an end: running now, or their run died
    success_rate      attempts with outcome ok / attempts (null without attempts)
    median_duration_s, p95_duration_s
                      of the attempts' duration_s; p95 by nearest rank: the value at
                      position ceil(0.95 n) of the n sorted durations
    cost_usd          the attempts' cost_usd, summed
    retries_by_cause  for each retry_scheduled, the outcome kind of the task's attempt
                      just before it, counted
    peak_concurrency  the most attempts running at one moment within one run
    peak_memory_mb    the largest peak_rss_mb an attempt recorded; null when none did

An attempt's agent is the one its journal names, else the `_Agent:` its task has in
tasks.md now: "default" for none, "unknown" for a task no longer there.
"""

from __future__ import annotations

import math
import os
import statistics
from typing import Any, Dict, List, Optional, Sequence, Tuple

from qw.errors import QwError, UsageError
from qw.history import NO_AGENT, AttemptRecord, History, peak_overlap
from qw.state import OK

UNKNOWN_AGENT = "unknown"


def compute_stats(repo: str, spec: Optional[str] = None,
                  history: Optional[History] = None) -> Dict[str, Any]:
    """The figures (module doc) per agent and overall, for `spec`'s runs or every run.
    UsageError for a spec that neither exists nor has recorded runs. `history`: a reader
    of the repository's runs to reuse (its cache), else a new one."""
    history = history or History(os.path.join(repo, ".qw"))
    name = _spec_name(repo, spec, history) if spec else None
    runs = history.runs(name)
    agents_by_spec: Dict[Optional[str], Dict[str, Optional[str]]] = {}
    overall: List[Sequence[AttemptRecord]] = []
    per_agent: Dict[str, List[Sequence[AttemptRecord]]] = {}
    for run in runs:
        if run.spec not in agents_by_spec:
            agents_by_spec[run.spec] = task_agents(repo, run.spec)
        agent_map = agents_by_spec[run.spec]
        overall.append(run.attempts)
        grouped: Dict[str, List[AttemptRecord]] = {}
        for attempt in run.attempts:
            grouped.setdefault(agent_of(attempt, agent_map), []).append(attempt)
        for agent, attempts in grouped.items():
            per_agent.setdefault(agent, []).append(attempts)
    return {"spec": name, "runs": len(runs), "overall": figures(overall),
            "agents": {agent: figures(per_agent[agent]) for agent in sorted(per_agent)}}


def figures(runs: Sequence[Sequence[AttemptRecord]]) -> Dict[str, Any]:
    """The module doc's figures over `runs`, each the attempts of one run."""
    ended = [a for run in runs for a in run if a.end_recorded]
    durations = sorted(duration_of(a) for a in ended)
    retries: Dict[str, int] = {}
    for run in runs:
        for attempt in run:
            if attempt.retried:
                cause = attempt.outcome or "unknown"
                retries[cause] = retries.get(cause, 0) + 1
    memory = [a.peak_rss_mb for run in runs for a in run if a.peak_rss_mb is not None]
    ok = sum(1 for a in ended if a.outcome == OK)
    return {
        "attempts": len(ended),
        "unfinished": sum(1 for run in runs for a in run if not a.end_recorded),
        "ok": ok,
        "success_rate": round(ok / len(ended), 4) if ended else None,
        "median_duration_s": round(statistics.median(durations), 3) if durations else None,
        "p95_duration_s": round(nearest_rank(durations, 0.95), 3) if durations else None,
        "cost_usd": round(sum(a.cost_usd for a in ended), 6),
        "retries": sum(retries.values()),
        "retries_by_cause": dict(sorted(retries.items())),
        "peak_concurrency": max((peak_overlap(_intervals(run)) for run in runs), default=0),
        "peak_memory_mb": max(memory) if memory else None,
    }


def nearest_rank(sorted_values: Sequence[float], fraction: float) -> float:
    """The value at rank ceil(fraction * n) (1-based) of the sorted values."""
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def duration_of(attempt: AttemptRecord) -> float:
    """What the attempt took: its journaled duration_s, else end minus start."""
    if attempt.duration_s is not None:
        return attempt.duration_s
    return max(0.0, (attempt.ended_at or attempt.started_at) - attempt.started_at)


def agent_of(attempt: AttemptRecord, task_agents_now: Dict[str, Optional[str]]) -> str:
    if attempt.agent:
        return attempt.agent
    if attempt.task not in task_agents_now:
        return UNKNOWN_AGENT
    return task_agents_now[attempt.task] or NO_AGENT


def task_agents(repo: str, spec: Optional[str]) -> Dict[str, Optional[str]]:
    """task id -> the agent its tasks.md names now (None: none); {} if it cannot be read."""
    from qw.specdir import SPECS_DIR, TASKS_FILE, read_text
    from qw.tasks import parse_tasks

    if not spec:
        return {}
    path = os.path.join(repo, SPECS_DIR, spec, TASKS_FILE)
    try:
        tasks = parse_tasks(read_text(path), path)
    except QwError:
        return {}
    return {t.id: t.agent for t in tasks}


def _intervals(attempts: Sequence[AttemptRecord]) -> List[Tuple[float, float]]:
    return [(a.started_at, a.ended_at if a.ended_at is not None else a.started_at)
            for a in attempts]


def _spec_name(repo: str, spec: str, history: History) -> str:
    from qw.specdir import resolve_spec

    try:
        return resolve_spec(repo, spec).name
    except UsageError:
        # A spec whose folder is gone still has its history.
        if any(history.spec_of(run_id) == spec for run_id in history.run_ids()):
            return spec
        raise


# ----- text


def render_stats(stats: Dict[str, Any]) -> str:
    """`qw stats` as text: one row per agent, then the overall row."""
    from qw.durations import format_duration
    from qw.report import table

    scope = f"spec {stats['spec']}" if stats.get("spec") else "all specs"
    runs = stats.get("runs", 0)
    head = f"qw stats: {runs} run{'s' if runs != 1 else ''} of {scope}"
    if not stats["overall"]["attempts"] and not stats["overall"]["unfinished"]:
        return head + "\nno attempts recorded yet\n"

    def seconds(value: Optional[float]) -> str:
        return "-" if value is None else format_duration(value)

    def row(name: str, f: Dict[str, Any]) -> List[str]:
        rate = "-" if f["success_rate"] is None else f"{100 * f['success_rate']:.0f}%"
        causes = ", ".join(f"{k} {v}" for k, v in f["retries_by_cause"].items()) or "-"
        memory = "-" if f["peak_memory_mb"] is None else f"{f['peak_memory_mb']:,.0f} MB"
        return [name, str(f["attempts"]), rate, seconds(f["median_duration_s"]),
                seconds(f["p95_duration_s"]), f"${f['cost_usd']:.4f}",
                str(f["peak_concurrency"]), memory, causes]

    rows = [row(agent, f) for agent, f in stats["agents"].items()]
    rows.append(row("all", stats["overall"]))
    text = table(rows, ("agent", "attempts", "ok", "median", "p95", "cost", "peak jobs",
                        "peak mem", "retries by cause"))
    unfinished = stats["overall"]["unfinished"]
    tail = f"\n{unfinished} attempt{'s' if unfinished != 1 else ''} without an end " \
           "(running, or their run died)" if unfinished else ""
    return f"{head}\n{text}{tail}\n"
