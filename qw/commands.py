"""The commands behind `qw <command>`: each takes parsed arguments and returns an exit code.

They gather data from the pure core (spec, plan, config) and hand it to `qw.report` to
render; they never format output themselves. `run` lives in `qw.runner`, `doctor` in
`qw.doctor`; this module only wires them.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys
from typing import TYPE_CHECKING, Iterator, List, Tuple

from qw import report
from qw.errors import EXIT_OK, EXIT_USAGE, UsageError
from qw.specdir import SPECS_DIR, Spec, find_repo_root, load_spec, resolve_spec

if TYPE_CHECKING:   # `qw status` needs neither: config (tomllib) and plan load when used
    from qw.config import Config
    from qw.plan import Plan

# Flag name -> config key. Values stay strings here; config validates and types them.
RUN_FLAGS = {
    "jobs": "run.max_concurrent",
    "timeout": "run.timeout",
    "idle_timeout": "run.idle_timeout",
    "retries": "run.max_retries",
}


def repo_of(args: argparse.Namespace) -> str:
    """The repository root: `--repo`; else, for a SPEC given as a path, the repository that
    holds it; else the one holding the working directory (DESIGN §2)."""
    if getattr(args, "repo", None):
        repo = os.path.abspath(args.repo)
        if not os.path.isdir(repo):
            raise UsageError(f"not a directory: {args.repo}", where="--repo",
                             fix="give the repository's root folder")
        return repo
    found = find_repo_root(os.getcwd())
    spec = getattr(args, "spec", None)
    if not spec or not os.path.exists(spec) or _names_a_spec_of(found, spec):
        return found
    # `qw run ~/other/.claude/specs/x` from elsewhere: its config, state and steering docs
    # are that repository's, not the working directory's.
    folder = spec if os.path.isdir(spec) else os.path.dirname(os.path.abspath(spec))
    return find_repo_root(folder)


def _names_a_spec_of(repo: str, spec: str) -> bool:
    """Whether `spec` is a bare name of a spec folder under the repository's .claude/specs/."""
    bare = os.path.basename(spec) == spec and not spec.startswith(".")
    return bare and os.path.isdir(os.path.join(repo, SPECS_DIR, spec))


def config_of(args: argparse.Namespace, repo: str) -> Config:
    flags = {key: getattr(args, name) for name, key in RUN_FLAGS.items()
             if getattr(args, name, None) is not None}
    env = dict(os.environ)
    if getattr(args, "debug", False):
        env["QW_DEBUG"] = "1"
    from qw.config import load_config

    return load_config(repo, config_file=getattr(args, "config", None), env=env, flags=flags)


