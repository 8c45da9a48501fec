"""tasks.md as a run writes it (qw/tasksfile.py): only the boxes that disagree change, every
other byte stays, a file a child broke mid-run is left alone until it parses again, and the
run's batched writes send only what changed."""

from __future__ import annotations

import os
import random
import time

import pytest

from qw.errors import SpecError
from qw.tasksfile import DONE, OPEN, RUNNING, RunMarks, TasksFile, group_states

SPEC = """# Tasks

- [ ] 1. Group one
  - [ ] 1.1 First leaf
    - File: a.py
  - [ ] 1.2 Second leaf
- [ ] 2. Standalone task
  - Does something
- [x] 3. Done before the run
"""


def write(path, text: str) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def read(path) -> str:
    with open(path, encoding="utf-8", newline="") as f:
        return f.read()


@pytest.fixture
def tasks_md(tmp_path):
    path = tmp_path / "tasks.md"
    write(path, SPEC)
    return path


def run_marks(path) -> RunMarks:
    return RunMarks(TasksFile(str(path)), ancestors={"1.1": ("1",), "1.2": ("1",)},
                    groups={"1": ("1.1", "1.2")}, in_progress=False)


def test_sync_flips_exactly_the_boxes_that_disagree(tasks_md):
    result = TasksFile(str(tasks_md)).sync({"2": DONE, "3": OPEN}, in_progress=False,
                                           final=False)
    assert result.written
    assert read(tasks_md) == SPEC.replace("- [ ] 2.", "- [x] 2.").replace("- [x] 3.", "- [ ] 3.")


@pytest.mark.parametrize("seed", range(5))
def test_sync_keeps_every_other_byte_of_a_large_file(tmp_path, seed):
    rng = random.Random(seed)
    blocks = [f"- [ ] {i}. Unit {i} with ünïcode and `code`\r\n  - detail {rng.random()}\r\n"
              for i in range(1, 301)]
    text = "# Tasks\r\n\r\n" + "".join(blocks)
    path = tmp_path / "tasks.md"
    write(path, text)
    chosen = rng.sample(range(1, 301), 40)
    TasksFile(str(path)).sync({str(i): DONE for i in chosen}, in_progress=False, final=False)
    expected = text
    for i in chosen:
        expected = expected.replace(f"- [ ] {i}. Unit", f"- [x] {i}. Unit", 1)
    assert read(path) == expected


def test_an_edit_by_someone_else_is_read_before_the_next_write(tasks_md):
    marks = TasksFile(str(tasks_md))
    marks.sync({"1.1": DONE}, in_progress=False, final=False)
    # A child rewrites the file in between: a longer line shifts every offset after it.
    write(tasks_md, read(tasks_md).replace("Does something", "Does something much longer"))
    marks.sync({"2": DONE}, in_progress=False, final=False)
    text = read(tasks_md)
    assert "- [x] 1.1 First leaf" in text and "- [x] 2. Standalone" in text
    assert "Does something much longer" in text


def test_a_file_broken_mid_run_is_left_alone_and_the_final_write_says_so(tasks_md):
    broken = SPEC.replace("- [ ] 1.2 Second leaf", "- [ ] 1.1 Second leaf")  # a duplicate id
    write(tasks_md, broken)
    result = TasksFile(str(tasks_md)).sync({"2": DONE}, in_progress=False, final=False)
    assert not result.written and result.postponed
    assert read(tasks_md) == broken
    with pytest.raises(SpecError):
        TasksFile(str(tasks_md)).sync({"2": DONE}, in_progress=False, final=True)


def test_a_task_removed_mid_run_postpones_then_the_final_write_reports_it(tasks_md):
    result = TasksFile(str(tasks_md)).sync({"2": DONE, "9": DONE}, in_progress=False,
                                           final=False)
    assert not result.written and "9" in result.postponed
    result = TasksFile(str(tasks_md)).sync({"2": DONE, "9": DONE}, in_progress=False,
                                           final=True)
    assert result.written and result.missing == ("9",)
    assert "- [x] 2. Standalone" in read(tasks_md)


def test_run_marks_writes_only_the_tasks_that_changed(tasks_md):
    marks = run_marks(tasks_md)
    marks.changed("2", DONE)
    # Someone ticks 1.1 by hand; nothing the run did touches 1.1, so the batch leaves it.
    write(tasks_md, read(tasks_md).replace("- [ ] 1.1", "- [x] 1.1"))
    marks.write(finished={"2", "3"}, now=0.0)
    text = read(tasks_md)
    assert "- [x] 2. Standalone" in text and "- [x] 1.1 First" in text
    assert not marks.dirty


def test_run_marks_ticks_a_group_with_its_last_leaf(tasks_md):
    marks = run_marks(tasks_md)
    marks.changed("1.1", DONE)
    marks.write(finished={"1.1", "3"}, now=0.0)
    assert "- [ ] 1. Group one" in read(tasks_md)
    marks.changed("1.2", DONE)
    marks.write(finished={"1.1", "1.2", "3"}, now=100.0)
    assert "- [x] 1. Group one" in read(tasks_md)


def test_run_marks_keeps_what_a_broken_file_postponed(tasks_md):
    marks = run_marks(tasks_md)
    write(tasks_md, SPEC.replace("- [ ] 2. Standalone task", "- [ ] 1.1 Standalone task"))
    marks.changed("1.2", DONE)
    assert marks.write(finished={"1.2"}, now=0.0).postponed
    assert "1.2" in marks.dirty   # still owed
    write(tasks_md, SPEC)         # the child is done rewriting it
    assert marks.write(finished={"1.2"}, now=100.0).written
    assert "- [x] 1.2 Second leaf" in read(tasks_md)
    assert not marks.dirty


def test_run_marks_spaces_writes_by_what_the_last_one_cost(tasks_md):
    marks = run_marks(tasks_md)
    assert not marks.due(0.0)                  # nothing owed
    marks.changed("2", RUNNING)
    assert marks.due(0.0)
    started = time.monotonic()
    marks.write(finished=set(), now=started)
    marks.changed("2", DONE)
    took = marks.not_before - started
    assert took > 0
    assert not marks.due(started + took / 2)   # owed, but spaced
    assert marks.due(marks.not_before)


def test_group_states_is_done_only_when_every_leaf_is():
    groups = {"1": ("1.1", "1.2")}
    assert group_states(groups, {"1.1": DONE}, done=set()) == {"1": OPEN}
    assert group_states(groups, {"1.1": DONE}, done={"1.2"}) == {"1": DONE}
    assert group_states(groups, {"2": DONE}, done=set()) == {}


def test_nothing_but_the_file_is_left_in_its_folder(tasks_md):
    TasksFile(str(tasks_md)).sync({"2": DONE}, in_progress=False, final=False)
    assert os.listdir(os.path.dirname(tasks_md)) == ["tasks.md"]
