"""Rendering: the only module that writes command results to the terminal.

Commands return data; these functions print it. A run's live output (status line on a
TTY, timestamped lines otherwise) is `qw.runreport`.
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
import sys
from typing import Dict, List, Optional, Sequence, TextIO

from qw.durations import format_duration


def _out() -> TextIO:
    return sys.stdout


def short_paths(text: str) -> str:
    """`text` with paths under the working directory made relative to it: shorter lines,
    and still paths a user can open from where they are."""
    try:
        cwd = os.getcwd()
    except OSError:
        return text
    if os.path.dirname(cwd) == cwd:   # the root: every absolute path would lose its "/"
        return text
    return text.replace(cwd + os.sep, "")


def print_json(data: object, stream: Optional[TextIO] = None) -> None:
    stream = stream or _out()
    stream.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    """A plain left-aligned text table; the last column is not padded."""
    all_rows = [tuple(header)] + [tuple(r) for r in rows]
    # Column by column, not cell by cell: a 10,000-task status is 70,000 cells.
    columns = list(itertools.zip_longest(*all_rows, fillvalue=""))
    widths = [max(map(len, column)) for column in columns]
    # One %-format per row. A short row is padded with empty cells, which the rstrip()
    # takes off again with the padding of its own last cell.
    line = "  ".join(["%%-%ds" % w for w in widths[:-1]] + ["%s"])
    return "\n".join([(line % row).rstrip() for row in zip(*columns)])


def print_plan(spec, plan, explain: bool = False) -> None:
    """The batches with each task's checkbox as tasks.md has it, its prerequisites and
    (`explain`) why each exists, the groups, and the critical path."""
    out = _out()
    batches = plan.batches()
    done = sum(1 for t in plan.tasks if t.status == "done")
    out.write(f"spec {spec.name}: {len(plan.tasks)} runnable tasks, "
              f"{done} done, {len(batches)} batches\n")
    by_id = {t.id: t for t in plan.tasks}
    for n, batch in enumerate(batches, 1):
        out.write(f"\nbatch {n}:\n")
        for tid in batch:
            task = by_id[tid]
            deps = plan.deps.get(tid, ())
            after = f"  (after {', '.join(deps)})" if deps else ""
            blocked = f"  [blocked: {task.blocked_reason}]" if task.blocked_reason else ""
            out.write(f"  [{task.mark}] {tid}  {task.title}{after}{blocked}\n")
            if explain:
                for dep, reason in plan.reasons.get(tid, {}).items():
                    out.write(f"        <- {dep}: {reason}\n")
    if plan.groups:
        out.write("\ngroups (done when all their subtasks are):\n")
        for gid, leaves in plan.groups.items():
            out.write(f"  {gid}: {', '.join(leaves)}\n")
    out.write(f"\ncritical path: {' -> '.join(plan.critical_path()) or '(none)'}\n")


def print_validation(problems: List[str], summary: Dict[str, object]) -> None:
    if problems:
        for p in problems:
            sys.stderr.write(f"qw: error: {short_paths(p)}\n")
        sys.stderr.write(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} found\n")
        return
    parts = [f"spec {summary.get('spec')}", f"{summary.get('tasks')} tasks",
             f"{summary.get('runnable')} runnable", f"{summary.get('batches')} batches",
             f"agents: {', '.join(summary.get('agents') or []) or 'none'}"]
    _out().write("ok: " + ", ".join(parts) + "\n")


def print_config(rows: Sequence[tuple]) -> None:
    _out().write(table([(key, _show(value), source) for key, value, source in rows],
                       ("key", "value", "from")) + "\n")


def _show(value: object) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value), ensure_ascii=False)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def print_init(repo: str, written: List[str], kept: List[str]) -> None:
    out = _out()
    for rel in written:
        out.write(f"wrote {rel}\n")
    for rel in kept:
        out.write(f"kept  {rel} (exists; --force overwrites)\n")
    qw = invocation()
    out.write(f"next: {qw} plan example, {qw} run example --dry-run, then {qw} run example\n")


def invocation() -> str:
    """How the user started qw, to repeat in advice: `qw`, `python3 qw.pyz`, `python -m qw`."""
    program = sys.argv[0] if sys.argv else ""
    python = os.path.basename(sys.executable or "python") or "python"
    if program.endswith(".pyz"):
        return f"{python} {program}"
    if os.path.basename(program) == "__main__.py":
        return f"{python} -m qw"
    return "qw"


def print_dry_run(data: Dict[str, object]) -> None:
    """The batches, then per task its command line (the prompt goes on stdin) and prompt,
    then the prompt sizes against sending every spec document."""
    out = _out()
    out.write(f"spec {data['spec']}: would run {len(data['tasks'])} tasks "
              f"at -j {data['max_concurrent']} (dry run: nothing started)\n")
    for n, batch in enumerate(data["batches"], 1):
        out.write(f"batch {n}: {', '.join(batch)}\n")
    for task in data["tasks"]:
        out.write(f"\n===== task {task['id']}: {task['title']} "
                  f"({task['prompt_chars']} chars) =====\n")
        out.write(f"$ {' '.join(shlex.quote(a) for a in task['command'])} < prompt\n")
        if task.get("verify"):
            out.write(f"then verify: $ {' '.join(shlex.quote(a) for a in task['verify'])}\n")
        out.write(task["prompt"].rstrip("\n") + "\n")
    sizes = data["prompt_sizes"]
    out.write(f"\nprompt size: median {sizes['median']} chars, max {sizes['max']} chars; "
              f"all spec documents together: {sizes['all_documents']} chars\n")


STATUS_HEADER = ("task", "status", "tries", "time", "cost", "peak MB", "cpu", "error / waiting")


def status_rows(view: Dict[str, object]) -> List[List[str]]:
    """One row per task, under STATUS_HEADER. The last column: why a ready task waits,
    why the task's last attempt failed, or that it succeeded but changed nothing."""
    rows = []
    for t in view["tasks"]:
        rows.append([t["id"], t["status"], str(t["attempts"]),
                     format_duration(t["duration_s"]) if t.get("duration_s") else "-",
                     f"${t['cost_usd']:.4f}" if t.get("cost_usd") else "-",
                     f"{t['peak_rss_mb']:.0f}" if t.get("peak_rss_mb") else "-",
                     format_duration(t["cpu_s"]) if t.get("cpu_s") else "-",
                     (t.get("waiting") or t.get("error")
                      or ("changed nothing" if t.get("changed_nothing") else ""))[:100]])
    return rows


