"""Flipping one checkbox: exactly one character changes, every other byte is kept."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from qw.errors import SpecError
from qw.tasks import checkbox_marks, parse_tasks, set_checkbox

SPECS = Path(__file__).parent / "fixtures" / "specs"
MARKS = (" ", "x", "-", "~")
TITLES = ("Créer le modèle", "写入存储层", "Ship it 🚀", "naïve façade", "plain title",
          "Ελληνικά", "tabs\tinside", "src/a.ts and `b.py`", "trailing   ", "")
DETAILS = ("  - File: src/x.ts", "  - _Requirements: 1.1_", "  - détail ünïcode ✓",
           "  - _Depends: none_", "    - [ ] a checklist item", "    - [x] done item  ",
           "  plain continuation", "", "   ", "  - _Prompt: Role: x | Task: y_")


def generate(rng: random.Random) -> Tuple[str, Dict[str, Tuple[int, str]]]:
    """A random tasks.md and, for each task id, the offset of its mark and the mark."""
    parts: List[str] = []
    marks: Dict[str, Tuple[int, str]] = {}
    length = 0

    def emit(text: str) -> None:
        nonlocal length
        parts.append(text)
        length += len(text)

    def ending() -> str:
        return rng.choice(("\n", "\r\n", "\n", "  \r\n", " \n"))

    if rng.random() < 0.3:
        emit("\ufeff")
    if rng.random() < 0.5:
        emit("# Tasks — " + rng.choice(TITLES) + ending() + ending())
    top_count = rng.randint(1, 6)
    for top in range(1, top_count + 1):
        subtasks = rng.choice((0, 0, 1, 3))
        flush = rng.random() < 0.5
        entries = [(str(top), 0)] + [(f"{top}.{n}", 0 if flush else rng.choice((2, 4)))
                                     for n in range(1, subtasks + 1)]
        for task_id, indent in entries:
            mark = rng.choice(MARKS + ("X",))
            written_id = rng.choice((task_id + ".", task_id, task_id.replace(".", "\\.") + "\\."))
            prefix = " " * indent + rng.choice("-*+") + " ["
            marks[task_id] = (length + len(prefix), mark)
            emit(prefix + mark + "] " + written_id + " " + rng.choice(TITLES) + ending())
            for _ in range(rng.randint(0, 4)):
                emit(" " * indent + rng.choice(DETAILS) + ending())
            if rng.random() < 0.3:
                emit(ending())
    text = "".join(parts)
    if rng.random() < 0.4:
        text = text.rstrip("\r\n ")
    return text, marks


def differences(before: str, after: str) -> List[int]:
    assert len(before) == len(after)
    return [i for i, (a, b) in enumerate(zip(before, after)) if a != b]


@pytest.mark.parametrize("seed", range(200))
def test_flipping_one_task_changes_one_character(seed):
    rng = random.Random(seed)
    text, marks = generate(rng)
    for task_id in rng.sample(sorted(marks), min(3, len(marks))):
        offset, original = marks[task_id]
        new = rng.choice([m for m in MARKS if m != original.lower()])
        flipped = set_checkbox(text, task_id, new)
        assert differences(text, flipped) == [offset], (seed, task_id)
        assert flipped[offset] == new
        parsed = parse_tasks(flipped)
        assert parsed[task_id].mark == new
        assert [t.mark for t in parsed if t.id != task_id] == \
            [m.lower() for i, (_, m) in sorted(marks.items(), key=lambda kv: kv[1][0]) if i != task_id]
        if original != "X":
            assert set_checkbox(flipped, task_id, original) == text, (seed, task_id)


@pytest.mark.parametrize("seed", range(50))
def test_setting_the_mark_it_already_has_changes_nothing(seed):
    rng = random.Random(1000 + seed)
    text, marks = generate(rng)
    for task_id, (_, mark) in marks.items():
        assert set_checkbox(text, task_id, mark.lower()) is text


def test_fixture_round_trip_keeps_crlf_and_missing_final_newline():
    text = (SPECS / "every-feature" / "tasks.md").read_text(encoding="utf-8")
    text = "\ufeff" + text.replace("\n", "\r\n").rstrip("\r\n")
    flipped = set_checkbox(text, "3.2", "x")
    assert len(differences(text, flipped)) == 1
    assert "  - [x] 3.2 Add migrations\r\n" in flipped
    assert set_checkbox(flipped, "3.2", "~") == text


def test_the_file_is_re_read_not_the_plan():
    """Lines added above a task since the plan was made do not misplace the write."""
    text = "- [ ] 1. One\n- [ ] 2. Two\n"
    edited = "# Tasks\n\nIntro added later.\n\n" + text
    assert set_checkbox(edited, "2", "x") == edited.replace("- [ ] 2.", "- [x] 2.")


def test_checklists_and_fenced_lookalikes_are_never_touched():
    text = ("- [ ] 1. One\n"
            "  - [ ] 1. a checklist item that looks like task 1\n"
            "    - [ ] 2 nested lookalike\n"
            "```\n- [ ] 2. inside a fence\n```\n"
            "- [ ] 2. Two\n")
    with pytest.raises(SpecError):
        parse_tasks(text)  # the indented "1." is a task line, so it duplicates task 1
    text = text.replace("  - [ ] 1. a checklist", "  - [ ] a checklist").replace(
        "    - [ ] 2 nested lookalike\n", "    - [ ] nested item\n")
    flipped = set_checkbox(text, "2", "x")
    assert flipped == text.replace("- [ ] 2. Two", "- [x] 2. Two")


def test_unknown_task_names_the_file():
    with pytest.raises(SpecError) as caught:
        set_checkbox("- [ ] 1. One\n", "4.1", "x", ".claude/specs/s/tasks.md")
    assert str(caught.value).startswith("task 4.1 not found, .claude/specs/s/tasks.md; ")


def test_a_file_broken_since_the_plan_is_reported():
    with pytest.raises(SpecError, match="duplicate task id 1"):
        set_checkbox("- [ ] 1. One\n- [ ] 1. Again\n", "1", "x")


@pytest.mark.parametrize("mark", ["X", "", "xx", "?"])
def test_marks_other_than_the_four_are_a_programming_error(mark):
    with pytest.raises(ValueError):
        set_checkbox("- [ ] 1. One\n", "1", mark)


@pytest.mark.parametrize("seed", range(50))
def test_checkbox_marks_finds_every_mark_at_its_offset(seed):
    text, marks = generate(random.Random(seed))
    found = checkbox_marks(text)
    assert {tid: (offset, mark.lower()) for tid, (offset, mark) in marks.items()} == \
        {tid: (offset, mark) for tid, (mark, offset) in found.items()}
