"""The workflow's phases from facts, the commands that advance them, the document
validators and the phase prompts (qw.phases, pure)."""
from __future__ import annotations

import pytest

from qw import phases
from qw.phases import (APPROVE, COMPLETE, DESIGN, DONE, FIX, IMPLEMENTATION, INVALID,
                       REQUIREMENTS, REVIEW, RUN, START, STEERING, TASKS, TESTING,
                       VALID, WRITE, Position, SpecFacts, analyst_prompt, current_phase,
                       hook_suggestion, is_analyst, next_command, phase_line, phase_prompt,
                       validate_design, validate_requirements, validate_tasks, where)

REQUIREMENTS_MD = """\
# Requirements: greeter

## Requirements

### Requirement 1: Greeting

**User Story:** As a user, I want a greeting, so that I feel welcome

#### Acceptance Criteria

1. WHEN the program starts THEN the system SHALL print hello
2. IF a name is given THEN the system SHALL greet that name

### Requirement 2: Farewell

**User Story:** As a user, I want a farewell, so that I know it ended

#### Acceptance Criteria

1. WHEN the program ends THEN the system SHALL print goodbye
"""

DESIGN_MD = """\
# Design: greeter

## Overview

One module, greeter.py, meets requirements 1 and 2.

## Components

- greet(name) and farewell()
"""

TASKS_MD = """\
# Tasks: greeter

- [ ] 1. Greeting in src/greeter.py
  - File: src/greeter.py
  - _Requirements: 1.1, 1.2_
  - _Depends: none_
- [ ] 2. Farewell
  - File: src/greeter.py
  - _Requirements: 2_
  - _Depends: 1_
"""

ALL_VALID = dict(requirements=VALID, design=VALID, tasks=VALID)
ALL_APPROVED = frozenset({REQUIREMENTS, DESIGN, TASKS})


# --- phases from facts ------------------------------------------------------------------

@pytest.mark.parametrize("facts, phase, step", [
    (SpecFacts(exists=False), STEERING, START),
    (SpecFacts(), REQUIREMENTS, WRITE),
    (SpecFacts(requirements=INVALID), REQUIREMENTS, FIX),
    (SpecFacts(requirements=VALID), REQUIREMENTS, APPROVE),
    (SpecFacts(requirements=VALID, approved=frozenset({REQUIREMENTS})), DESIGN, WRITE),
    (SpecFacts(requirements=VALID, design=INVALID, approved=frozenset({REQUIREMENTS})),
     DESIGN, FIX),
    (SpecFacts(requirements=VALID, design=VALID, approved=frozenset({REQUIREMENTS})),
     DESIGN, APPROVE),
    (SpecFacts(requirements=VALID, design=VALID, approved=frozenset({REQUIREMENTS, DESIGN})),
     TASKS, WRITE),
    (SpecFacts(**ALL_VALID, approved=frozenset({REQUIREMENTS, DESIGN})), TASKS, APPROVE),
    (SpecFacts(requirements=VALID, design=VALID, tasks=INVALID,
               approved=frozenset({REQUIREMENTS, DESIGN})), TASKS, FIX),
    (SpecFacts(**ALL_VALID, approved=ALL_APPROVED), IMPLEMENTATION, RUN),
    (SpecFacts(**ALL_VALID, approved=ALL_APPROVED, tasks_done=True), TESTING, RUN),
    (SpecFacts(**ALL_VALID, approved=ALL_APPROVED, tasks_done=True, tests_passed=False),
     TESTING, RUN),
    (SpecFacts(**ALL_VALID, approved=ALL_APPROVED, tasks_done=True, tests_passed=True),
     REVIEW, RUN),
    (SpecFacts(**ALL_VALID, approved=ALL_APPROVED, tasks_done=True, tests_passed=True,
               review=True), COMPLETE, DONE),
])
def test_each_phase_and_step_follows_from_the_facts(facts, phase, step):
    position = where(facts)
    assert (position.phase, position.step) == (phase, step)
    assert current_phase(facts) == phase
    assert position.why


def test_auto_approve_passes_every_gate_but_not_a_broken_document():
    assert where(SpecFacts(requirements=VALID, auto_approve=True)).phase == DESIGN
    assert where(SpecFacts(**ALL_VALID, auto_approve=True)).phase == IMPLEMENTATION
    assert where(SpecFacts(requirements=VALID, design=INVALID,
                           auto_approve=True)) == Position(DESIGN, FIX,
                                                           "design.md does not validate")


def test_a_hand_written_tasks_md_skips_the_missing_earlier_documents():
    assert where(SpecFacts(tasks=VALID)) == Position(TASKS, APPROVE, "tasks.md waits for "
                                                                       "approval")
    assert where(SpecFacts(tasks=VALID, approved=frozenset({TASKS}))).phase == IMPLEMENTATION
    # design.md alone: requirements were skipped, the design waits for its gate
    assert where(SpecFacts(design=VALID)).phase == DESIGN
    # but a missing document between two written ones... is skipped too: tasks wait
    assert where(SpecFacts(requirements=VALID, tasks=VALID,
                           approved=frozenset({REQUIREMENTS}))).phase == TASKS