def print_status(views: List[Dict[str, object]]) -> None:
    out = _out()
    if not views:
        out.write("no specs found\n")
        return
    for view in views:
        for warning in view.get("warnings") or ():
            sys.stderr.write(f"qw: warning: {short_paths(warning)}\n")
        live = "live run" if view.get("live") else "last run"
        run = view.get("run_id") or "never run"
        out.write(f"spec {view['spec']} ({live} {run})\n")
        out.write(table(status_rows(view), STATUS_HEADER) + "\n")
        totals = view.get("totals") or {}
        out.write(totals_line(totals) + "\n")
        if view.get("paused_until"):
            out.write(f"paused until {view['paused_until']}\n")


def totals_line(totals: Dict[str, object]) -> str:
    waiting = f", {totals['ready']} waiting for room" if totals.get("ready") else ""
    measured = ""
    if totals.get("peak_rss_mb"):
        measured = (f"; cpu {format_duration(totals.get('cpu_s') or 0)}, "
                    f"peak {totals['peak_rss_mb']:.0f} MB")
    return (f"{totals.get('done', 0)}/{totals.get('tasks', 0)} done, "
            f"{totals.get('failed', 0)} failed, {totals.get('running', 0)} running, "
            f"{totals.get('pending', 0)} pending{waiting}; "
            f"cost ${totals.get('cost_usd', 0) or 0:.4f}{measured}")


def print_doctor(checks) -> None:
    out = _out()
    for c in checks:
        word = "ok  " if c.ok else ("FAIL" if c.required else "warn")
        line = f"{word} {c.name}: {c.detail}"
        if not c.ok and c.fix:
            line += f" — {c.fix}"
        out.write(line + "\n")


def print_resources(snap) -> None:
    def mb(value):
        return "unknown" if value is None else f"{value:,.0f} MB"

    def pct(value):
        return "unknown" if value is None else f"{value:.0f}%"

    out = _out()
    load = "unknown" if snap.load1 is None else f"{snap.load1:.2f}"
    out.write(f"cpus:    {snap.cpu_count}\n")
    out.write(f"load:    {load} (1 min), {pct(snap.load_per_cpu_percent)} per cpu\n")
    out.write(f"memory:  {mb(snap.memory_available_mb)} available of "
              f"{mb(snap.memory_total_mb)} ({pct(snap.memory_used_percent)} used)\n")
    out.write(f"backend: {snap.backend}" + (f" ({snap.note})" if snap.note else "") + "\n")


def _some(ids, shown: int = 20) -> str:
    """Task ids for one line: all of a few, the first `shown` and a count of many."""
    ids = list(ids)
    if len(ids) <= shown:
        return ", ".join(ids)
    return f"{', '.join(ids[:shown])} and {len(ids) - shown} more ({len(ids)} tasks)"


def print_reset(result) -> None:
    out = _out()
    for warning in result.warnings:
        sys.stderr.write(f"qw: warning: {warning}\n")
    if not result.changed:
        out.write(f"nothing to reset for {result.spec}\n")
        return
    if result.forgot:
        out.write(f"forgot all of qw's state for {result.spec} (transcripts are kept)\n")
    if result.reset:
        out.write(f"back to pending: {_some(result.reset)}\n")
    if result.unchecked:
        out.write(f"unticked in tasks.md: {_some(result.unchecked)}\n")
    out.write(f"backup taken first: {result.backup} (qw backup restore {result.backup})\n")


def print_backups(backups, created: bool = False) -> None:
    import time as _time

    out = _out()
    if not backups:
        out.write("no backups\n")
        return
    rows = [[b.name, _time.strftime("%Y-%m-%d %H:%M", _time.localtime(b.created_at)), b.kind,
             ", ".join(b.specs) or "-", f"{b.size_bytes:,}", b.reason] for b in backups]
    if created:
        b = backups[0]
        out.write(f"created backup {b.name} ({', '.join(b.specs) or 'no specs'}) in {b.path}\n")
        return
    out.write(table(rows, ("name", "created", "kind", "specs", "bytes", "why")) + "\n")


def print_restore(result) -> None:
    out = _out()
    out.write(f"restored {result.backup.name}: {', '.join(result.specs) or 'no specs'}\n")
    out.write(f"the state it replaced is saved as {result.safety_backup.name} "
              f"(qw backup restore {result.safety_backup.name} undoes this)\n")


def print_cleaned(removed, days: float) -> None:
    out = _out()
    if not removed:
        out.write(f"no backups older than {days:g} days\n")
    for name in removed:
        out.write(f"deleted {name}\n")
