"""The prompt one task's claude child receives, and the `run --dry-run` report. Pure.

A child gets what it needs for its own task and no more: the task's whole block, the
requirements and acceptance criteria it names, the paths it should build on, the design
sections that mention its files or requirements, the steering documents (capped), and
the rule that qw, not the child, marks tasks.md. Smaller prompts cost less and distract
less; `--dry-run` reports the size against "all spec documents" to keep us honest.
"""

from __future__ import annotations

import os
import re
import statistics
from typing import Dict, Iterable, List, Optional

DESIGN_CAP = 12000      # characters of design text per prompt
STEERING_CAP = 4000     # characters per steering document
REQUIREMENTS_CAP = 12000


def _cap(text: str, limit: int, path: str) -> str:
    text = text.strip("\n")
    if len(text) <= limit:
        return text
    return text[:limit].rstrip() + f"\n[... truncated: the whole text is in {path}]"


def _rel(spec, path: Optional[str]) -> str:
    if not path:
        return ""
    try:
        return os.path.relpath(path, spec.paths.repo)
    except ValueError:   # another drive on Windows
        return path


def build_prompt(spec, task) -> str:
    """The full prompt for `task` of `spec` (a qw.specdir.Spec)."""
    tasks_rel = _rel(spec, spec.paths.tasks)
    parts: List[str] = [
        f"You are implementing one task of the spec \"{spec.name}\" in this repository. "
        "qw runs the spec's tasks in parallel, each in its own Claude Code session, "
        "in this same working tree.",
        "## Your task\n\n" + task.block.strip("\n"),
    ]
    if task.parent and task.parent in spec.tasks:
        parent = spec.tasks[task.parent]
        parts.append(f"It is part of task {parent.id}: {parent.title}")

    if task.requirements and spec.requirements is not None:
        body = spec.requirements.excerpt(task.requirements)
        if body:
            parts.append("## Requirements this task implements\n\n"
                         + _cap(body, REQUIREMENTS_CAP, _rel(spec, spec.paths.requirements)))

    if task.leverage:
        parts.append("## Existing code to build on\n\n"
                     + "\n".join(f"- {p}" for p in task.leverage))

    if spec.design is not None:
        words = set(task.files) | set(task.leverage) | set(task.requirements)
        words |= {os.path.basename(p.rstrip("/")) for p in task.files if p}
        words = {w for w in words if w and w.lower() != "all"}
        sections = spec.design.relevant(sorted(words)) if words else []
        if sections:
            body = "\n\n".join(s.text.strip("\n") for s in sections)
            parts.append("## Relevant design\n\n"
                         + _cap(body, DESIGN_CAP, _rel(spec, spec.paths.design)))

    for doc in spec.steering:
        parts.append(f"## Project context: {doc.name}\n\n"
                     + _cap(doc.text, STEERING_CAP, _rel(spec, doc.path)))

    parts.append(
        "## Rules\n\n"
        "- Do this task only. Other tasks run at the same time in this working tree: "
        "leave files that this task does not name alone.\n"
        f"- Do not edit {tasks_rel} and do not tick any checkbox: qw marks the task done "
        "when you finish successfully.\n"
        "- Do not start other Claude Code sessions.\n"
        "- When you are done, reply with a short summary of what you changed.")
    return "\n\n".join(parts) + "\n"


def build_fix_prompt(spec, task, command: str, exit_code: Optional[int], output_tail: str,
                     resumed: bool) -> str:
    """The prompt of the attempt after a failed verify: the command, how it ended and the
    tail of its output, and the request to fix it. `resumed`: the child continues the
    failed attempt's session (`--resume`), which holds the task already; otherwise the
    failure follows the task's full prompt."""
    ended = (f"it exited with code {exit_code}" if exit_code is not None
             else "it did not finish in time and was stopped ([run] verify_timeout)")
    tail = output_tail.strip("\n") or "(no output)"
    # A fence longer than any run of backticks in the output: the output cannot close it.
    fence = "`" * max(3, 1 + max(map(len, re.findall("`+", tail)), default=0))
    failure = (
        "## Verification failed\n\n"
        f"After the work on task {task.id} ({task.title}) ended, qw ran its verification "
        f"command in the repository root:\n\n    {command}\n\n"
        f"and {ended}. The end of its output:\n\n{fence}\n{tail}\n{fence}\n\n"
        "Find the cause and fix the code so that this command passes. Do not disable, "
        "skip or weaken the checks it runs. qw runs the command again when you finish, "
        "and marks the task done only if it passes.")
    if not resumed:
        return build_prompt(spec, task) + "\n" + failure + "\n"
    tasks_rel = _rel(spec, spec.paths.tasks)
    return (failure + "\n\n"
            "Other tasks still run at the same time in this working tree: leave files that "
            f"this task does not name alone, do not edit {tasks_rel}, and do not start "
            "other Claude Code sessions. When you are done, reply with a short summary of "
            "what you changed.\n")


def all_documents_size(spec) -> int:
    """Characters of every spec document together: what a naive runner would send."""
    total = 0
    for path in (spec.paths.tasks, spec.paths.requirements, spec.paths.design):
        if path and os.path.exists(path):
            total += os.path.getsize(path)
    return total + sum(len(doc.text) for doc in spec.steering)


def dry_run_report(spec, plan, config, only: Optional[Iterable[str]] = None) -> Dict[str, object]:
    """What `qw run --dry-run` shows: the batches, and each task's command line and prompt."""
    from qw.agents import agent_of, load_agents
    from qw.claude import build_command
    from qw.worker import verify_argv

    agents = load_agents(spec.paths.repo)
    done = {t.id for t in plan.tasks if t.status == "done"}
    targets = plan.closure(list(only)) if only else [t.id for t in plan.tasks]
    targets = [t for t in targets if t not in done]
    wanted = set(targets)
    by_id = {t.id: t for t in plan.tasks}
    tasks = []
    for tid in targets:
        task = by_id[tid]
        agent = agent_of(task, agents, spec.paths.tasks)
        prompt = build_prompt(spec, task)
        verify = verify_argv(task, config.run, spec.paths.tasks)[0]
        tasks.append({"id": tid, "title": task.title, "agent": task.agent,
                      "command": build_command(config.claude, agent=agent,
                                               agents=[agent] if agent else ()),
                      "verify": list(verify) or None,
                      "prompt": prompt, "prompt_chars": len(prompt)})
    sizes = [t["prompt_chars"] for t in tasks] or [0]
    batches = [[t for t in batch if t in wanted] for batch in plan.batches()]
    return {
        "spec": spec.name,
        "max_concurrent": config.run.max_concurrent,
        "batches": [b for b in batches if b],
        "tasks": tasks,
        "prompt_sizes": {"median": int(statistics.median(sizes)), "max": max(sizes),
                         "all_documents": all_documents_size(spec)},
    }
