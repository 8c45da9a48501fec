"""Reading tasks.md: the structure, the fields, and every malformed input's message."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from qw.errors import SpecError
from qw.tasks import Task, parse_tasks

SPECS = Path(__file__).parent / "fixtures" / "specs"


def fixture(name: str) -> str:
    return (SPECS / name / "tasks.md").read_text(encoding="utf-8")


def line_of(text: str, start: str, nth: int = 1) -> int:
    """1-based number of the nth line of `text` that starts with `start`."""
    hits = [n for n, line in enumerate(text.split("\n"), 1) if line.startswith(start)]
    return hits[nth - 1]


def one(text: str):
    """The only task of a one-task document."""
    (task,) = parse_tasks(text).tasks
    return task


# --- the upstream spec-workflow template ------------------------------------------------

def test_upstream_template_reusing_numbers_is_refused_naming_both_lines():
    text = fixture("upstream-template")
    first, second = line_of(text, "- [ ] 4. "), line_of(text, "- [ ] 4. ", 2)
    with pytest.raises(SpecError) as caught:
        parse_tasks(text, "specs/x/tasks.md")
    assert str(caught.value) == (
        f"duplicate task id 4 (first at specs/x/tasks.md:{first}), specs/x/tasks.md:{second}; "
        "task ids must be unique \u2014 the upstream spec-workflow template reuses numbers "
        "(4., 5., 6. after 8.): renumber the later tasks"
    )


def test_upstream_template_renumbered_parses_with_its_groups():
    tasks = parse_tasks(fixture("upstream-renumbered"))
    assert [t.id for t in tasks] == [
        "1", "2", "3", "4", "5", "6", "7", "8",
        "9", "9.1", "9.2", "10", "10.1", "10.2", "11", "11.1", "11.2"]
    assert [t.id for t in tasks if t.is_group] == ["9", "10", "11"]
    assert tasks["9"].children == ("9.1", "9.2")
    assert tasks["11.2"].parent == "11"
    assert tasks["11.1"].requirements == ("All",)
    assert tasks["11.2"].leverage == ("src/utils/cleanup.ts", "docs/templates/")
    assert all(t.status == "pending" for t in tasks)


def test_upstream_template_fields():
    tasks = parse_tasks(fixture("upstream-renumbered"))
    # "(continue from task 2)" is a note, not part of the path; it is also a task reference.
    assert tasks["3"].files == ("src/models/CatalogEntry.ts", "CatalogEntry.ts")
    assert tasks["3"].task_refs == ("2",)
    assert tasks["7"].files == ("src/utils/di.ts",)
    assert tasks["7"].leverage == ("src/utils/di.ts",)
    assert tasks["6"].leverage == ("src/services/BaseService.ts", "src/utils/errorHandler.ts",
                                   "src/models/CatalogEntry.ts")
    assert tasks["3"].requirements == ("2.2", "2.3")
    # The _Prompt line mentions "Node.js" and "src/..." paths; none of it becomes a field.
    assert tasks["2"].files == ("src/models/CatalogEntry.ts",)
    assert tasks["2"].details[-1].startswith("  - _Prompt: Role: backend engineer")
    assert tasks["1"].depends is None and tasks["1"].agent is None


# --- a document using every feature -----------------------------------------------------

def test_every_feature_structure():
    text = fixture("every-feature")
    tasks = parse_tasks(text)
    assert [(t.id, t.mark, t.parent) for t in tasks] == [
        ("1", "x", None), ("2", "-", None), ("3", " ", None), ("3.1", "x", "3"),
        ("3.2", "~", "3"), ("4", " ", None), ("4.1", " ", "4"), ("4.2", "x", "4"),
        ("5", " ", None)]
    assert tasks["3"].children == ("3.1", "3.2")
    assert tasks["4"].children == ("4.1", "4.2")
    assert [t.status for t in tasks][:3] == ["done", "in_progress", "pending"]
    assert tasks["3.2"].status == "blocked"
    assert tasks["3.1"].indent == 2 and tasks["4.1"].indent == 0
    assert tasks["1"].line == line_of(text, "- [x] 1. ")
    assert tasks["3.1"].line == line_of(text, "  - [x] 3.1 ")


def test_every_feature_fields():
    tasks = parse_tasks(fixture("every-feature"))
    one_, two = tasks["1"], tasks["2"]
    assert one_.title == "Create the shared types in src/types/order.ts"
    assert one_.files == ("src/types/order.ts",)
    assert one_.leverage == ("src/types/base.ts",)
    assert one_.requirements == ("1.1", "1.2")
    assert one_.agent == "typescript-pro"
    assert two.files == ("src/models/Order.ts", "src/models/LineItem.ts", "src/models/index.ts")
    assert two.leverage == ("src/utils/money.ts", "docs/conventions/")
    assert two.requirements == ("R2.1", "REQ-2.3")
    assert two.depends == ("1",)
    assert two.depends_line == two.line + 5
    assert two.timeout_s == 1200.0
    assert two.verify == "npm test -- models"
    assert two.task_refs == ("1",)
    assert tasks["3.1"].files == ("src/storage/OrderRepository.ts",)
    assert tasks["3.1"].depends == ("2",)
    assert tasks["3.2"].files == ("db/migrations/001_orders.sql", "db/migrations/002_line_items.sql")
    assert tasks["3.2"].blocked_reason == "waiting for the schema review"
    assert tasks["3.2"].timeout_s == 5400.0
    assert tasks["4"].requirements == ("3",)
    assert tasks["4.1"].depends == ()
    assert tasks["4.1"].verify == "pytest -q tests/api"
    assert tasks["4.1"].files == ("src/api/routes.ts",)
    assert tasks["5"].files == ("CHANGELOG.md",)
    assert tasks["5"].requirements == ("All",)
    assert tasks["5"].depends is None


def test_prompt_text_is_not_read_as_fields():
    handlers = parse_tasks(fixture("every-feature"))["4.2"]
    assert handlers.leverage == () and handlers.requirements == ()
    assert "    - _Leverage: src/should/not/count.ts_" in handlers.details
    assert handlers.task_refs == ("4.1", "3.2", "1")


def test_every_feature_blocks():
    text = fixture("every-feature")
    tasks = parse_tasks(text)
    two = tasks["2"]
    assert two.block.split("\n")[0] == "- [-] 2. Build the order model"
    assert "    - [ ] the constructor validates totals" in two.details  # a checklist
    assert two.details[-1].startswith("  - _Prompt: Role: backend developer")
    assert two.end_line == two.line + len(two.details)
    # A group's details stop at its first subtask; the subtask's lines are its own.
    assert tasks["3"].details == () and tasks["3"].end_line == tasks["3"].line
    assert tasks["3.1"].details == ("    - **File(s):** src/storage/OrderRepository.ts",
                                    "    - _DependsOn: 2_")
    # The block ends before the heading; the fenced "99." item is a detail, not a task.
    five = tasks["5"]
    assert five.details[-1] == "    ```"
    assert five.end_line == line_of(text, "## Notes") - 3
    assert "99" not in tasks and "100" not in tasks


def test_crlf_copy_parses_the_same():
    text = fixture("every-feature")
    assert parse_tasks(text.replace("\n", "\r\n")).tasks == parse_tasks(text).tasks


def test_bom_is_ignored():
    text = fixture("every-feature")
    assert parse_tasks("\ufeff" + text).tasks == parse_tasks(text).tasks


# --- the checkbox line ------------------------------------------------------------------

@pytest.mark.parametrize("line, task_id, title", [
    ("- [ ] 1. Title", "1", "Title"),
    ("- [ ] 1 Title", "1", "Title"),
    ("- [ ] 2.1 Title", "2.1", "Title"),
    ("- [ ] 2.1. Title", "2.1", "Title"),
    ("- [ ] 1\\. Title", "1", "Title"),
    ("- [ ] 2\\.1\\. Title", "2.1", "Title"),
    ("* [ ] 7. Star bullet", "7", "Star bullet"),
    ("+ [ ] 8. Plus bullet", "8", "Plus bullet"),
    ("-\t[ ]\t12.\tTabs   ", "12", "Tabs"),
])
def test_id_forms(line, task_id, title):
    task = one(line + "\n")
    assert (task.id, task.title) == (task_id, title)


@pytest.mark.parametrize("mark, stored", [(" ", " "), ("x", "x"), ("X", "x"), ("-", "-"),
                                          ("~", "~")])
def test_marks(mark, stored):
    assert one(f"- [{mark}] 1. Title\n").mark == stored


def test_indented_subtask_takes_the_nearest_enclosing_task():
    tasks = parse_tasks(
        "- [ ] 1. Top\n"
        "  - [ ] 1.1 Mid\n"
        "    - [ ] 1.1.1 Leaf\n"
        "  - [ ] 7. Oddly numbered child of 1\n"
        "- [ ] 2. Next\n")
    assert tasks["1"].children == ("1.1", "7")
    assert tasks["1.1"].children == ("1.1.1",)
    assert tasks["1.1.1"].parent == "1.1"
    assert tasks["7"].parent == "1"
    assert tasks["2"].parent is None


def test_flush_left_subtask_needs_its_parent_earlier_in_the_file():
    tasks = parse_tasks("- [ ] 3.1 Orphan\n- [ ] 3. Later\n- [ ] 4. Four\n- [ ] 4.1 Sub\n"
                        "- [ ] 4.1.1 Deeper\n- [ ] 4.2 Sub\n")
    assert tasks["3.1"].parent is None
    assert tasks["4"].children == ("4.1", "4.2")
    assert tasks["4.1.1"].parent == "4.1"


def test_block_ends_at_a_paragraph_a_heading_or_a_task():
    tasks = parse_tasks(
        "- [ ] 1. One\n"
        "  detail one\n"
        "- note bullet at column 0 still belongs\n"
        "\n"
        "  after a blank line\n"
        "\n\n"
        "Plain paragraph.\n"
        "  indented, but after the paragraph\n"
        "- [ ] 2. Two\n"
        "  detail two\n"
        "   ## heading ends it\n"
        "  not part of two\n")
    assert tasks["1"].details == ("  detail one", "- note bullet at column 0 still belongs", "",
                                  "  after a blank line")
    assert tasks["1"].end_line == 5
    assert tasks["2"].details == ("  detail two",)


# --- fields -----------------------------------------------------------------------------

@pytest.mark.parametrize("line", [
    "  - File: src/a.ts",
    "  - Files: src/a.ts",
    "  - File(s): src/a.ts",
    "  - _File: src/a.ts_",
    "  - **Files:** src/a.ts",
    "  - **Files**: src/a.ts",
    "  - *FILE:* `src/a.ts`",
    "  file: \"src/a.ts\".",
    "  - Files: src/a.ts (modify existing)",
])
def test_file_field_forms(line):
    assert one("- [ ] 1. Title\n" + line + "\n").files == ("src/a.ts",)


def test_files_list_and_title_paths_are_merged_in_order():
    task = one("- [ ] 1. Edit FeatureModel.ts and src/b.ts\n"
               "  - Files: src/a.ts, src/b.ts (new) , 'src/c.py'\n"
               "  - File: app/(auth)/page.tsx\n")
    assert task.files == ("src/a.ts", "src/b.ts", "src/c.py", "app/(auth)/page.tsx",
                          "FeatureModel.ts")


def test_title_prose_is_not_mistaken_for_paths():
    task = one("- [ ] 1. Add read/write locks with Node.js, e.g. v1.2, see https://x.org/a.md\n")
    assert task.files == ()


def test_leverage_keeps_only_path_like_tokens():
    task = one("- [ ] 1. T\n"
               "  - _Leverage: existing DI configuration in src/utils/di.ts, the CI/CD setup, "
               "`helpers.py`, and docs/templates/_\n")
    assert task.leverage == ("src/utils/di.ts", "helpers.py", "docs/templates/")


@pytest.mark.parametrize("line, depends", [
    ("_Depends: 1, 2.1_", ("1", "2.1")),
    ("_DependsOn: 3_", ("3",)),
    ("_Depends on: 3 and 4_", ("3", "4")),
    ("**Depends:** 5", ("5",)),
    ("_Depends: none_", ()),
    ("_depends: None_", ()),
])
def test_depends_forms(line, depends):
    task = one("- [ ] 9. T\n  - x\n  - " + line + "\n")
    assert task.depends == depends
    assert task.depends_line == 3


def test_requirements_are_kept_as_written():
    task = one("- [ ] 1. T\n  - _Requirements: R1.1, 2.3 ,All,_\n")
    assert task.requirements == ("R1.1", "2.3", "All")


def test_task_references():
    task = one("- [ ] 5. Finish what task 2 began\n"
               "  - Then tasks 1, 3 and 4.1 & 6; also Task #7 and subtask 8.2\n"
               "  - Not task 5 itself, and not a number: task list\n")
    assert task.task_refs == ("2", "1", "3", "4.1", "6", "7", "8.2")


def test_task_references_in_any_case():
    # Matching ignores case as Python's re does: "\u017f" (long s) is an "s" and
    # "\u212a" (Kelvin sign) a "k".
    task = one("- [ ] 5. T\n  - after TASK 1, ta\u017fk 2 and tas\u212a 3\n  - no mention here\n")
    assert task.task_refs == ("1", "2", "3")
    assert one("- [ ] 5. T\n  - nothing to wait for\n").task_refs == ()


def test_what_starts_a_line_decides_what_it_is():
    # A comment opened after any whitespace hides the checkboxes in it; a bullet or
    # prose is a detail of the task above it when indented, and ends the task at column 0.
    text = ("- [ ] 1. One\n"
            "  \u00a0<!-- later:\n"
            "- [ ] 2. Not yet\n"
            "-->\n"
            "  plain detail\n"
            "\t- [ ] a checklist item\n"
            "- a bullet at column 0\n"
            "Prose at column 0\n"
            "  not a detail any more\n"
            "- [ ] 3. Three\n"
            "   # a heading\n"
            "  after the heading\n")
    tasks = parse_tasks(text)
    assert [t.id for t in tasks] == ["1", "3"]
    assert tasks["1"].details == ("  \u00a0<!-- later:", "- [ ] 2. Not yet", "-->",
                                  "  plain detail", "\t- [ ] a checklist item",
                                  "- a bullet at column 0")
    assert tasks["3"].details == ()


# --- malformed input --------------------------------------------------------------------

def test_empty_file():
    for text in ("", "\ufeff", "  \r\n\n"):
        with pytest.raises(SpecError) as caught:
            parse_tasks(text, "s/tasks.md")
        assert str(caught.value) == (
            "tasks file is empty, s/tasks.md; add checkbox items like `- [ ] 1. Title`")


def test_no_tasks():
    with pytest.raises(SpecError) as caught:
        parse_tasks("# Tasks\n\nNothing here yet.\n- a plain bullet\n", "s/tasks.md")
    assert str(caught.value) == (
        "no tasks found, s/tasks.md; add checkbox items like `- [ ] 1. Title`")


@pytest.mark.parametrize("text, line", [
    ("- [ ] 1. One\n- [ ] Two without a number\n", 2),
    ("# Tasks\n\n* [x] done thing\n", 3),
    ("- [ ] 1. One\n  - [ ] 1.1 Sub\n  - [ ] sibling of 1.1, not a checklist\n", 3),
])
def test_unnumbered_checkbox(text, line):
    with pytest.raises(SpecError) as caught:
        parse_tasks(text, "s/tasks.md")
    message = str(caught.value)
    assert message.startswith("checkbox item has no task number")
    assert f", s/tasks.md:{line}; number it like `- [ ] 3. Title`" in message


def test_bad_timeout_names_its_line():
    with pytest.raises(SpecError) as caught:
        parse_tasks("- [ ] 1. T\n  - detail\n  - _Timeout: soon_\n", "s/tasks.md")
    assert str(caught.value).startswith("bad _Timeout: 'soon' in task 1, s/tasks.md:3; ")


def test_zero_timeout_is_refused():
    with pytest.raises(SpecError, match=r"s/tasks.md:2"):
        parse_tasks("- [ ] 1. T\n  - _Timeout: 0_\n", "s/tasks.md")


def test_bad_depends_names_its_line():
    with pytest.raises(SpecError) as caught:
        parse_tasks("- [ ] 1. T\n  - _Depends: the model_\n", "s/tasks.md")
    assert ", s/tasks.md:2; " in str(caught.value)


def test_a_single_value_field_twice_is_refused():
    with pytest.raises(SpecError) as caught:
        parse_tasks("- [ ] 1. T\n  - _Agent: a_\n  - _Agent: b_\n", "s/tasks.md")
    assert str(caught.value).startswith(
        "task 1 has more than one _Agent: line (first at s/tasks.md:2), s/tasks.md:3")


def test_duplicate_subtask_ids_name_both_lines():
    with pytest.raises(SpecError) as caught:
        parse_tasks("- [ ] 1. A\n  - [ ] 1.1 B\n\n  - [ ] 1.1 C\n", "t.md")
    assert str(caught.value).startswith("duplicate task id 1.1 (first at t.md:2), t.md:4; ")


# --- what a parsed task is -------------------------------------------------------------

def test_a_parsed_task_is_the_task_its_fields_make():
    # The parser fills a Task's instance dict in one step (see tasks._new_task): each task
    # must be exactly what Task(...) builds from the same fields, frozen like it.
    for task in parse_tasks(fixture("every-feature")):
        values = {f.name: getattr(task, f.name) for f in dataclasses.fields(Task)}
        made = Task(**values)
        assert task == made and hash(task) == hash(made) and repr(task) == repr(made)
        assert list(vars(task).items()) == list(vars(made).items())
        with pytest.raises(dataclasses.FrozenInstanceError):
            task.title = "changed"


def test_fields_nested_under_a_prompt_or_a_bare_files_line():
    task = one("- [ ] 1. Title\n"
               "  - Files:\n"
               "    - src/a.ts (new)\n"
               "\n"
               "    * `src/b.ts`\n"
               "  - _Prompt: Role: dev\n"
               "      _Depends: 9_\n"
               "      File: not/this.ts\n"
               "  - _Requirements: 1.2_\n"
               "  - File: src/c.ts\n")
    assert task.files == ("src/a.ts", "src/b.ts", "src/c.ts")
    assert task.requirements == ("1.2",) and task.depends is None


def test_lines_inside_a_fence_or_a_comment_stay_in_their_task():
    text = ("- [ ] 1. A\n  ```\n- [ ] 2. not a task\n  ```\n  - File: a.py\n"
            "<!--\n- [ ] 3. not a task either\n-->\n- [ ] 4. B\n  <!-- a note\n"
            "- [ ] 5. nor this\n  -->\n  - _Depends: 1_\n")
    tasks = parse_tasks(text)
    assert [t.id for t in tasks] == ["1", "4"]
    assert tasks["1"].files == ("a.py",) and tasks["1"].end_line == 5
    assert tasks["4"].depends == ("1",) and tasks["4"].details[1] == "- [ ] 5. nor this"