def spec_and_plan(args: argparse.Namespace, repo: str, config: Config) -> Tuple[Spec, Plan]:
    from qw.plan import build_plan

    spec = load_spec(resolve_spec(repo, args.spec))
    plan = build_plan(spec.tasks, dependencies=config.plan.dependencies,
                      undeclared=config.plan.undeclared)
    return spec, plan


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while the block runs, then as it was. For a
    command that reads a large spec or state once: 10,000 tasks make some 300,000 objects,
    none of them garbage the collector could free, yet it would walk the growing pile
    again and again (a tenth of `qw plan`'s time, issue 7)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def cmd_plan(args: argparse.Namespace) -> int:
    with collector_paused():
        repo = repo_of(args)
        config = config_of(args, repo)
        spec, plan = spec_and_plan(args, repo, config)
        if args.json:
            data = plan.to_json()
            status = {t.id: t.status for t in plan.tasks}
            for task in data["tasks"]:
                task["status"] = status[task["id"]]
            report.print_json(data)
        else:
            report.print_plan(spec, plan, explain=args.explain)
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    """Check everything a run would read; report every problem, not just the first."""
    from qw.validate import validate_all

    repo = repo_of(args)
    problems, summary = validate_all(repo, args.spec, config_file=args.config)
    report.print_validation(problems, summary)
    return EXIT_USAGE if problems else EXIT_OK


def cmd_config(args: argparse.Namespace) -> int:
    from qw.config import describe

    repo = repo_of(args)
    config = config_of(args, repo)
    rows = describe(config)
    if args.json:
        report.print_json({key: {"value": value, "source": source}
                           for key, value, source in rows})
    else:
        report.print_config(rows)
    return EXIT_OK


def cmd_init(args: argparse.Namespace) -> int:
    from qw.scaffold import write_scaffold

    repo = os.path.abspath(args.repo) if args.repo else os.getcwd()
    written, kept = write_scaffold(repo, force=args.force)
    report.print_init(repo, written, kept)
    return EXIT_OK


def check_task_ids(spec: Spec, plan: Plan, ids: List[str]) -> None:
    """Refuse a `--task` that names no task (or group) of the spec, before anything starts."""
    known = set(plan.deps) | set(plan.groups)
    for task_id in ids:
        if task_id not in known:
            raise UsageError(f"unknown task {task_id}", f"--task {task_id}",
                             f"use an id from {spec.paths.tasks} "
                             f"(`qw plan {spec.name}` lists them)")


def cmd_run(args: argparse.Namespace) -> int:
    repo = repo_of(args)
    config = config_of(args, repo)
    spec, plan = spec_and_plan(args, repo, config)
    check_task_ids(spec, plan, args.task)
    if args.dry_run:
        from qw.prompt import dry_run_report

        data = dry_run_report(spec, plan, config, only=args.task)
        if args.json:
            report.print_json(data)
        else:
            report.print_dry_run(data)
        return EXIT_OK
    from qw.runner import run_spec

    return run_spec(repo, spec, plan, config, only=args.task, json_output=args.json)


def cmd_status(args: argparse.Namespace) -> int:
    from qw.status import gather_status

    repo = repo_of(args)
    with collector_paused():
        views = gather_status(repo, args.spec)
    if args.json:
        report.print_json(views[0] if args.spec else views)
    elif not views:
        report.print_status(views)
    else:
        from qw.status import render_phase

        for view in views:   # each spec's table, then its workflow phase
            report.print_status([view])
            sys.stdout.write(render_phase(view))
    return EXIT_OK


def cmd_logs(args: argparse.Namespace) -> int:
    from qw.status import show_logs

    repo = repo_of(args)
    spec = resolve_spec(repo, args.spec)
    return show_logs(repo, spec.name, args.task, attempt=args.attempt, follow=args.follow,
                     raw=args.raw)


def cmd_doctor(args: argparse.Namespace) -> int:
    from qw.doctor import run_checks

    repo = repo_of(args)
    checks = run_checks(repo, config_file=args.config)
    report.print_doctor(checks)
    return 1 if any(c.required and not c.ok for c in checks) else EXIT_OK


def cmd_resources(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from qw.probe import get_probe

    snapshot = get_probe().snapshot()
    if args.json:
        report.print_json(asdict(snapshot))
    else:
        report.print_resources(snapshot)
    return EXIT_OK


def cmd_reset(args: argparse.Namespace) -> int:
    from qw.reset import reset

    repo = repo_of(args)
    result = reset(repo, args.spec, hard=args.hard, uncheck=args.uncheck, task=args.task)
    report.print_reset(result)
    return EXIT_OK


def cmd_backup(args: argparse.Namespace) -> int:
    from qw import backup

    repo = repo_of(args)
    if args.action == "create":
        report.print_backups([backup.create(repo, args.name)], created=True)
    elif args.action == "list":
        report.print_backups(backup.list_backups(repo))
    elif args.action == "restore":
        report.print_restore(backup.restore(repo, args.name))
    else:
        if args.days < 0:
            raise UsageError(f"--days must be 0 or more, got {args.days:g}", "qw backup clean",
                             "give the age in days past which backups are deleted")
        report.print_cleaned(backup.clean(repo, args.days), args.days)
    return EXIT_OK


def cmd_dashboard(args: argparse.Namespace) -> int:
    from qw.dashboard import banner, serve

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be 0 to 65535, got {args.port}", "qw dashboard",
                         "give a free port, or 0 to let the system pick one")
    server = serve(repo_of(args), host=args.host, port=args.port, token=args.token,
                   config_file=args.config)
    print(banner(server), flush=True)
    try:
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
    return EXIT_OK


def cmd_stats(args: argparse.Namespace) -> int:
    from qw.stats import compute_stats, render_stats

    stats = compute_stats(repo_of(args), args.spec)
    if args.json:
        report.print_json(stats)
    else:
        sys.stdout.write(render_stats(stats))
    return EXIT_OK
