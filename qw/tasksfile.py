"""Writing tasks.md during a run: flip checkboxes, keep every other byte.

Only the runner writes tasks.md, while it holds the spec's lock (DESIGN §3). Each write
re-reads the file first — a child may have edited it despite being told not to — flips
the marks with the pure `set_checkbox`, and replaces the file atomically.
"""

from __future__ import annotations

from typing import Dict, List

from qw.journal import atomic_write
from qw.specdir import read_text
from qw.tasks import parse_tasks, set_checkbox


def set_marks(path: str, marks: Dict[str, str]) -> List[str]:
    """Set each task's mark; returns the ids that are no longer in the file.

    A task someone deleted from tasks.md mid-run is reported, not fatal: the rest of the
    marks are still written.
    """
    text = read_text(path)
    present = parse_tasks(text, path).by_id   # a file broken mid-run raises SpecError here
    new, missing = text, []
    for task_id, mark in marks.items():
        if task_id in present:
            new = set_checkbox(new, task_id, mark, path)
        else:
            missing.append(task_id)
    if new != text:
        atomic_write(path, new.encode("utf-8"))
    return missing
