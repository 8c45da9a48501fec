"""The command line: parse arguments, dispatch to a command, map errors to exit codes.

This is the one place that turns a QwError into `qw: error: ...` and an exit code
(DESIGN §4). Commands live in `qw.commands`; each takes the parsed arguments and returns
an exit code. To add a command, add a `Command` to `COMMANDS`.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

from qw import __version__
from qw.errors import EXIT_INTERRUPTED, EXIT_USAGE, QwError, UsageError

_EPILOG = """\
exit codes: 0 done, 1 a task failed, 2 bad input, 3 spec locked by another run,
            75 paused (usage limit or budget: run again later), 130 interrupted
docs: README.md and config.example.toml; QW_DEBUG=1 shows tracebacks"""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is a UsageError (one line, exit 2), not a printed usage."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(message, where=self.prog, fix=f"see `{self.prog} --help`")


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: str  # "module:function" in qw.commands*, imported only when the command runs


def _spec_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC",
                   help="a spec name under .claude/specs/, or a path to a spec folder or tasks.md")


def _args_run(p: argparse.ArgumentParser) -> None:
    _spec_arg(p)
    p.add_argument("-j", "--jobs", metavar="N", help="worker processes ([run] max_concurrent)")
    p.add_argument("--timeout", metavar="D", help="wall-clock limit per attempt, e.g. 30m")
    p.add_argument("--idle-timeout", metavar="D", help="limit without any output, e.g. 10m")
    p.add_argument("--retries", metavar="N", help="retries per task after the first attempt")
    p.add_argument("--task", metavar="ID", action="append", default=[],
                   help="run only this task (and its unfinished dependencies); repeatable")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan and each task's prompt; start nothing")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _args_plan(p: argparse.ArgumentParser) -> None:
    _spec_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--explain", action="store_true", help="show why each dependency exists")


def _args_status(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC", nargs="?", help="a spec (default: every spec)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _args_logs(p: argparse.ArgumentParser) -> None:
    _spec_arg(p)
    p.add_argument("task", metavar="TASK", help="task id")
    p.add_argument("--attempt", metavar="N", type=int, help="attempt number (default: last)")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing as it grows")
    p.add_argument("--raw", action="store_true", help="print the stream-json lines as they are")


def _args_validate(p: argparse.ArgumentParser) -> None:
    _spec_arg(p)


def _args_none(p: argparse.ArgumentParser) -> None:
    pass


def _args_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _args_init(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="overwrite existing files")


COMMANDS: List[Command] = [
    Command("run", "run a spec's pending tasks in parallel", _args_run, "qw.commands:cmd_run"),
    Command("plan", "show the task graph: batches, edges, critical path", _args_plan,
            "qw.commands:cmd_plan"),
    Command("status", "task states, live while a run is going", _args_status,
            "qw.commands:cmd_status"),
    Command("logs", "a task's transcript", _args_logs, "qw.commands:cmd_logs"),
    Command("validate", "check spec, config and agents; list every problem", _args_validate,
            "qw.commands:cmd_validate"),
    Command("init", "write qw.toml and an example spec", _args_init, "qw.commands:cmd_init"),
    Command("config", "show the effective configuration and where each value came from",
            _args_config, "qw.commands:cmd_config"),
    Command("doctor", "check the claude CLI, git, Python, config and .qw/", _args_none,
            "qw.commands:cmd_doctor"),
]


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", help="config file (default: qw.toml)")
    common.add_argument("--repo", metavar="DIR", help="repository root (default: found from cwd)")
    common.add_argument("--debug", action="store_true", help="show tracebacks (QW_DEBUG=1)")

    parser = _Parser(prog="qw", description="Run a spec's task list as parallel, supervised, "
                     "headless Claude Code sessions.", epilog=_EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"qw {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.help,
                           parents=[common])
        command.add_arguments(p)
        p.set_defaults(_run=command.run)
    return parser


def _resolve(target: str) -> Callable[[argparse.Namespace], int]:
    module_name, func_name = target.split(":")
    module = __import__(module_name, fromlist=[func_name])
    return getattr(module, func_name)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run qw with `argv` (default sys.argv[1:]) and return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("QW_DEBUG", "") not in ("", "0") or "--debug" in argv
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "_run", None):
            parser.print_help()
            return EXIT_USAGE
        return _resolve(args._run)(args)
    except QwError as e:
        if debug:
            import traceback
            traceback.print_exc()
        print(f"qw: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("qw: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `qw status | head`: the reader went away; that is not an error of ours.
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
