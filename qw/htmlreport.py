"""A run as HTML: the timeline of its attempts (an SVG Gantt chart by worker), and the
static report `.qw/runs/<run>/report.html` written at the end of every run.

    RunHistory ──timeline_svg──► <svg> (the dashboard shows the very same one)
               ──render_report─► one self-contained page: no script, no outside file

Everything shown is escaped here: task titles and error messages are the user's text.
"""

from __future__ import annotations

import html
import os
import time
from typing import Dict, Optional, Sequence

from qw.durations import format_duration
from qw.history import AttemptRecord, History, RunHistory, peak_overlap
from qw.journal import atomic_write
from qw.state import INTERRUPTED, OK

REPORT_FILE = "report.html"

# Bar colours by how an attempt ended; the legend lists them in this order.
COLOURS = (("ok", "#2e9d57"), ("failed", "#d64545"), ("failed, retried", "#e8913a"),
           ("running", "#2f6fdf"), (INTERRUPTED, "#9aa0a6"))
_COLOUR = dict(COLOURS)
# Tick spacings for the time axis, in seconds: the first that gives at most 8 ticks.
_TICKS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200,
          10800, 21600, 43200, 86400)
_WIDTH, _LEFT, _RIGHT, _TOP, _LANE, _BAR = 1000, 78, 12, 24, 28, 20


def bar_kind(attempt: AttemptRecord) -> str:
    """The legend entry of an attempt's bar."""
    if attempt.outcome is None:
        return "running"
    if attempt.outcome == OK:
        return "ok"
    if attempt.outcome == INTERRUPTED:
        return INTERRUPTED
    return "failed, retried" if attempt.retried else "failed"


def timeline_svg(run: RunHistory, now: Optional[float] = None) -> str:
    """The run's attempts as bars on one lane per worker, over the run's time; a running
    attempt reaches `now` (default: the run's last event). Each bar holds a <title> (the
    tooltip: task, attempt, time, outcome) and data-task/-attempt/-outcome attributes."""
    attempts = run.attempts
    if not attempts:
        return ('<svg class="qw-timeline" xmlns="http://www.w3.org/2000/svg" '
                f'viewBox="0 0 {_WIDTH} 40" role="img"><text x="{_LEFT}" y="24" '
                'fill="#667085" font-size="13">no attempts yet</text></svg>')
    intervals = run.intervals(now)
    t0 = min(start for start, _ in intervals)
    if run.started_at is not None:
        t0 = min(t0, run.started_at)
    t1 = max(end for _, end in intervals)
    span = max(t1 - t0, 1.0)
    lanes = run.workers()
    height = _TOP + _LANE * len(lanes) + 26
    plot = _WIDTH - _LEFT - _RIGHT

    def x(t: float) -> float:
        return _LEFT + (t - t0) / span * plot

    parts = [f'<svg class="qw-timeline" xmlns="http://www.w3.org/2000/svg" '
             f'viewBox="0 0 {_WIDTH} {height}" role="img" '
             f'font-family="system-ui, sans-serif" font-size="12">',
             f'<title>attempts of run {_e(run.run_id)} by worker</title>']
    step = next((s for s in _TICKS if span / s <= 8), _TICKS[-1])
    tick = 0.0
    while tick <= span + 1e-9:
        at = x(t0 + tick)
        parts.append(f'<line x1="{at:.1f}" y1="{_TOP - 4}" x2="{at:.1f}" '
                     f'y2="{height - 26}" stroke="#e4e7ec"/>'
                     f'<text x="{at:.1f}" y="{_TOP - 8}" fill="#667085" text-anchor="middle">'
                     f'{_e(_offset(tick, step))}</text>')
        tick += step
    for lane, worker in enumerate(lanes):
        y = _TOP + lane * _LANE
        name = "worker ?" if worker is None else f"worker {worker}"
        parts.append(f'<text class="lane" x="4" y="{y + _LANE / 2 + 4:.1f}" '
                     f'fill="#1d2330">{_e(name)}</text>')
    for attempt, (start, end) in zip(attempts, intervals):
        kind = bar_kind(attempt)
        y = _TOP + lanes.index(attempt.worker) * _LANE + (_LANE - _BAR) / 2
        left, width = x(start), max(x(end) - x(start), 2.0)
        parts.append(
            f'<g class="bar" data-task="{_e(attempt.task)}" data-attempt="{attempt.attempt}" '
            f'data-outcome="{_e(attempt.outcome or "running")}">'
            f'<title>{_e(_tooltip(attempt, start, end))}</title>'
            f'<rect x="{left:.1f}" y="{y:.1f}" width="{width:.1f}" height="{_BAR}" rx="3" '
            f'fill="{_COLOUR[kind]}"/>')
        label = attempt.task if attempt.attempt <= 1 else f"{attempt.task} #{attempt.attempt}"
        if width >= 7 * len(label) + 8:
            parts.append(f'<text x="{left + 4:.1f}" y="{y + _BAR - 6:.1f}" fill="#fff">'
                         f'{_e(label)}</text>')
        parts.append("</g>")
    legend_x = _LEFT
    for name, colour in COLOURS:
        parts.append(f'<rect x="{legend_x}" y="{height - 16}" width="10" height="10" rx="2" '
                     f'fill="{colour}"/><text x="{legend_x + 14}" y="{height - 7}" '
                     f'fill="#667085">{_e(name)}</text>')
        legend_x += 24 + 7 * len(name)
    parts.append("</svg>")
    return "".join(parts)


def _tooltip(attempt: AttemptRecord, start: float, end: float) -> str:
    head = f"task {attempt.task}, attempt {attempt.attempt}"
    if attempt.worker is not None:
        head += f", worker {attempt.worker}"
    took = format_duration(attempt.duration_s if attempt.duration_s is not None
                           else end - start)
    outcome = attempt.outcome or "running"
    if attempt.message and attempt.outcome != OK:
        outcome += f": {attempt.message}"
    return f"{head}\n{took}, {outcome}"


def _offset(seconds: float, step: float) -> str:
    """A tick's label: +0.5s (steps under a second), +30s, +2m, +1h05m."""
    if seconds < step / 2:
        return "0"
    if step < 1:
        return f"+{seconds:.1f}s"
    if seconds < 60:
        return f"+{seconds:.0f}s"
    return "+" + format_duration(seconds)


# ----- the static report


def write_report(qw_dir: str, run_id: str, now: Optional[float] = None) -> str:
    """Write `.qw/runs/<run_id>/report.html` (atomically) from the run's journal and
    transcripts, and return its path. ValueError if there is no such run."""
    run = History(qw_dir).run(run_id)
    if run is None:
        raise ValueError(f"no run {run_id!r} under {qw_dir}")
    path = os.path.join(qw_dir, "runs", run_id, REPORT_FILE)
    atomic_write(path, render_report(run, now=now).encode("utf-8"))
    return path


