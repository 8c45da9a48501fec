"""The commands of the spec workflow: `new`, `workflow`, `approve`, `hook`, `consume`.

They wire qw.workflow, qw.approve, qw.hooks and qw.consume (which hold the logic) to the
command line.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

from qw.commands import repo_of
from qw.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, UsageError


def cmd_new(args: argparse.Namespace) -> int:
    from qw.commands import config_of
    from qw.workflow import new_spec

    repo = repo_of(args)
    return new_spec(repo, args.spec, args.description, config_of(args, repo), _say,
                    auto_approve=args.auto_approve)


def cmd_workflow(args: argparse.Namespace) -> int:
    from qw.commands import config_of
    from qw.workflow import advance_spec

    repo = repo_of(args)
    return advance_spec(repo, args.spec, config_of(args, repo), _say,
                        auto_approve=args.auto_approve)


def _say(line: str) -> None:
    """The workflow's lines, as they come (a workflow runs for minutes)."""
    print(line, flush=True)


def cmd_approve(args: argparse.Namespace) -> int:
    from qw.approve import approve, read_facts
    from qw.phases import next_command, where

    repo = repo_of(args)
    result = approve(repo, args.spec, args.phase)
    already = " (already approved)" if not (result.recorded or result.marker_written) else ""
    print(f"approved {result.phase} of {result.spec}{already}: {result.document}")
    position = where(read_facts(repo, result.spec))
    step = next_command(result.spec, position.phase, position.step)
    if step:
        print(f"next: {step}")
    return EXIT_OK


def cmd_hook(args: argparse.Namespace) -> int:
    from qw import hooks

    repo = repo_of(args)
    if args.action == "install":
        result = hooks.install(repo, hooks.qw_command(sys.executable, sys.argv[0]))
        changed = ", ".join(result.added + result.updated)
        print(f"{'installed' if changed else 'already installed'}: {changed or 'Stop, SubagentStop'}"
              f" hooks in {result.path} running `{result.command}`")
    elif args.action == "uninstall":
        result = hooks.uninstall(repo)
        print(f"removed qw's hooks from {', '.join(result.removed) or 'nothing'} in {result.path}"
              + (" (the file, which qw had created, is gone)" if result.file_removed else ""))
    else:   # reached only when `hook stop` is not the first words (main short-circuits it)
        return hooks.main()
    return EXIT_OK


def cmd_consume(args: argparse.Namespace) -> int:
    from qw.cli import main
    from qw.consume import FAILED, REFUSED, consume_once, consume_watch

    repo = repo_of(args)
    if not args.watch:
        result = consume_once(repo, main)
        print(result.line())
        if result.action == REFUSED:
            return EXIT_USAGE
        if result.action == FAILED:
            return result.exit_code or 1
        return EXIT_OK
    if not args.interval > 0:
        raise UsageError(f"--interval must be more than 0 seconds, got {args.interval:g}",
                         "qw consume --watch", "give the seconds between looks, e.g. 5")
    stop = _SignalFlag()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop.handler)
    consume_watch(repo, main, args.interval, stop,
                  on_result=lambda r: print(r.line(), flush=True))
    return EXIT_INTERRUPTED   # it runs until Ctrl-C or SIGTERM, like every qw stop by signal


class _SignalFlag:
    """The stop_event consume_watch waits on, set by a signal handler.

    A threading.Event would deadlock: the handler runs on the main thread, which may be
    inside Event.wait holding the Event's own lock. The handler only records the signal;
    waits are short sleeps that look at it (so a stop takes effect within STEP_S).
    """

    STEP_S = 0.2

    def __init__(self):
        self.signals = []

    def handler(self, signum, frame) -> None:
        self.signals.append(signum)

    def is_set(self) -> bool:
        return bool(self.signals)

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + max(0.0, timeout)
        while not self.signals and time.monotonic() < deadline:
            time.sleep(min(self.STEP_S, max(0.0, deadline - time.monotonic())))
        return bool(self.signals)
