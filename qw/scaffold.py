"""`qw init`: a qw.toml from the documented example, and a small example spec to run.

The example spec is deliberately tiny and cheap: four short tasks that write a greeting
package and its test; the middle two write different files, so they run in parallel.
"""

from __future__ import annotations

import os
import pkgutil
from typing import List, Tuple

from qw.errors import UsageError
from qw.journal import atomic_write

EXAMPLE_REQUIREMENTS = """\
# Requirements Document

## Introduction

A tiny greeting module, used to try qw on a real repository.

## Requirements

### Requirement 1: Greet a person

**User Story:** As a user, I want to be greeted by name, so that the program feels friendly.

#### Acceptance Criteria

1. WHEN `greet("Ada")` is called THEN the system SHALL return `Hello, Ada!`
2. IF the name is empty THEN the system SHALL return `Hello, world!`

### Requirement 2: Say goodbye

**User Story:** As a user, I want a farewell, so that the program ends politely.

#### Acceptance Criteria

1. WHEN `farewell("Ada")` is called THEN the system SHALL return `Goodbye, Ada.`
"""

EXAMPLE_DESIGN = """\
# Design Document

## Overview

Two pure functions, each in its own module of the `hello` package, tested with the
standard library's unittest.

## Components

### hello/greet.py

`greet(name: str) -> str`, no imports.

### hello/farewell.py

`farewell(name: str) -> str`, no imports.

### hello/test_greet.py

unittest cases for every acceptance criterion.
"""

EXAMPLE_TASKS = """\
# Tasks Document

- [ ] 1. Create the package in hello/__init__.py
  - File: hello/__init__.py
  - An empty package marker with a one-line docstring
  - _Requirements: 1_

- [ ] 2. Implement greet in hello/greet.py
  - File: hello/greet.py
  - Write `greet(name)` as the requirements say
  - _Leverage: hello/__init__.py_
  - _Requirements: 1.1, 1.2_

- [ ] 3. Implement farewell in hello/farewell.py
  - File: hello/farewell.py
  - Write `farewell(name)` as the requirements say
  - _Leverage: hello/__init__.py_
  - _Requirements: 2.1_

- [ ] 4. Test both functions in hello/test_greet.py
  - File: hello/test_greet.py
  - unittest cases for each acceptance criterion; run them with `python -m unittest`
  - _Depends: 2, 3_
  - _Requirements: 1.1, 1.2, 2.1_
"""

GITIGNORE_LINE = ".qw/"
# Lines that already keep .qw/ out of git.
_IGNORES_QW = frozenset({".qw", ".qw/", "/.qw", "/.qw/", ".qw/*", "/.qw/*"})


def example_config_text() -> str:
    """The documented example config: packaged inside qw (pyz), else beside the source tree."""
    data = None
    try:
        data = pkgutil.get_data("qw", "config.example.toml")
    except OSError:
        data = None
    if data is None:
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        try:
            with open(os.path.join(here, "config.example.toml"), "rb") as f:
                data = f.read()
        except OSError:
            raise UsageError("this qw has no config.example.toml to copy",
                             where=here, fix="reinstall qw or build qw.pyz again") from None
    return data.decode("utf-8")


def write_scaffold(repo: str, force: bool = False) -> Tuple[List[str], List[str]]:
    """Write qw.toml and .claude/specs/example/*; return (written, kept) relative paths.

    Existing files are kept unless `force`; .gitignore gains `.qw/` if it lacks it.
    """
    if not os.path.isdir(repo):
        raise UsageError(f"not a directory: {repo}", where="--repo",
                         fix="create it first or give another folder")
    files = [
        ("qw.toml", example_config_text()),
        (os.path.join(".claude", "specs", "example", "requirements.md"), EXAMPLE_REQUIREMENTS),
        (os.path.join(".claude", "specs", "example", "design.md"), EXAMPLE_DESIGN),
        (os.path.join(".claude", "specs", "example", "tasks.md"), EXAMPLE_TASKS),
    ]
    wanted = [(rel, text) for rel, text in files
              if force or not os.path.exists(os.path.join(repo, rel))]
    # Folders first: a `.claude` that is a file fails here, before any file is written.
    for rel, _ in wanted:
        os.makedirs(os.path.join(repo, os.path.dirname(rel)), exist_ok=True)
    for rel, text in wanted:
        atomic_write(os.path.join(repo, rel), text.encode("utf-8"))
    written = [rel for rel, _ in wanted]
    kept = [rel for rel, _ in files if rel not in written]
    if _add_to_gitignore(os.path.join(repo, ".gitignore")):
        written.append(".gitignore")
    return written, kept


def _add_to_gitignore(path: str) -> bool:
    """Append `.qw/` to the .gitignore at `path` (made if missing) unless it ignores .qw
    already; every byte already there is kept. True if the file was written."""
    existing = b""
    if os.path.exists(path):
        with open(path, "rb") as f:
            existing = f.read()
    lines = existing.decode("utf-8", errors="replace").splitlines()
    if _IGNORES_QW.intersection(line.strip() for line in lines):
        return False
    newline = b"\r\n" if b"\r\n" in existing else b"\n"
    sep = b"" if not existing or existing.endswith(b"\n") else newline
    atomic_write(path, existing + sep + GITIGNORE_LINE.encode("ascii") + newline)
    return True