def render_report(run: RunHistory, now: Optional[float] = None) -> str:
    """The report page: summary, timeline, tasks, failed attempts (linking each to its
    transcript, a file next to the report)."""
    from qw.dashboard_page import CSS

    totals = run.totals()
    written = time.time() if now is None else now
    cards = [("status", run.status), ("tasks done", f"{totals.get('done', 0)}/"
                                                    f"{totals.get('tasks', 0)}"),
             ("failed", str(totals.get("failed", 0))),
             ("attempts", str(len(run.attempts))),
             ("cost", f"${totals.get('cost_usd', 0) or 0:.4f}"),
             ("tokens in / out", f"{totals['input_tokens']:,} / {totals['output_tokens']:,}"),
             ("wall time", _wall_time(run)),
             ("peak concurrency", str(peak_overlap(run.intervals()))),
             ("peak memory", _peak_memory(run.attempts))]
    body = [f"<header><h1>qw run {_e(run.run_id)}</h1>"
            f"<span>spec {_e(run.spec or '?')}</span>"
            f"<span class=\"mute\">{_e(_when(run))}</span></header><main>",
            '<section class="cards" id="summary">'
            + "".join(f'<div class="card"><div class="k">{_e(k)}</div>'
                      f'<div class="v">{_e(v)}</div></div>' for k, v in cards)
            + "</section>"]
    if run.stop_reason:
        body.append(f'<section class="err">stopped: {_e(run.stop_reason)}</section>')
    if run.warning:
        body.append(f'<section class="err">{_e(run.warning)}</section>')
    body.append('<section><h2>Timeline</h2><div class="timeline" id="timeline">'
                + timeline_svg(run) + "</div></section>")
    body.append("<section><h2>Tasks</h2>" + _tasks_table(run.view.get("tasks", []))
                + "</section>")
    body.append("<section><h2>Failed attempts</h2>" + _errors_list(run.attempts)
                + "</section>")
    body.append(f'<footer class="mute">written by qw at {_e(_clock(written))}</footer></main>')
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>qw run {_e(run.run_id)}</title><style>{CSS}</style></head>"
            "<body>" + "".join(body) + "</body></html>\n")


def _tasks_table(tasks: Sequence[Dict[str, object]]) -> str:
    if not tasks:
        return '<p class="mute">no tasks</p>'
    rows = []
    for t in tasks:
        duration = float(t.get("duration_s") or 0.0)   # type: ignore[arg-type]
        cost = float(t.get("cost_usd") or 0.0)         # type: ignore[arg-type]
        rows.append(
            f'<tr data-task="{_e(str(t["id"]))}"><td>{_e(str(t["id"]))}</td>'
            f'<td>{_e(str(t.get("title") or ""))}</td>'
            f'<td><span class="status {_e(str(t["status"]))}">{_e(str(t["status"]))}</span></td>'
            f'<td>{t.get("attempts", 0)}</td>'
            f'<td>{_e(format_duration(duration)) if duration else "-"}</td>'
            f'<td>{f"${cost:.4f}" if cost else "-"}</td>'
            f'<td class="err">{_e(str(t.get("error") or ""))}</td></tr>')
    return ('<table id="tasks"><tr><th>task</th><th>title</th><th>status</th><th>tries</th>'
            '<th>time</th><th>cost</th><th>error</th></tr>' + "".join(rows) + "</table>")


def _errors_list(attempts: Sequence[AttemptRecord]) -> str:
    failed = [a for a in attempts if a.failed]
    if not failed:
        return '<p class="mute">none</p>'
    items = []
    for a in failed:
        items.append(f'<li class="error" data-task="{_e(a.task)}"><b>task {_e(a.task)}</b> '
                     f'attempt {a.attempt}: <span class="err">{_e(a.outcome or "")}</span> '
                     f'{_e(a.message or "")} <a href="{_e(a.transcript)}">transcript</a></li>')
    return '<ul class="errors" id="errors">' + "".join(items) + "</ul>"


def _peak_memory(attempts: Sequence[AttemptRecord]) -> str:
    peaks = [a.peak_rss_mb for a in attempts if a.peak_rss_mb is not None]
    return f"{max(peaks):,.0f} MB" if peaks else "-"


def _wall_time(run: RunHistory) -> str:
    end = run.ended_at or run.last_event_at
    if run.started_at is None or end is None:
        return "-"
    return format_duration(max(0.0, end - run.started_at))


def _when(run: RunHistory) -> str:
    if run.started_at is None:
        return ""
    text = f"started {_clock(run.started_at)}"
    if run.ended_at is not None:
        text += f", ended {_clock(run.ended_at)}"
    return text


def _clock(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(t))


def _e(text: str) -> str:
    return html.escape(text, quote=True)

