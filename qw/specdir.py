"""Finding a spec on disk and reading its documents (DESIGN §2).

The edge between the file system and the pure parsers in `qw.tasks` and `qw.documents`:
this module reads files and writes nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Tuple

from qw.documents import (Design, Requirements, SteeringDoc, parse_design,
                          parse_requirements)
from qw.errors import SpecError, UsageError
from qw.tasks import TaskList, parse_tasks

SPECS_DIR = os.path.join(".claude", "specs")
STEERING_DIR = os.path.join(".claude", "steering")
TASKS_FILE = "tasks.md"


@dataclass(frozen=True)
class SpecPaths:
    """Where one spec's documents are (requirements and design may not exist)."""

    name: str
    dir: str
    tasks: str
    requirements: str
    design: str
    repo: str     # the repository root, for `.claude/steering/`


@dataclass(frozen=True)
class Spec:
    """A spec as read from disk: its tasks and the context documents for prompts."""

    name: str
    paths: SpecPaths
    tasks: TaskList
    requirements: Optional[Requirements]
    design: Optional[Design]
    steering: Tuple[SteeringDoc, ...]


def find_repo_root(start: str) -> str:
    """The nearest ancestor of `start` (itself included) holding `.claude/` or `.git`.

    `.git` may be a file (worktrees, submodules). Without either, `start` itself. The home
    folder's `.claude/` is Claude Code's own settings folder, not a project's: it does not
    make home a repository (else qw would write `.qw/` into home from any folder under it).
    """
    start = os.path.abspath(start)
    home = _realpath(os.path.expanduser("~"))
    here = start
    while True:
        has_claude = os.path.isdir(os.path.join(here, ".claude")) and _realpath(here) != home
        if has_claude or os.path.exists(os.path.join(here, ".git")):
            return here
        parent = os.path.dirname(here)
        if parent == here:
            return start
        here = parent


def _realpath(path: str) -> str:
    return os.path.normcase(os.path.realpath(path))


def list_specs(repo: str) -> List[str]:
    """Names of the spec folders under `<repo>/.claude/specs/`, sorted."""
    specs = os.path.join(repo, SPECS_DIR)
    try:
        entries = os.listdir(specs)
    except OSError:
        return []
    return sorted(e for e in entries
                  if not e.startswith(".") and os.path.isdir(os.path.join(specs, e)))


def _is_name(arg: str) -> bool:
    """True if `arg` can be a folder name under `.claude/specs/` (not a path)."""
    separators = {"/", os.sep, os.altsep or "/"}
    return bool(arg) and not arg.startswith(".") and not any(s in arg for s in separators)


def resolve_spec(repo: str, arg: str) -> SpecPaths:
    """The spec named by `arg`: a name under `.claude/specs/`, or a path (absolute or relative
    to the working directory) to a spec folder or to a tasks file.

    Raises UsageError listing the available specs when `arg` names none.
    """
    named = os.path.join(repo, SPECS_DIR, arg) if _is_name(arg) else ""
    if named and os.path.isdir(named):
        folder = os.path.abspath(named)
        tasks = os.path.join(folder, TASKS_FILE)
    elif arg and os.path.isdir(arg):
        folder = os.path.abspath(arg)
        tasks = os.path.join(folder, TASKS_FILE)
    elif arg and os.path.isfile(arg):
        tasks = os.path.abspath(arg)
        folder = os.path.dirname(tasks)
    else:
        available = list_specs(repo)
        fix = ("available: " + ", ".join(available) if available else
               "no specs yet: run `qw init` or create .claude/specs/<name>/tasks.md")
        raise UsageError(f"unknown spec {arg!r}", os.path.join(repo, SPECS_DIR), fix)
    return SpecPaths(
        name=os.path.basename(os.path.normpath(folder)), dir=folder, tasks=tasks,
        requirements=os.path.join(folder, "requirements.md"),
        design=os.path.join(folder, "design.md"), repo=repo,
    )


def read_if_present(path: str) -> Optional[str]:
    """The file's text (bytes that are not UTF-8 replaced), or None when it cannot be read:
    for files qw only looks at (a suggestion, a log, a document shown as context), where
    "not there" is an answer rather than an error."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


def read_text(path: str) -> str:
    """The file's text, decoded as UTF-8 with line endings and any BOM kept as they are.

    Raises SpecError naming the path (and the line of the first bad byte) when the file is
    missing, unreadable or not UTF-8.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise SpecError("file not found", path, "create it, or check the spec name") from None
    except OSError as error:
        reason = error.strerror or str(error)
        if os.path.isdir(path):
            reason = "it is a directory"
        raise SpecError(f"cannot read file: {reason}", path,
                        "check that it is a readable file") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise SpecError(f"not UTF-8 text (byte 0x{data[error.start]:02x})", f"{path}:{line}",
                        "save it as UTF-8") from None


def _read_optional(path: str) -> Optional[str]:
    """The file's text, or None if it does not exist."""
    return read_text(path) if os.path.lexists(path) else None


def load_spec(paths: SpecPaths) -> Spec:
    """Read and parse the spec's tasks.md, its optional requirements.md and design.md, and
    the repository's steering docs. Raises SpecError naming file:line on any problem.
    """
    if not os.path.lexists(paths.tasks):
        raise SpecError(f"spec {paths.name!r} has no tasks file", paths.tasks,
                        "create it with checkbox items like `- [ ] 1. Title`")
    tasks = parse_tasks(read_text(paths.tasks), paths.tasks)
    requirements_text = _read_optional(paths.requirements)
    design_text = _read_optional(paths.design)
    return Spec(
        name=paths.name,
        paths=paths,
        tasks=tasks,
        requirements=(None if requirements_text is None
                      else parse_requirements(requirements_text, paths.requirements)),
        design=None if design_text is None else parse_design(design_text, paths.design),
        steering=_load_steering(paths.repo),
    )


def _load_steering(repo: str) -> Tuple[SteeringDoc, ...]:
    folder = os.path.join(repo, STEERING_DIR)
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".md"))
    except OSError:
        return ()
    docs = []
    for name in names:
        path = os.path.join(folder, name)
        docs.append(SteeringDoc(name[:-3], path, read_text(path)))
    return tuple(docs)