def test_the_order_of_phases():
    assert phases.PHASES == (STEERING, REQUIREMENTS, DESIGN, TASKS, IMPLEMENTATION, TESTING,
                             REVIEW, COMPLETE)


# --- what advances a spec ---------------------------------------------------------------

@pytest.mark.parametrize("phase, step, command", [
    (STEERING, START, None),                  # `qw new` needs a human's description
    (REQUIREMENTS, WRITE, "qw workflow demo"),
    (REQUIREMENTS, FIX, "qw workflow demo"),
    (REQUIREMENTS, APPROVE, "qw approve demo requirements"),
    (DESIGN, APPROVE, "qw approve demo design"),
    (TASKS, APPROVE, "qw approve demo tasks"),
    (TASKS, WRITE, "qw workflow demo"),
    (IMPLEMENTATION, RUN, "qw workflow demo"),
    (TESTING, RUN, "qw workflow demo"),
    (REVIEW, RUN, "qw workflow demo"),
    (COMPLETE, DONE, None),
])
def test_next_command_for_each_phase(phase, step, command):
    assert next_command("demo", phase, step) == command


def test_a_spec_name_with_a_space_is_quoted():
    assert next_command("my spec", IMPLEMENTATION) == "qw workflow 'my spec'"


@pytest.mark.parametrize("position, suggestion", [
    (Position(REQUIREMENTS, APPROVE, ""), "qw approve demo requirements"),
    (Position(DESIGN, WRITE, ""), "qw workflow demo"),       # requirements approved
    (Position(IMPLEMENTATION, RUN, ""), "qw workflow demo"),  # tasks approved
    (Position(TESTING, RUN, ""), "qw workflow demo"),         # every task checked
    (Position(REVIEW, RUN, ""), "qw workflow demo"),          # tests passed
    (Position(REQUIREMENTS, WRITE, ""), None),              # nothing complete yet
    (Position(DESIGN, FIX, ""), None),                      # someone may be editing it
    (Position(STEERING, START, ""), None),
    (Position(COMPLETE, DONE, ""), None),
])
def test_the_hook_suggests_only_after_a_completed_phase(position, suggestion):
    assert hook_suggestion("demo", position) == suggestion


# --- validators -------------------------------------------------------------------------

def test_good_documents_validate():
    assert validate_requirements(REQUIREMENTS_MD, "r.md") == []
    assert validate_design(DESIGN_MD, "d.md") == []
    assert validate_tasks(TASKS_MD, "t.md", REQUIREMENTS_MD) == []


def test_requirements_problems_each_name_file_and_line():
    text = """\
# Requirements

### Requirement 1: No story

#### Acceptance Criteria

1. WHEN x THEN the system SHALL y

### Requirement 2: No criteria

**User Story:** As a user, I want z, so that w

### Requirement 3: Not EARS

**User Story:** As a user, I want v, so that u

1. it works nicely

### Requirement 1: Again

**User Story:** As a user, I want q, so that p

1. WHEN a THEN the system SHALL b
"""
    problems = validate_requirements(text, "spec/requirements.md")
    assert len(problems) == 4, problems
    assert "requirement 1 has no user story, spec/requirements.md:3;" in problems[0]
    assert "requirement 2 has no numbered acceptance criteria, spec/requirements.md:9" \
        in problems[1]
    assert "no acceptance criterion of requirement 3 is in EARS form, " \
        "spec/requirements.md:17" in problems[2]
    assert "requirement 1 appears twice (first at spec/requirements.md:3), " \
        "spec/requirements.md:19" in problems[3]
    assert all("; " in p for p in problems)   # each says what to do


@pytest.mark.parametrize("text, expected", [
    ("", "requirements.md is empty, r.md:1"),
    ("# Requirements\n\nSome prose, no numbered requirement.\n",
     "no numbered requirements, r.md:1"),
])
def test_requirements_without_requirements(text, expected):
    [problem] = validate_requirements(text, "r.md")
    assert problem.startswith(expected)


@pytest.mark.parametrize("criterion, ears", [
    ("WHEN a user logs in THEN the system SHALL open a session", True),
    ("IF the disk is full THEN the system SHALL refuse the write", True),
    ("WHILE offline the system SHALL queue changes", True),
    ("The system SHALL log every request", True),
    ("the page loads fast", False),
    ("WHEN a user logs in THEN a session opens", False),
])
def test_ears_form(criterion, ears):
    assert phases.is_ears(criterion) is ears


@pytest.mark.parametrize("text, expected", [
    ("", "design.md is empty, d.md:1"),
    ("Just a paragraph of design.\n", "design.md has no sections, d.md:1"),
    ("# Design\n\n## Overview\n", "design.md has headings but no text under them, d.md:1"),
])
def test_design_problems(text, expected):
    [problem] = validate_design(text, "d.md")
    assert problem.startswith(expected)


