"""`qw status` and `qw logs`: what a run did or is doing, read from outside the run.

Live: ask the run's state owner over its manager connection. Otherwise: the last snapshot
(plus its journal). A spec never run: its tasks.md checkboxes.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time
from typing import Dict, List, Optional

from qw.errors import EXIT_OK, UsageError


def gather_status(repo: str, spec_arg: Optional[str]) -> List[Dict[str, object]]:
    """One status view (DESIGN §4 shape) per spec: the one asked for, or every spec."""
    from qw.specdir import list_specs, load_spec, resolve_spec

    qw_dir = os.path.join(repo, ".qw")
    names = [resolve_spec(repo, spec_arg)] if spec_arg else \
        [resolve_spec(repo, n) for n in list_specs(repo)]
    views = []
    for paths in names:
        warnings: List[str] = []
        view = _live_view(qw_dir, paths.name) or \
            _stored_view(qw_dir, paths.name, paths.tasks, warnings)
        if view is None:
            view = _unrun_view(load_spec(paths)) if os.path.lexists(paths.tasks) else \
                _no_tasks_view(paths.name)
        if warnings:
            view["warnings"] = warnings
        view.update(_phase(repo, paths.name, view))
        views.append(view)
    return views


def _no_tasks_view(spec: str) -> Dict[str, object]:
    """A spec whose tasks.md is not written yet (the workflow is at its documents)."""
    return {"spec": spec, "run_id": None, "live": False, "tasks": [],
            "totals": {"tasks": 0, "done": 0, "failed": 0, "running": 0, "pending": 0,
                       "cost_usd": 0.0, "duration_s": 0.0, "attempts": 0}}


def _phase(repo: str, spec: str, view: Dict[str, object]) -> Dict[str, object]:
    """The spec's workflow phase (qw.phases), for the view: "phase", "phase_line" and the
    command that advances it ("next_command", None when none can). All None for a spec
    outside the workflow: a tasks.md alone, never given to `qw new`, `qw workflow` or
    `qw approve`, is simply run."""
    from qw.approve import read_facts, state_path
    from qw.errors import QwError
    from qw.phases import next_command, phase_line, where
    from qw.specdir import SPECS_DIR

    none = {"phase": None, "phase_line": None, "next_command": None}
    folder = os.path.join(repo, SPECS_DIR, spec)
    if not (os.path.exists(state_path(repo, spec)) or
            any(os.path.lexists(os.path.join(folder, name))
                for name in ("requirements.md", "design.md"))):
        return none
    try:
        position = where(read_facts(repo, spec, quick=True))
    except QwError:   # documents qw cannot read: the task table still stands
        return none
    totals = view.get("totals") or {}
    return {"phase": position.phase,
            "phase_line": phase_line(position, totals.get("done"), totals.get("tasks")),
            "next_command": next_command(spec, position.phase, position.step)}


def render_phase(view: Dict[str, object]) -> str:
    """The lines `qw status` adds under a spec's table: its phase and what advances it."""
    if not view.get("phase_line"):
        return ""
    text = f"phase: {view['phase_line']}\n"
    if view.get("next_command"):
        text += f"next: {view['next_command']}\n"
    return text


def _live_view(qw_dir: str, spec: str) -> Optional[Dict[str, object]]:
    from qw.statestore import live_pointer_path
    if not os.path.exists(live_pointer_path(qw_dir, spec)):
        return None   # no run is live: no need for multiprocessing's managers (~60 ms)
    from qw.stateowner import connect_live

    proxy = connect_live(qw_dir, spec)
    if proxy is None:
        return None
    try:
        view = dict(proxy.view())
    except (OSError, EOFError, ConnectionError):
        return None   # the run ended between connecting and asking
    view["live"] = True
    return view


def _stored_view(qw_dir: str, spec: str, tasks_path: str,
                 warnings: List[str]) -> Optional[Dict[str, object]]:
    """The stored state's view, or None if there is none; what loading it had to rebuild
    is added to `warnings` either way (damage that left nothing to rebuild is news too)."""
    from qw.statestore import IN_MEMORY, StateStore
    from qw.state import recover_interrupted

    # Without the spec's lock: damaged state is rebuilt in memory only, never rewritten.
    store = StateStore(qw_dir, spec, recover=IN_MEMORY, tasks_path=tasks_path)
    state = store.load()
    warnings.extend(store.warnings)
    if state is None:
        return None
    # No live owner: whatever the last run left "running" died with it.
    for event in recover_interrupted(state, time.time()):
        state.apply(event)
    return state.view(live=False)


def _unrun_view(spec) -> Dict[str, object]:
    tasks = []
    for t in spec.tasks:
        if t.is_group:
            continue
        status = "done" if t.status == "done" else "pending"
        tasks.append({"id": t.id, "title": t.title, "status": status, "attempts": 0,
                      "duration_s": 0.0, "cost_usd": 0.0, "error": None})
    done = sum(1 for t in tasks if t["status"] == "done")
    return {"spec": spec.name, "run_id": None, "live": False, "tasks": tasks,
            "totals": {"tasks": len(tasks), "done": done, "failed": 0, "running": 0,
                       "pending": len(tasks) - done, "cost_usd": 0.0, "duration_s": 0.0,
                       "attempts": 0}}


