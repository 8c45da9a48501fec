"""The command line: parse arguments, dispatch to a command, map errors to exit codes.

This is the one place that turns a QwError into `qw: error: ...` and an exit code
(DESIGN §4). Commands live in `qw.commands`; each takes the parsed arguments and returns
an exit code. To add a command, add a `Command` to `COMMANDS`.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

from qw import __version__
from qw.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, QwError, UsageError
from qw.report import short_paths

_EPILOG = """\
exit codes: 0 done, 1 a task failed, 2 bad input, 3 spec locked by another run,
            75 paused (usage limit or budget: run again later), 130 interrupted
docs: README.md and config.example.toml; QW_DEBUG=1 shows tracebacks"""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is a UsageError (one line, exit 2), not a printed usage."""

    def error(self, message: str):  # type: ignore[override]
        raise (_unknown_command(message)
               or UsageError(_reword(message), where=self.prog, fix=f"see `{self.prog} --help`"))


# argparse's own messages, reworded to read as qw's; any other message is kept as it is.
_TYPE_WORDS = {"int": "a whole number", "float": "a number"}
_ARGPARSE_MESSAGES = (
    (re.compile(r"^the following arguments are required: (.*)$"),
     lambda m: f"missing {m.group(1)}"),
    (re.compile(r"^argument (\S+): expected one argument$"),
     lambda m: f"{m.group(1)} needs a value"),
    (re.compile(r"^argument (\S+): invalid (\w+) value: (.*)$"),
     lambda m: f"{m.group(1)} must be {_TYPE_WORDS.get(m.group(2), m.group(2))}, "
               f"got {m.group(3)}"),
)


def _reword(message: str) -> str:
    for pattern, reword in _ARGPARSE_MESSAGES:
        found = pattern.match(message)
        if found:
            return reword(found)
    return message


def _unknown_command(message: str) -> Optional[UsageError]:
    """argparse's "invalid choice" for COMMAND, as qw says it (with a close match)."""
    found = re.search(r"argument COMMAND: invalid choice: '?([^' ]*)'?", message)
    if not found:
        return None
    names = [c.name for c in COMMANDS]
    near = difflib.get_close_matches(found.group(1), names, n=1, cutoff=0.7)
    fix = (f"did you mean {near[0]}?" if near else "the commands are " + ", ".join(names))
    return UsageError(f"unknown command {found.group(1)!r}", "qw", fix + " (see `qw --help`)")


def _unrecognized(extras: List[str], prog: str,
                  parser: argparse.ArgumentParser) -> UsageError:
    """What argparse calls "unrecognized arguments", named for the command they were given to."""
    fix = f"see `{prog} --help`"
    options = [a for a in extras if a.startswith("-")]
    if options:
        known = [s for action in parser._actions for s in action.option_strings]
        near = difflib.get_close_matches(options[0].split("=")[0], known, n=1, cutoff=0.7)
        if near:
            fix = f"did you mean {near[0]}? ({fix})"
        what = (f"unknown option {options[0]}" if len(extras) == 1
                else "unknown arguments " + " ".join(extras))
    else:
        what = f"unexpected argument {' '.join(extras)!r}"
    return UsageError(what, prog, fix)


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


def _args_reset(p: argparse.ArgumentParser) -> None:
    _spec_arg(p)
    p.add_argument("--hard", action="store_true",
                   help="forget all of qw's state for the spec (transcripts are kept)")
    p.add_argument("--uncheck", action="store_true",
                   help="with --hard: also untick the tasks qw checked in tasks.md")
    p.add_argument("--task", metavar="ID", help="reset this task only")


def _args_backup(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="action", metavar="ACTION", parser_class=type(p))
    actions.required = True
    create = actions.add_parser("create", help="back up .qw/ state and tasks.md of every spec")
    create.add_argument("name", metavar="NAME", nargs="?", help="default: the UTC time")
    actions.add_parser("list", help="the backups, newest last")
    restore = actions.add_parser("restore", help="put a backup's state and tasks.md back")
    restore.add_argument("name", metavar="NAME")
    clean = actions.add_parser("clean", help="delete backups older than N days")
    clean.add_argument("--days", metavar="N", type=float, required=True)
    for sub in (create, restore, clean):
        _add_common(sub, argparse.SUPPRESS)
    p.set_defaults(_backup_parsers=True)


def _args_dashboard(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", metavar="N", type=int, default=8080,
                   help="port to listen on (default 8080; 0 picks a free one)")
    p.add_argument("--host", metavar="ADDR", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; any other needs a token)")
    p.add_argument("--token", metavar="TOKEN",
                   help="the token every request must carry (default: a random one when "
                        "not on loopback)")


def _args_approve(p: argparse.ArgumentParser) -> None:
    _spec_arg(p)
    p.add_argument("phase", metavar="PHASE", nargs="?",
                   choices=("requirements", "design", "tasks"),
                   help="requirements, design or tasks (default: the next unapproved one)")


def _args_new(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC", help="the new spec's name (.claude/specs/SPEC/)")
    p.add_argument("description", metavar="DESCRIPTION",
                   help="what the feature does, in a sentence or a page (quote it)")
    _auto_approve_arg(p)


def _args_workflow(p: argparse.ArgumentParser) -> None:
    _spec_arg(p)
    _auto_approve_arg(p)


def _auto_approve_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--auto-approve", action="store_true",
                   help="approve each document once it validates and go on, instead of "
                        "stopping at each gate ([workflow] auto_progression)")


