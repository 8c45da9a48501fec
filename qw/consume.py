"""`qw consume [--watch]`: run the command the Stop hook suggested, if it is one of qw's own
(issue 8).

    .claude/next_command.txt        the suggestion (qw.hooks writes it)
    .claude/next_command.rejected   a suggestion refused: not a qw workflow command
    .claude/next_command.failed     a suggestion that kept failing
    .qw/consume.log                 one JSON line per suggestion handled
    .qw/locks/consume.lock          one consumer at a time

The file is input from anywhere (a model, a person, a script), so it is parsed, never run:
shell metacharacters refuse it outright, then shlex splits it and only
`qw approve SPEC [PHASE]`, `qw run SPEC` and `qw workflow SPEC` for a spec that exists pass, spelled `qw ...`,
`python <path>/qw.pyz ...` or `python -m qw ...`, with no options. What passes reaches qw
through `runner`, a callable taking qw's argv and returning its exit code (qw's own CLI,
in-process or as a subprocess of the same qw): no shell ever sees the text.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shlex
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

from qw.errors import EXIT_USAGE, LockHeld, QwError, UsageError
from qw.hooks import FAILED_COMMAND_FILE, NEXT_COMMAND_FILE
from qw.phases import DOCUMENT_PHASES

REJECTED_FILE = os.path.join(".claude", "next_command.rejected")
CONSUME_LOG = os.path.join(".qw", "consume.log")
LOCK_FILE = os.path.join(".qw", "locks", "consume.lock")
MAX_ATTEMPTS = 3
DEFAULT_BACKOFF = (5.0, 30.0)   # seconds before the 2nd and the 3rd attempt
MAX_COMMAND_LENGTH = 1000

# What a shell would act on. None of it belongs in a qw workflow command, so its presence
# alone refuses the suggestion, before any parsing could be talked into something else.
METACHARACTERS = set(";|&$><`\n\r\x00")
# Commands and how many arguments after SPEC each takes.
ALLOWED = {"run": (0, 0), "approve": (0, 1), "workflow": (0, 0)}
_PYTHON = re.compile(r"^(?:python(?:\d+(?:\.\d+)*)?|py)(?:\.exe)?$", re.IGNORECASE)

NOTHING, RAN, FAILED, REFUSED = "nothing", "ran", "failed", "refused"
Runner = Callable[[List[str]], int]


@dataclass(frozen=True)
class ConsumeResult:
    action: str                   # NOTHING, RAN, FAILED or REFUSED
    command: str = ""             # the suggestion as found (first 200 characters)
    argv: Tuple[str, ...] = ()    # what was passed to the runner
    exit_code: Optional[int] = None
    attempts: int = 0
    reason: str = ""              # why it was refused or failed, one line

    def line(self) -> str:
        """One line for a person."""
        if self.action == NOTHING:
            return "no suggestion"
        shown = f"`{self.command}`"
        if self.action == REFUSED:
            return f"refused {shown}: {self.reason}"
        if self.action == RAN:
            return f"ran {shown} (attempt {self.attempts}, exit 0)"
        return f"failed {shown} after {self.attempts} attempt(s): {self.reason}"


def parse_command(text: str, specs: Sequence[str]) -> Tuple[str, ...]:
    """qw's argv for a suggested command line: (command, spec[, phase]). UsageError saying
    why when it is anything but a qw workflow command for one of `specs`."""
    where = NEXT_COMMAND_FILE
    line = text.strip()
    if not line:
        raise UsageError("the suggestion is empty", where, "nothing to run")
    if len(line) > MAX_COMMAND_LENGTH:
        raise UsageError(f"the suggestion is {len(line)} characters long", where,
                         "a qw command is one short line")
    found = sorted(METACHARACTERS.intersection(line))
    if found:
        shown = " ".join(repr(c) for c in found)
        raise UsageError(f"shell metacharacters ({shown}) in the suggestion", where,
                         "only `qw approve|run|workflow SPEC` is ever run, never a shell")
    try:
        words = shlex.split(line, posix=os.name != "nt")
    except ValueError as error:
        raise UsageError(f"cannot split the suggestion ({error})", where,
                         "write one qw command") from None
    words = [w[1:-1] if len(w) > 1 and w[0] == w[-1] == '"' else w for w in words]
    rest = _after_program(words)
    if rest is None:
        raise UsageError(f"{words[0]!r} is not qw", where,
                         "only `qw ...`, `python <path>/qw.pyz ...` and `python -m qw ...` "
                         "are run")
    if not rest:
        raise UsageError("no qw command in the suggestion", where,
                         "expected `qw approve|run|workflow SPEC`")
    command, args = rest[0], rest[1:]
    if command not in ALLOWED:
        raise UsageError(f"qw {command} is not a workflow command", where,
                         "only " + ", ".join(f"qw {c}" for c in sorted(ALLOWED)) + " are run")
    options = [a for a in args if a.startswith("-")]
    if options:
        raise UsageError(f"unexpected option {options[0]} for qw {command}", where,
                         "a suggestion carries no options")
    least, most = ALLOWED[command]
    if not args or not least <= len(args) - 1 <= most:
        raise UsageError(f"qw {command} takes SPEC" + (" [PHASE]" if most else "")
                         + f", got {len(args)} argument(s)", where, "write `qw "
                         f"{command} SPEC" + (" [PHASE]`" if most else "`"))
    spec = args[0]
    if spec not in specs:
        raise UsageError(f"unknown spec {spec!r}", where,
                         "available: " + (", ".join(specs) if specs else "none"))
    if len(args) > 1 and args[1] not in DOCUMENT_PHASES:
        raise UsageError(f"unknown phase {args[1]!r}", where,
                         "approve one of " + ", ".join(DOCUMENT_PHASES))
    return tuple([command] + args)


def _after_program(words: List[str]) -> Optional[List[str]]:
    """The words after the program (`qw`, `python X/qw.pyz`, `python -m qw`), or None."""
    first = os.path.basename(words[0])
    if first in ("qw", "qw.pyz"):
        return words[1:]
    if _PYTHON.match(first):
        if words[1:3] == ["-m", "qw"]:
            return words[3:]
        if len(words) > 1 and os.path.basename(words[1]) == "qw.pyz":
            return words[2:]
    return None


def consume_once(repo: str, runner: Runner, backoff: Sequence[float] = DEFAULT_BACKOFF,
                 sleep: Callable[[float], object] = time.sleep) -> ConsumeResult:
    """Handle `.claude/next_command.txt` once, holding the consumer lock (LockHeld, exit
    3, while another consumer runs)."""
    lock = _acquire(repo)
    try:
        return _consume(repo, runner, backoff, sleep, lambda: False)
    finally:
        lock.release()


def consume_watch(repo: str, runner: Runner, interval: float, stop_event,
                  on_result: Optional[Callable[[ConsumeResult], None]] = None,
                  backoff: Sequence[float] = DEFAULT_BACKOFF) -> int:
    """Handle the suggestion file every `interval` seconds until `stop_event` (a
    threading.Event) is set, holding the consumer lock throughout; waits and back-offs end
    as soon as it is set. Returns how many suggestions were handled."""
    lock = _acquire(repo)
    handled = 0
    try:
        while not stop_event.is_set():
            result = _consume(repo, runner, backoff, stop_event.wait, stop_event.is_set)
            if result.action != NOTHING:
                handled += 1
                if on_result is not None:
                    on_result(result)
            stop_event.wait(interval)
    finally:
        lock.release()
    return handled


def _acquire(repo: str):
    from qw.lock import SpecLock, read_holder

    path = os.path.join(repo, LOCK_FILE)
    try:
        return SpecLock(path).acquire({"command": "qw consume"})
    except LockHeld:
        holder = read_holder(path) or {}
        pid = holder.get("pid", "?")
        raise LockHeld(f"another qw consume is running (pid {pid})", path,
                       f"let it handle the suggestions, or stop it (kill {pid})") from None


def _consume(repo: str, runner: Runner, backoff: Sequence[float],
             sleep: Callable[[float], object], stopping: Callable[[], bool]) -> ConsumeResult:
    from qw.specdir import list_specs

    path = os.path.join(repo, NEXT_COMMAND_FILE)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_COMMAND_LENGTH * 4)
    except FileNotFoundError:
        return ConsumeResult(NOTHING)
    text = raw.decode("utf-8", errors="replace")
    shown = text.strip()[:200]
    try:
        argv = parse_command(text, list_specs(repo))
    except UsageError as refusal:
        result = ConsumeResult(REFUSED, shown, reason=str(refusal))
        _set_aside(path, raw, os.path.join(repo, REJECTED_FILE))
        _log(repo, result)
        return result
    qw_argv = list(argv) + ["--repo", os.path.abspath(repo)]
    code, reason, attempt = 1, "", 0
    while attempt < MAX_ATTEMPTS:
        attempt += 1
        code, reason = _call(runner, qw_argv)
        if code == 0 or code == EXIT_USAGE:
            break   # done, or bad input that no retry can fix
        if attempt < MAX_ATTEMPTS:
            sleep(backoff[min(attempt - 1, len(backoff) - 1)] if backoff else 0.0)
            if stopping():
                result = ConsumeResult(FAILED, shown, tuple(qw_argv), code, attempt,
                                       "stopped before retrying; the suggestion stays")
                _log(repo, result)
                return result
    if code == 0:
        result = ConsumeResult(RAN, shown, tuple(qw_argv), 0, attempt)
        if _unchanged(path, raw):
            os.remove(path)
    else:
        result = ConsumeResult(FAILED, shown, tuple(qw_argv), code, attempt,
                               reason or f"qw exited with {code}")
        _set_aside(path, raw, os.path.join(repo, FAILED_COMMAND_FILE))
    _log(repo, result)
    return result


def _call(runner: Runner, argv: List[str]) -> Tuple[int, str]:
    """(exit code, why it failed) of one run; an exception is a failed run."""
    try:
        code = runner(list(argv))
    except QwError as error:
        return error.exit_code, str(error)
    except Exception as error:
        return 1, f"{type(error).__name__}: {error}"
    return (code if isinstance(code, int) else 1), ""


def _unchanged(path: str, raw: bytes) -> bool:
    """True if the suggestion file still holds what was handled (the hook may have written
    a new one meanwhile: that one is left for the next round)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(len(raw) + 1) == raw
    except OSError:
        return False


def _set_aside(path: str, raw: bytes, to: str) -> None:
    """Move the handled suggestion to `to`, so it is not tried again and again."""
    if _unchanged(path, raw):
        os.replace(path, to)


def _log(repo: str, result: ConsumeResult) -> None:
    path = os.path.join(repo, CONSUME_LOG)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    entry = {"at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
             "action": result.action, "command": result.command, "argv": list(result.argv),
             "exit": result.exit_code, "attempts": result.attempts, "reason": result.reason}
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
