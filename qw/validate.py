"""`qw validate`: every problem a run would trip over, each with file:line, not just the first.

Parsers raise on their first error (a run must stop there); validation keeps going past
each layer that can still be checked: config, then the spec, then its plan and agents.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Dict, List, Optional, Tuple

from qw.errors import QwError


def validate_all(repo: str, spec_arg: str,
                 config_file: Optional[str] = None) -> Tuple[List[str], Dict[str, object]]:
    """Return (problems, summary). Problems are one-line messages; empty means valid."""
    from qw.agents import load_agents
    from qw.config import load_config
    from qw.plan import build_plan
    from qw.specdir import load_spec, resolve_spec

    problems: List[str] = []
    summary: Dict[str, object] = {"repo": repo}

    config = None
    try:
        config = load_config(repo, config_file=config_file)
    except QwError as e:
        problems.append(str(e))

    spec = None
    try:
        spec = load_spec(resolve_spec(repo, spec_arg))
        summary["spec"] = spec.name
        summary["tasks"] = len(spec.tasks)
    except QwError as e:
        problems.append(str(e))

    agents = {}
    try:
        agents = load_agents(repo)
        summary["agents"] = sorted(agents)
    except QwError as e:
        problems.append(str(e))

    if spec is None:
        return problems, summary

    try:
        plan = build_plan(spec.tasks,
                          dependencies=config.plan.dependencies if config else "infer",
                          undeclared=config.plan.undeclared if config else "serial")
        summary["runnable"] = len(plan.tasks)
        summary["batches"] = len(plan.batches())
    except QwError as e:
        problems.append(str(e))

    from qw.worker import verify_argv

    where = spec.paths.tasks
    run = config.run if config else SimpleNamespace(verify="")   # broken config: said above
    for task in spec.tasks:
        try:
            verify_argv(task, run, where)
        except QwError as e:   # a [run] verify that cannot be split: once, not per task
            if str(e) not in problems:
                problems.append(str(e))
        if task.agent and task.agent not in agents:
            known = ", ".join(sorted(agents)) or "none defined"
            problems.append(f"task {task.id} names unknown agent '{task.agent}', "
                            f"{where}:{task.line}; define .claude/agents/{task.agent}.md "
                            f"(known: {known})")
        if spec.requirements is not None:
            missing = spec.requirements.unresolved(task.requirements)
            if missing:
                problems.append(f"task {task.id} refers to requirement "
                                f"{', '.join(missing)} that requirements.md does not define, "
                                f"{where}:{task.line}; fix the _Requirements: line or add it")
    return problems, summary