def test_tasks_that_do_not_parse_or_plan_are_problems_with_file_and_line():
    duplicate = TASKS_MD.replace("- [ ] 2. Farewell", "- [ ] 1. Farewell")
    [problem] = validate_tasks(duplicate, "t.md")
    assert "duplicate task id 1" in problem and "t.md:7" in problem
    cycle = TASKS_MD.replace("_Depends: none_", "_Depends: 2_")
    [problem] = validate_tasks(cycle, "t.md")
    assert "dependency cycle" in problem
    unknown = TASKS_MD.replace("_Depends: 1_", "_Depends: 7_")
    [problem] = validate_tasks(unknown, "t.md")
    assert "unknown task 7" in problem and "t.md:" in problem
    [problem] = validate_tasks("# Tasks\n\nnothing yet\n", "t.md")
    assert problem.startswith("no tasks found, t.md")


def test_tasks_naming_requirements_that_do_not_exist():
    text = TASKS_MD.replace("_Requirements: 2_", "_Requirements: 2, 9.1_")
    assert validate_tasks(text, "t.md") == []       # without requirements: not checked
    [problem] = validate_tasks(text, "t.md", REQUIREMENTS_MD)
    assert problem.startswith("task 2 names requirement 9.1, which requirements.md does not "
                              "have, t.md:7;")


def test_validate_document_dispatches_by_phase():
    assert phases.validate_document(TASKS, "", "t.md")[0].startswith("tasks file is empty")
    with pytest.raises(ValueError):
        phases.validate_document(REVIEW, "x", "r.md")


# --- prompts ----------------------------------------------------------------------------

def test_the_requirements_prompt_says_what_to_write_where_and_in_which_format():
    prompt = phase_prompt(REQUIREMENTS, "demo", "A greeter that says hello.\nFAKE: text ok",
                          {"steering/product.md": "We make greeters."})
    # Written as a draft (Claude Code refuses writes under .claude/), then put in place.
    assert "Write the whole document to `.qw/drafts/demo/requirements.md`" in prompt
    assert "in place as .claude/specs/demo/requirements.md" in prompt
    assert "### Requirement 1:" in prompt and "**User Story:**" in prompt
    assert "WHEN <event> THEN the system SHALL <response>" in prompt
    assert "A greeter that says hello.\nFAKE: text ok" in prompt   # verbatim, lines kept
    assert "--- steering/product.md ---\nWe make greeters.\n--- end of" in prompt
    assert "problems" not in prompt


def test_the_tasks_prompt_asks_for_the_lines_qw_parses():
    prompt = phase_prompt(TASKS, "demo", "greeter",
                          {"requirements.md": REQUIREMENTS_MD, "design.md": DESIGN_MD})
    for line in ("- [ ] 1.", "  - File: ", "  - _Requirements: ", "  - _Depends: none_",
                 "  - _Depends: 1_"):
        assert line in prompt
    assert prompt.index("--- requirements.md ---") < prompt.index("--- design.md ---")


def test_a_retry_lists_the_problems_to_fix():
    problems = validate_requirements("# Requirements\n", "r.md")
    prompt = phase_prompt(REQUIREMENTS, "demo", "greeter", {}, problems=problems)
    assert "had these problems" in prompt
    assert f"- {problems[0]}" in prompt


def test_review_and_testing_prompts_and_phases_without_one():
    review = phase_prompt(REVIEW, "demo", "greeter", {"tasks.md": TASKS_MD})
    assert "`.qw/drafts/demo/review.md`" in review and "Verdict:" in review
    assert "tests" in phase_prompt(TESTING, "demo", "greeter", {})
    for phase in (STEERING, IMPLEMENTATION, COMPLETE):
        with pytest.raises(ValueError):
            phase_prompt(phase, "demo", "greeter", {})


def test_the_phase_line_counts_tasks_during_the_implementation():
    assert phase_line(Position(IMPLEMENTATION, RUN, "tasks.md has unchecked tasks"), 3, 7) \
        == "implementation (tasks 3/7 done)"
    assert phase_line(Position(DESIGN, APPROVE, "design.md waits for approval"), 0, 0) \
        == "design (design.md waits for approval)"


def test_analysts_are_architects_and_security_reviewers_and_get_the_documents():
    assert [n for n in ("architect", "security-reviewer", "Security", "reviewer", "tester",
                        "architecture-lead") if is_analyst(n)] == \
        ["architect", "security-reviewer", "Security", "architecture-lead"]
    prompt = analyst_prompt("architect", "demo", "A greeter.", {"requirements.md": "# R\n"})
    assert "As the architect" in prompt and "A greeter." in prompt
    assert "--- requirements.md ---\n# R\n--- end of requirements.md ---" in prompt
    assert "Do not create or change any file" in prompt
