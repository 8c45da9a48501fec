"""BENCHMARKS.md from bench/run's figures: `render(...)` returns the whole file's text."""

from __future__ import annotations

import os
import time
from typing import Dict, List, Tuple


def _s(x: float) -> str:
    return f"{x:.2f} s"


def _ms(x: float) -> str:
    return f"{x:.1f} ms"


def _table(rows: List[Tuple[str, str]]) -> str:
    out = ["| figure | value |", "|---|---|"]
    out += [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(out) + "\n"


def _attempt_rows(cost) -> List[Tuple[str, str]]:
    if not cost:
        return []
    def both(key: str) -> str:
        return f"{cost[key]['wall'] * 1000:.1f} ms / {cost[key]['cpu'] * 1000:.1f} ms"
    return [("one attempt, sequential, wall / CPU: plain subprocess", both("plain")),
            ("... under qw's guard (qw.proctree.start_child)", both("supervised")),
            ("a guard as a new interpreter, where it cannot be forked (once per worker)",
             both("guard_interpreter")),
            ("... a bare `python -I -S -c pass`", both("python_I_S"))]


def render(results: Dict, verdicts: List, notes: List[str], info: Dict, command: str,
           total_s: float, targets: Dict) -> str:
    parts = [HEADER.format(command=command)]
    parts.append("## Machine\n\n" + _table([
        ("date (UTC)", time.strftime("%Y-%m-%d %H:%M", time.gmtime())),
        ("CPUs (nproc)", str(info.get("nproc"))),
        ("CPU model", str(info.get("cpu"))),
        ("Python", f"{info.get('python')} ({info.get('python_path')})"),
        ("OS", str(info.get("os"))),
        ("load average before / after", f"{info.get('load')} / {info.get('load_after')}"),
        ("bench took", f"{total_s:.0f} s"),
    ]))
    busy = (info.get("load") or [0])[0] > 0.5 * (info.get("nproc") or 1)
    if busy:
        parts.append("**These figures were taken on a busy machine** (other processes were "
                     "running: see the load average), so they are worse than a quiet machine "
                     "would give. Re-run `bench/run` on a quiet machine for figures to "
                     "compare.\n")
    parts.append("## Targets\n\n| target | figure | result |\n|---|---|---|\n" + "".join(
        f"| {name} | {text} | {'pass' if ok else '**FAIL**'} |\n" for name, text, ok in verdicts))
    if notes:
        parts.append("\n".join(f"- {n}" for n in notes) + "\n")

    d = results.get("dispatch")
    if d:
        parts.append(f"## 1. Dispatch overhead\n\n{d['tasks']} independent instant tasks at "
                     f"`-j {d['jobs']}`: `python qw.pyz run` against the same fake claude run "
                     f"{d['tasks']} times by `xargs -P {d['jobs']} -n 1`.\n\n" + _table([
                         ("qw wall (median)", _s(d["qw_wall_s"])),
                         ("xargs wall (median)", _s(d["xargs_wall_s"])),
                         ("qw / xargs", f"{d['ratio']:.1f}x"),
                         ("**qw's overhead per task**: (qw wall − xargs wall) / tasks",
                          _ms(d["overhead_ms"])),
                         ("worker-time per task beyond xargs's (definition below)",
                          _ms(d["worker_time_ms"])),
                         ("... with the fixed cost spread over the tasks",
                          _ms(d["worker_time_with_fixed_ms"])),
                         ("in-run worker-time per task (no startup/shutdown)",
                          _ms(d["in_run_overhead_ms"])),
                         ("extra CPU per task (qw's tree - xargs's tree)",
                          _ms(d["extra_cpu_ms_per_task"])),
                         ("CPU per task while the run goes: runner / state owner",
                          f"{d['runner_cpu_ms_per_task']:.1f} ms / "
                          f"{d['owner_cpu_ms_per_task']:.1f} ms"),
                         (f"qw fixed cost: 1 instant task at -j {d['jobs']}, wall",
                          _s(d["fixed_s"])),
                         (f"qw fixed cost: {d['jobs']} instant tasks at -j {d['jobs']} (the "
                          "whole pool starts), wall",
                          _s(d["fixed_wave_s"]) if "fixed_wave_s" in d else "-"),
                         ("the fake claude alone", _ms(d["bare_child_ms"])),
                         ("one attempt as the worker times it (median)", _ms(d["attempt_ms"])),
                         ("runner -> worker -> runner messaging per attempt (median)",
                          _ms(d["messaging_ms"])),
                         ("runner turnaround: a result -> the next start on that worker",
                          _ms(d["turnaround_ms"])),
                     ] + _attempt_rows(d.get("attempt_cost"))) + "\n" + OVERHEAD_DEFINITION)
    s = results.get("schedule")
    if s:
        parts.append(f"## 2. Schedule efficiency\n\n{s['tasks']} tasks of {s['task_s']} s in "
                     f"{s['levels']} levels (each task needs two of the level above) at "
                     f"`-j {s['jobs']}`.\n\n" + _table([
                         ("one task alone (the fake: a shell, `sleep 0.5`, `cat`), median",
                          f"{s['task_own_s']:.3f} s" if "task_own_s" in s else "-"),
                         ("lower bound = max(critical path, work / workers), of tasks "
                          "that long", _s(s["lower_bound_s"])),
                         ("makespan: first dispatch -> last result (median)",
                          _s(s["makespan_s"])),
                         ("**makespan / lower bound**", f"{s['ratio']:.3f}"),
                         (f"makespan / the bound for tasks of exactly {s['task_s']} s",
                          f"{s['nominal_ratio']:.3f}" if "nominal_ratio" in s else "-"),
                         ("makespan from the first child's start (pool start left out)",
                          f"{_s(s['child_span_s'])}: {s['child_ratio']:.3f}x the bound"),
                         ("wall of `qw run` (startup, shutdown too)", _s(s["wall_s"])),
                         ("wall / lower bound", f"{s['wall_ratio']:.3f}"),
                     ]))
    c = results.get("scale")
    if c:
        peak = c.get("peak_rss") or {}
        mib = lambda b: f"{b / 2**20:.0f} MiB"
        run = (f"{_s(c['run_wall_s'])}" if c["run_finished"] else
               f"**did not finish** within the {c['run_cap_s']:.0f} s cap: "
               f"{c['tasks_done']} of {c['tasks']} done")
        costs = c["state_cost"]
        rows = [("`qw plan` (median)", _s(c["plan_s"])),
                ("`qw status` after the run (median)", _s(c["status_s"])),
                (f"`qw run -j {c['jobs']}` of instant tasks", run),
                ("throughput, first / last tenth of the run",
                 f"{c['rate_first']:.1f} / {c['rate_last']:.1f} tasks/s"),
                ("journal size", f"{c['journal_bytes'] / 2**20:.2f} MiB: the run_started "
                 f"line listing every task {c['journal_started_bytes'] / 2**20:.2f} MiB, then "
                 f"{c['journal_bytes_per_task']:.0f} bytes per done task")]
        if peak:
            rows.append(("peak memory of qw's own processes (sum of PSS: shared pages counted once)",
                         f"{mib(peak['total'])}: runner {mib(peak['runner'])}, state owner "
                         f"{mib(peak['owner'])}, workers {mib(peak['workers'])}, guards "
                         f"{mib(peak['guards'])}, fork server and resource tracker "
                         f"{mib(peak.get('helpers', 0))}"))
        for n, cost in sorted(costs.items(), key=lambda kv: int(kv[0])):
            rows.append((f"one transition at {n} tasks: StateStore.record / via the state "
                         f"owner / one snapshot write",
                         f"{cost['direct']['median'] * 1e6:.0f} us / "
                         f"{cost['owner']['median'] * 1e6:.0f} us / "
                         f"{cost['snapshot_s'] * 1000:.1f} ms"))
        rows.append(("**per-transition cost of the state store, 10,000 tasks / 100 tasks**",
                     f"{c['state_ratio']:.2f}x"))
        rows.append(("CPU per task while the run goes: runner / state owner",
                     f"{c['runner_cpu_ms_per_task']:.1f} ms / "
                     f"{c['owner_cpu_ms_per_task']:.1f} ms"))
        if c.get("runner_ratio") == c.get("runner_ratio"):
            rows.append(("**runner CPU per task, 10,000 tasks / case 1's spec**",
                         f"{c['runner_ratio']:.1f}x"))
        parts.append(f"## 3. Scale\n\nA generated {c['tasks']}-task spec (each task names "
                     "its own file and a requirement; 100 chains of 100 through `_Depends:`)."
                     "\n\n" + _table(rows))
    u = results.get("startup")
    if u:
        parts.append("## 4. Startup\n\n" + _table([
            ("`python -c pass` (median)", _ms(u["bare_ms"])),
            ("`python qw.pyz --version` (median)", _ms(u["qw_ms"])),
            ("**difference**", _ms(u["delta_ms"])),
        ]))
    r = results.get("real_cli")
    if r:
        if "skipped" in r:
            parts.append(f"## 5. Real CLI\n\nSkipped: {r['skipped']}.\n")
        else:
            parts.append(f"## 5. Real CLI\n\n{r['tasks']} tasks, each one `claude -p` (the "
                         f"real CLI) against the tests' fake Anthropic API on loopback, at "
                         f"`-j {r['jobs']}`.\n\n" + _table([
                             ("makespan: first dispatch -> last result (median)",
                              _s(r["makespan_s"])),
                             ("sum of the tasks' own durations", _s(r["sum_durations_s"])),
                             (f"sum / {r['jobs']}", _s(r["bound_s"])),
                             ("**makespan / (sum / jobs)**", f"{r['ratio']:.3f}"),
                             ("makespan from the first child's start (pool start left out)",
                              f"{_s(r['child_span_s'])}: {r['child_ratio']:.3f}x"),
                             ("wall of `qw run`", _s(r["wall_s"])),
                         ]))
    notes = os.path.join(os.path.dirname(os.path.abspath(__file__)), "NOTES.md")
    if os.path.exists(notes):   # the analysis behind the figures, kept by hand
        with open(notes) as f:
            parts.append(f.read())
    return "\n".join(parts)


HEADER = """\
# qw benchmarks

qw's own cost, measured as a user would feel it: against `xargs -P` doing the same work,
against the schedule's lower bound, and on a large spec. Produced by

    {command} --markdown BENCHMARKS.md

(`bench/run` builds `qw.pyz` from the checkout into a temp dir, runs it with the Python of
a fresh venv, as a user's copy would run (no `.pth` start-up hooks from a shared
site-packages: `--python` picks another interpreter), runs every case several times and
prints medians; about 2-5 minutes; `--quick` for a smaller version). The tasks are
`bench/instant_claude`, a shell script standing in for `claude -p` (it reads the prompt,
sleeps `$BENCH_TASK_SLEEP` seconds if set, prints an init line and a success result), except
in case 5, which runs the real CLI against the tests' fake API. Every run pins `[run]
max_retries = 0` and `[plan] undeclared = "parallel"`.

"""

OVERHEAD_DEFINITION = """
**qw's overhead per task** is the time a user waits beyond what `xargs -P jobs` takes for
the same 500 commands, per task: (qw wall − xargs wall) / tasks, the fixed cost (the
interpreter, the state owner and the pool starting, the final writes) included. It sits
beside the qw/xargs wall-time ratio, from the same runs.

**Worker-time per task beyond xargs's** is the stricter figure: ((qw wall − qw wall with
`jobs` tasks) − (xargs wall − xargs wall with `jobs` tasks)) × jobs / (tasks − jobs), what
each task beyond the first wave adds to a worker's time, against xargs. The baseline is one
wave of `jobs` tasks, not one task, because a run starts no more workers than it has tasks.
On a machine with fewer cores than jobs (here 2 for `-j 8`) the run is CPU-bound and this
figure comes out at about jobs / cores × the extra CPU per task; with as many cores as jobs
it is about the extra CPU per task itself. "With the fixed cost spread over the tasks" is
(qw wall − xargs wall) × jobs / tasks.

The in-run figure uses qw's journal (first dispatch → last result) instead of qw's wall
time, so it leaves out the interpreter start, the pool's start and the shutdown. Extra CPU
per task counts every process of each tree (runner, state owner, workers, guards and
children against xargs and children), from `wait4`'s rusage. With 30-minute tasks, 5 ms per
task is 0.0003 %.
"""