# ----- logs


def transcripts(qw_dir: str, task_id: str) -> List[str]:
    """Every transcript of the task, oldest run first, attempts in order."""
    def key(path: str):
        run = os.path.basename(os.path.dirname(path))
        attempt = path.rsplit(".", 2)[-2]
        return (run, int(attempt) if attempt.isdigit() else 0)

    pattern = os.path.join(qw_dir, "runs", "*", glob.escape(task_id) + ".*.jsonl")
    return sorted(glob.glob(pattern), key=key)


def show_logs(repo: str, spec: str, task_id: str, attempt: Optional[int] = None,
              follow: bool = False, raw: bool = False, out=None) -> int:
    """Print the task's last transcript (or attempt N of its last run), then the output of
    its verify command if one ran (`<task>.<attempt>.verify.log` beside the transcript)."""
    out = out or sys.stdout
    qw_dir = os.path.join(repo, ".qw")
    found = transcripts(qw_dir, task_id)
    if attempt is not None:
        last_run = os.path.dirname(found[-1]) if found else None
        found = [p for p in found if os.path.dirname(p) == last_run
                 and p.endswith(f".{attempt}.jsonl")]
    if not found:
        raise UsageError(f"no transcript for task {task_id}"
                         + (f" attempt {attempt}" if attempt is not None else ""),
                         where=os.path.join(qw_dir, "runs"),
                         fix=f"run it first (`qw run {spec}`), or check the id with "
                             f"`qw status {spec}`")
    path = found[-1]
    out.write(f"# {os.path.relpath(path, repo)}\n")

    def show(line: bytes) -> None:
        out.write(line.decode("utf-8", "replace") if raw else render_event(line))
        out.flush()

    def show_text(line: bytes) -> None:
        out.write(line.decode("utf-8", "replace"))
        out.flush()

    def running() -> bool:
        return _still_running(qw_dir, spec, task_id)

    _tail(path, show, follow, running, until=b'"type":"result"')
    verify_log = path[:-len(".jsonl")] + ".verify.log"
    # The verify command starts once the child has ended: while the attempt still runs,
    # its log may be yet to come.
    while follow and not os.path.exists(verify_log) and running():
        time.sleep(0.2)
    if os.path.exists(verify_log):
        out.write(f"# {os.path.relpath(verify_log, repo)}\n")
        _tail(verify_log, show_text, follow, running)
    return EXIT_OK


def _tail(path: str, show, follow: bool, running, until: Optional[bytes] = None) -> None:
    """Show each line of `path`; with `follow`, go on showing what is added while
    `running()` says the attempt goes on (or until a line holding `until`)."""
    with open(path, "rb") as f:
        while True:
            at = f.tell()
            line = f.readline()
            if line.endswith(b"\n") or (line and not follow):
                show(line)
                if follow and until and until in line.replace(b" ", b""):
                    return
                continue
            f.seek(at)   # nothing new, or a line still being written: read it again whole
            if not follow:
                return
            if not running():
                # It ended after the last read: what it wrote until then is still to show.
                for line in f:
                    show(line)
                return
            time.sleep(0.2)   # tailing a file: polling is the portable way to follow it


def _still_running(qw_dir: str, spec: str, task_id: str) -> bool:
    view = _live_view(qw_dir, spec)
    if view is None:
        return False
    return any(t["id"] == task_id and t["status"] == "running" for t in view["tasks"])


def render_event(line: bytes) -> str:
    """One stream-json line as a short human line (empty for events of no interest)."""
    try:
        event = json.loads(line)
    except ValueError:
        return line.decode("utf-8", "replace")
    kind = event.get("type")
    if kind == "system" and event.get("subtype") == "init":
        return f"[init] model {event.get('model')}, cwd {event.get('cwd')}\n"
    if kind == "system" and event.get("subtype") == "api_retry":
        return (f"[api retry {event.get('attempt')}] {event.get('error_status')} "
                f"{event.get('error')}\n")
    if kind in ("assistant", "user"):
        lines = []
        for block in (event.get("message") or {}).get("content") or []:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text" and block.get("text", "").strip():
                lines.append(f"[{kind}] {block['text'].strip()}")
            elif block.get("type") == "tool_use":
                lines.append(f"[tool] {block.get('name')} "
                             f"{json.dumps(block.get('input'), ensure_ascii=False)[:300]}")
            elif block.get("type") == "tool_result":
                content = block.get("content")
                if isinstance(content, list):
                    content = " ".join(c.get("text", "") for c in content if isinstance(c, dict))
                lines.append(f"[result] {str(content)[:300]}")
        return "".join(l + "\n" for l in lines)
    if kind == "result":
        return (f"[end] {event.get('subtype')} is_error={event.get('is_error')} "
                f"turns={event.get('num_turns')} cost=${event.get('total_cost_usd') or 0:.4f}\n"
                f"{event.get('result') or ''}\n")
    return ""
