"""Did a task's child change anything? `git status` before it and after it (issue 8).

    watch = change_pathspecs(task.files, qw_own_files)     the runner, once per request
    before = tree_fingerprint(cwd, watch, env)             the worker, around the child
    ... the child runs ...
    changed_nothing = tree_fingerprint(cwd, watch, env) == before

A note for the user, never a failure. None (not known) outside a git work tree, or when git
fails.
"""

from __future__ import annotations

import os
import subprocess
from typing import Dict, Optional, Tuple

# `git status` in a big tree takes well under a second; past this, the check is skipped.
GIT_STATUS_TIMEOUT_S = 30.0


def change_pathspecs(files, excluded=()) -> Tuple[str, ...]:
    """The git pathspecs a task's changes are looked for in (paths relative to the repo
    root): its declared files when it declares any, else the whole tree less `excluded`
    (qw's own files: `.qw/`, tasks.md, which change while any task runs)."""
    if files:
        return tuple(files)
    # A path outside the repository makes git refuse the whole command: leave it out.
    return (".",) + tuple(f":(exclude){p}" for p in excluded
                           if p and not p.startswith(".."))


def tree_fingerprint(cwd: str, pathspecs, env: Dict[str, str]) -> Optional[tuple]:
    """What `git status` says of `pathspecs` in the work tree holding `cwd`, with each
    listed path's mtime and size and the HEAD commit: equal before and after a child means
    it changed nothing there. None when `cwd` is in no git work tree, or git fails.

    One `git status` (porcelain v2 for `branch.oid`: a child that committed its work
    leaves a clean tree, but a new HEAD). Files git ignores are not seen; neither is an
    edit that leaves a file's mtime and size as they were.
    """
    top = _work_tree_top(cwd)
    if top is None:
        return None
    try:
        done = subprocess.run(
            ["git", "status", "--porcelain=v2", "-z", "--branch", "--untracked-files=all",
             "--"] + list(pathspecs),
            cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, timeout=GIT_STATUS_TIMEOUT_S,
            # Not even the index refresh's lock: children may be running git themselves,
            # and a `git commit` of theirs must not fail on our index.lock.
            env=dict(env, GIT_OPTIONAL_LOCKS="0"))
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return _status_fingerprint(done.stdout, top)


def _status_fingerprint(output: bytes, top: str) -> tuple:
    """`git status --porcelain=v2 -z --branch` output as a comparable value."""
    fields = output.split(b"\0")
    items = []
    at = 0
    while at < len(fields):
        record = fields[at]
        at += 1
        if not record:
            continue
        if record.startswith(b"#"):   # branch.oid, branch.head: a commit, a checkout
            items.append((record, None))
            continue
        # Changed (1), renamed (2, the old path follows as a field of its own), unmerged
        # (u): the path is the last of a fixed number of space-separated words. Untracked
        # (?) and ignored (!): everything after the mark.
        words = {b"1": 8, b"2": 9, b"u": 10}.get(record[:1])
        path = record.split(b" ", words)[-1] if words else record[2:]
        if record[:1] == b"2":
            at += 1
        try:
            st = os.stat(os.path.join(os.fsencode(top), path))
            seen = (st.st_mtime_ns, st.st_size)
        except OSError:
            seen = None   # deleted
        items.append((record, seen))
    return tuple(items)


def _work_tree_top(cwd: str) -> Optional[str]:
    """The top of the git work tree holding `cwd` (the nearest folder with a `.git`), or
    None. git's paths in `status` are relative to it."""
    path = os.path.abspath(cwd)
    while True:
        if os.path.exists(os.path.join(path, ".git")):
            return path
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent
