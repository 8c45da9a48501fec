"""Claude Code hooks (issue 8): `qw hook install|uninstall`, and `qw hook stop`, the hook.

    .claude/settings.json        {"hooks": {"Stop": [{"matcher": "", "hooks": [{"type":
                                  "command", "command": "<qw> hook stop", "timeout": 10}],
                                  "qw": {"installed_by": "qw hook install", "created": [...]}}],
                                  "SubagentStop": [...same...]}}
    .claude/next_command.txt     what the hook suggests: one qw command, one line
    .qw/hooks.log                the hook's own problems, one JSON line each

install merges qw's two matcher groups into the settings and keeps every other key and
hook; each group carries a "qw" tag (Claude Code 2.1 accepts and ignores the extra key)
saying what install created, so that uninstall removes exactly that.

`hook_stop` runs inside the user's Claude Code session, after every answer. So it starts no
process (a Stop hook that starts claude loops forever), prints nothing (a Stop hook's
stdout can steer the session), finishes in milliseconds, and returns 0 whatever happens: a
broken hook must not break the user's session. It imports qw's modules only when it gets
that far, to start fast.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Mapping, Optional, Tuple

EVENTS = ("Stop", "SubagentStop")
SETTINGS_FILE = os.path.join(".claude", "settings.json")
NEXT_COMMAND_FILE = os.path.join(".claude", "next_command.txt")
FAILED_COMMAND_FILE = os.path.join(".claude", "next_command.failed")   # consume's last failure
HOOKS_LOG = os.path.join(".qw", "hooks.log")
TAG = "qw"
INSTALLED_BY = "qw hook install"
HOOK_TIMEOUT_S = 10      # Claude Code's limit for the command; it needs milliseconds
MAX_STDIN = 32 << 20     # the JSON holds the last answer: large, but never unbounded
MAX_LOG_BYTES = 256 * 1024


@dataclass(frozen=True)
class InstallResult:
    path: str
    command: str
    added: Tuple[str, ...]     # events given a qw hook now
    updated: Tuple[str, ...]   # events whose qw hook now runs a different command
    created_file: bool


@dataclass(frozen=True)
class UninstallResult:
    path: str
    removed: Tuple[str, ...]   # events a qw hook was removed from
    file_removed: bool         # install had created the file and nothing else is left in it


def qw_command(python: str, program: str) -> str:
    """The command line that runs this qw from a hook, given the interpreter and
    sys.argv[0]: `python /abs/qw.pyz` for the zipapp (or a .py script), the console script
    itself when qw was installed as one, `python -m qw` when it runs as a package."""
    if os.path.basename(program) == "__main__.py" or not os.path.isfile(program):
        return f"{_quote(python)} -m qw"
    if program.endswith((".pyz", ".py")):
        return f"{_quote(python)} {_quote(os.path.abspath(program))}"
    return _quote(os.path.abspath(program))


def _quote(word: str) -> str:
    if os.name == "nt":
        return f'"{word}"' if (not word or " " in word) else word
    import shlex
    return shlex.quote(word)


def install(repo: str, qw_command: str) -> InstallResult:
    """Merge a Stop and a SubagentStop hook running `<qw_command> hook stop` into
    `<repo>/.claude/settings.json` (created if missing); idempotent. ConfigError, and the
    file untouched, when it is not valid JSON or its "hooks" are not what Claude Code reads."""
    path = os.path.join(repo, SETTINGS_FILE)
    command = qw_command.strip() + " hook stop"
    settings, existed = _load(path)
    created = [] if existed else ["settings.json"]
    if not os.path.isdir(os.path.dirname(path)):
        created.append(".claude")
    hooks = settings.get("hooks")
    if hooks is None:
        hooks = settings["hooks"] = {}
        created.append("hooks")
    elif not isinstance(hooks, dict):
        raise _shape_error(path, "hooks", "an object")
    added, updated = [], []
    for event in EVENTS:
        made = list(created)
        groups = hooks.get(event)
        if groups is None:
            groups = hooks[event] = []
            made.append(event)
        elif not isinstance(groups, list):
            raise _shape_error(path, f"hooks.{event}", "a list")
        ours = [g for g in groups if _is_ours(g)]
        hook = {"type": "command", "command": command, "timeout": HOOK_TIMEOUT_S}
        if not ours:
            groups.append({"matcher": "", "hooks": [hook],
                           TAG: {"installed_by": INSTALLED_BY, "created": made}})
            added.append(event)
        elif ours[0].get("hooks") != [hook]:
            ours[0]["hooks"] = [hook]
            updated.append(event)
    if added or updated:
        _save(path, settings)
    return InstallResult(path, command, tuple(added), tuple(updated),
                         created_file="settings.json" in created)


def uninstall(repo: str) -> UninstallResult:
    """Remove the hooks install added, and the lists, objects and file it created that are
    empty now; keep everything else. ConfigError for a file that is not valid JSON."""
    path = os.path.join(repo, SETTINGS_FILE)
    if not os.path.lexists(path):
        return UninstallResult(path, (), False)
    settings, _ = _load(path)
    hooks = settings.get("hooks")
    if not isinstance(hooks, dict):
        return UninstallResult(path, (), False)
    created = set()
    removed = []
    for event, groups in list(hooks.items()):
        if not isinstance(groups, list):
            continue
        ours = [g for g in groups if _is_ours(g)]
        if not ours:
            continue
        for group in ours:
            made = group[TAG].get("created")
            created.update(m for m in (made if isinstance(made, list) else []))
        hooks[event] = [g for g in groups if not _is_ours(g)]
        removed.append(event)
    if not removed:
        return UninstallResult(path, (), False)
    for event in removed:
        if not hooks[event] and event in created:
            del hooks[event]
    if not hooks and "hooks" in created:
        del settings["hooks"]
    if not settings and "settings.json" in created:
        os.remove(path)
        if ".claude" in created:
            try:
                os.rmdir(os.path.dirname(path))   # only if empty: anything else stays
            except OSError:
                pass
        return UninstallResult(path, tuple(removed), True)
    _save(path, settings)
    return UninstallResult(path, tuple(removed), False)


def _is_ours(group: object) -> bool:
    return (isinstance(group, dict) and isinstance(group.get(TAG), dict)
            and group[TAG].get("installed_by") == INSTALLED_BY)


def _load(path: str) -> Tuple[dict, bool]:
    """(settings, whether the file existed). ConfigError naming file:line:col when the file
    is not a JSON object."""
    from qw.errors import ConfigError

    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return {}, False
    fix = "fix it, then run `qw hook install` again (qw never rewrites a file it cannot read)"
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ConfigError("settings file is not UTF-8 text", f"{path}:{line}", fix) from None
    if not text.strip():
        return {}, True
    try:
        settings = json.loads(text)
    except ValueError as error:
        where = (f"{path}:{error.lineno}:{error.colno}" if hasattr(error, "lineno") else path)
        raise ConfigError(f"settings file is not valid JSON ({getattr(error, 'msg', error)})",
                          where, fix) from None
    if not isinstance(settings, dict):
        raise ConfigError("settings file does not hold a JSON object", path, fix)
    return settings, True


def _shape_error(path: str, key: str, shape: str):
    from qw.errors import ConfigError
    return ConfigError(f'"{key}" is not {shape}', f"{path} key {key}",
                       "fix it as Claude Code's settings documentation says, then run "
                       "`qw hook install` again")


def _save(path: str, settings: dict) -> None:
    from qw.journal import atomic_write
    os.makedirs(os.path.dirname(path), exist_ok=True)
    text = json.dumps(settings, indent=2, ensure_ascii=False) + "\n"
    atomic_write(path, text.encode("utf-8"))


# --- the hook ---------------------------------------------------------------------------

def hook_stop(stdin_text: str, env: Mapping[str, str], repo: Optional[str] = None) -> int:
    """The Stop / SubagentStop hook: when a spec has completed a phase, write the command
    that advances it to `.claude/next_command.txt`. Always returns 0.

    Does nothing when `stop_hook_active` is set (Claude Code is already continuing because
    of a Stop hook), in a session qw itself started (QW_RUN_ID in the environment: qw drives
    its own children), or for a spec a qw run holds the lock of."""
    try:
        data = json.loads(stdin_text)
    except Exception:
        data = None
    if not isinstance(data, dict):
        return 0   # not what Claude Code sends: nothing to go by, and nowhere sure to log
    if data.get("stop_hook_active") is True or env.get("QW_RUN_ID"):
        return 0
    try:
        repo = repo or _repo_of(data, env)
        if repo is None:
            return 0
        _suggest(repo)
    except Exception as error:   # a broken hook must not break the session: log, return 0
        _log(repo, f"{type(error).__name__}: {error}")
    return 0


def _repo_of(data: dict, env: Mapping[str, str]) -> Optional[str]:
    from qw.specdir import find_repo_root

    project = env.get("CLAUDE_PROJECT_DIR")
    if project and os.path.isdir(project):
        return project
    cwd = data.get("cwd")
    if isinstance(cwd, str) and os.path.isdir(cwd):
        return find_repo_root(cwd)
    return None


def _suggest(repo: str) -> Optional[str]:
    """Write the suggestion for the spec worked on last; the command written, or None."""
    from qw.approve import read_facts
    from qw.lock import read_holder
    from qw.phases import hook_suggestion, where
    from qw.specdir import list_specs

    best = None
    for spec in list_specs(repo):
        if read_holder(os.path.join(repo, ".qw", "locks", f"{spec}.lock")):
            continue  # a qw run or workflow is at work on it: it advances the spec itself
        command = hook_suggestion(spec, where(read_facts(repo, spec)))
        if command is None:
            continue
        changed = _newest_mtime(os.path.join(repo, ".claude", "specs", spec))
        if _failed_since(repo, command, changed):
            continue
        if best is None or changed > best[0]:
            best = (changed, command)
    if best is None:
        return None
    command = best[1]
    path = os.path.join(repo, NEXT_COMMAND_FILE)
    from qw.specdir import read_if_present
    if read_if_present(path) != command + "\n":
        from qw.journal import atomic_write
        atomic_write(path, (command + "\n").encode("utf-8"))
    return command


def _newest_mtime(folder: str) -> float:
    newest = 0.0
    for entry in os.scandir(folder):
        if entry.is_file():
            newest = max(newest, entry.stat().st_mtime)
    return newest


def _failed_since(repo: str, command: str, changed: float) -> bool:
    """True when the consumer gave up on this very command and the spec has not changed
    since: suggesting it again would only fail again."""
    from qw.specdir import read_if_present

    path = os.path.join(repo, FAILED_COMMAND_FILE)
    failed = read_if_present(path)
    try:
        return failed is not None and failed.strip() == command and \
            os.stat(path).st_mtime >= changed
    except OSError:
        return False


def _log(repo: Optional[str], message: str) -> None:
    """One JSON line in `.qw/hooks.log`; silently nothing when even that fails."""
    if not repo:
        return
    try:
        import datetime
        path = os.path.join(repo, HOOKS_LOG)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        mode = "w" if (os.path.exists(path)
                       and os.path.getsize(path) > MAX_LOG_BYTES) else "a"
        at = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        with open(path, mode, encoding="utf-8") as handle:
            handle.write(json.dumps({"at": at, "error": message[:2000]}) + "\n")
    except Exception:
        pass


def main() -> int:
    """`qw hook stop` without the rest of the CLI: read the hook JSON from stdin, act, 0."""
    try:
        text = "" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read(MAX_STDIN)
    except Exception:
        text = ""
    return hook_stop(text, os.environ)
