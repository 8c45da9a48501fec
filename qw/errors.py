"""The error hierarchy and the exit codes of the command-line contract (DESIGN §4).

Library code raises these; only `qw.cli.main` turns them into a message and an exit code.
A user error reads `qw: error: <what>, <where>; <what to do>`.
"""

from __future__ import annotations

from typing import Optional

EXIT_OK = 0
EXIT_FAILED = 1        # one or more tasks failed
EXIT_USAGE = 2         # bad input: usage, config, spec
EXIT_LOCKED = 3        # another run holds this spec's lock
EXIT_PAUSED = 75       # paused: usage limit / budget; run again later (EX_TEMPFAIL)
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGTERM


class QwError(Exception):
    """An error the user can act on. `what`, `where` (file:line or key) and `fix`."""

    exit_code = EXIT_USAGE

    def __init__(self, what: str, where: Optional[str] = None, fix: Optional[str] = None):
        super().__init__(what)
        self.what = what
        self.where = where
        self.fix = fix

    def __str__(self) -> str:
        text = self.what
        if self.where:
            text += ", " + self.where
        if self.fix:
            text += "; " + self.fix
        return text


class UsageError(QwError):
    """A bad command line: unknown spec, bad flag value."""


class ConfigError(QwError):
    """A bad qw.toml, environment variable or flag value."""


class SpecError(QwError):
    """A tasks.md (or other spec document) that cannot be used."""


class StateError(QwError):
    """qw's own state under .qw/ cannot be used (newer format, unwritable)."""


class LockHeld(QwError):
    """Another run holds the spec's lock."""

    exit_code = EXIT_LOCKED