def _args_hook(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", metavar="ACTION", choices=("install", "uninstall", "stop"),
                   help="install or uninstall qw's Stop/SubagentStop hooks in "
                        ".claude/settings.json; stop is what the hook runs")


def _args_consume(p: argparse.ArgumentParser) -> None:
    p.add_argument("--watch", action="store_true",
                   help="keep watching .claude/next_command.txt until Ctrl-C")
    p.add_argument("--interval", metavar="S", type=float, default=5.0,
                   help="seconds between looks with --watch (default 5)")


def _args_json_only(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


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
    Command("resources", "CPU and memory as admission control sees them, and the backend",
            _args_json_only, "qw.commands:cmd_resources"),
    Command("reset", "forget failures (soft) or all state (--hard) of a spec; backs up first",
            _args_reset, "qw.commands:cmd_reset"),
    Command("backup", "create, list, restore or clean backups of qw's state", _args_backup,
            "qw.commands:cmd_backup"),
    Command("dashboard", "a live, read-only dashboard in the browser (loopback by default)",
            _args_dashboard, "qw.commands:cmd_dashboard"),
    Command("stats", "attempts, success rate, durations, cost and retries, per agent",
            _args_status, "qw.commands:cmd_stats"),
    Command("new", "create a spec from a description: requirements, design, tasks, with "
            "approval gates", _args_new, "qw.workflow_commands:cmd_new"),
    Command("workflow", "carry a spec on to its next gate: documents, run, tests, review",
            _args_workflow, "qw.workflow_commands:cmd_workflow"),
    Command("approve", "approve a spec document (writes the ✅ APPROVED marker)",
            _args_approve, "qw.workflow_commands:cmd_approve"),
    Command("hook", "install or remove the Claude Code hooks that suggest the next step",
            _args_hook, "qw.workflow_commands:cmd_hook"),
    Command("consume", "run the suggested next qw command from .claude/next_command.txt",
            _args_consume, "qw.workflow_commands:cmd_consume"),
]


def _add_common(p: argparse.ArgumentParser, default: object) -> None:
    """The options every command takes, before or after the command name."""
    p.add_argument("--config", metavar="FILE", default=default,
                   help="config file (default: qw.toml or .claude/qw.toml)")
    p.add_argument("--repo", metavar="DIR", default=default,
                   help="repository root (default: found from the working directory)")
    p.add_argument("--debug", action="store_true", default=default,
                   help="show tracebacks (QW_DEBUG=1)")


def build_parser() -> argparse.ArgumentParser:
    # The common options are on the top parser (defaults) and on each command's parser
    # (SUPPRESS), so `qw --repo X plan s` and `qw plan s --repo X` both work and a
    # command's parser never overwrites a value given before the command name.
    common = argparse.ArgumentParser(add_help=False)
    _add_common(common, argparse.SUPPRESS)

    parser = _Parser(prog="qw", description="Run a spec's task list as parallel, supervised, "
                     "headless Claude Code sessions.", epilog=_EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"qw {__version__}")
    _add_common(parser, None)
    parser.set_defaults(debug=False)
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


def _parse(parser: argparse.ArgumentParser, argv: List[str]) -> argparse.Namespace:
    """Parse `argv`; arguments nobody knows are an error naming the command they followed."""
    args, extras = parser.parse_known_args(argv)
    if extras:
        command = getattr(args, "command", None)
        if command:
            sub = next(a for a in parser._actions
                       if isinstance(a, argparse._SubParsersAction))
            raise _unrecognized(extras, f"qw {command}", sub.choices[command])
        raise _unrecognized(extras, "qw", parser)
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run qw with `argv` (default sys.argv[1:]) and return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["hook", "stop"]:
        # Run by Claude Code at every Stop: silent, fast, and exit 0 whatever happens (a
        # broken hook must not break the user's session), so no argument parsing at all.
        from qw.hooks import main as hook_main
        return hook_main()
    debug = os.environ.get("QW_DEBUG", "") not in ("", "0") or "--debug" in argv
    args = None
    try:
        parser = build_parser()
        try:
            args = _parse(parser, argv)
        except SystemExit as done:    # --help and --version print, then exit 0
            return done.code if isinstance(done.code, int) else EXIT_USAGE
        if not getattr(args, "_run", None):
            parser.print_help()
            return EXIT_USAGE
        return _resolve(args._run)(args)
    except QwError as e:
        if debug:
            import traceback
            traceback.print_exc()
        print(f"qw: error: {short_paths(str(e))}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("qw: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `qw status | head`: the reader went away. For a read-only command that is no
        # error of ours; a run that could not report its end did not finish as asked.
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return EXIT_FAILED if getattr(args, "command", None) == "run" else 0
    except OSError as e:
        # The file system said no (permissions, a full disk): the user's to fix, not a bug.
        if debug:
            import traceback
            traceback.print_exc()
        what = e.strerror or str(e)
        where = short_paths(str(e.filename)) if e.filename else "qw"
        print(f"qw: error: {what[:1].lower()}{what[1:]}, {where}; check that the path exists "
              "and is writable (QW_DEBUG=1 shows the traceback)", file=sys.stderr)
        return EXIT_USAGE
