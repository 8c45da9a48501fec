"""The spec workflow's phases: where a spec stands, what advances it, and what the document
phases must produce (DESIGN §2, issue 8).

    steering -> requirements -> design -> tasks -> implementation -> testing -> review -> complete

Pure: facts about a spec in (which documents exist and validate, which are approved, whether
tasks.md is all checked, whether the tests passed last, whether review.md exists), values
out. Reading those facts from disk is `qw.approve.read_facts`'s job.

The document validators return every problem they find as one line, `what, file:line;
fix` (the shape of a QwError and of `qw validate`), so that a phase can be retried with the
problems listed in the child's prompt.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import FrozenSet, List, Mapping, Optional, Sequence

from qw.errors import QwError

STEERING = "steering"
REQUIREMENTS = "requirements"
DESIGN = "design"
TASKS = "tasks"
IMPLEMENTATION = "implementation"
TESTING = "testing"
REVIEW = "review"
COMPLETE = "complete"
PHASES = (STEERING, REQUIREMENTS, DESIGN, TASKS, IMPLEMENTATION, TESTING, REVIEW, COMPLETE)
DOCUMENT_PHASES = (REQUIREMENTS, DESIGN, TASKS)   # the phases that end at an approval gate
DOCUMENT_FILES = {REQUIREMENTS: "requirements.md", DESIGN: "design.md", TASKS: "tasks.md"}
REVIEW_FILE = "review.md"

# What a document is, as SpecFacts records it.
MISSING, INVALID, VALID = "missing", "invalid", "valid"

# The step a phase is at: what has to happen next within it.
START = "start"        # steering: the spec does not exist yet (a human gives its description)
WRITE = "write"        # a document phase whose document is not written yet
FIX = "fix"            # its document is written but does not validate
APPROVE = "approve"    # its document validates and waits at the approval gate
RUN = "run"            # implementation, testing, review: qw has work to do
DONE = "done"          # complete


@dataclass(frozen=True)
class SpecFacts:
    """What is known about one spec on disk; every field a built-in type.

    A document phase whose document is missing while a later one exists was skipped (a spec
    written by hand, tasks.md only): it does not hold the spec back. `tests_passed` is None
    until the workflow's testing phase has run (it records True when there is no test
    command to run).
    """

    exists: bool = True
    requirements: str = MISSING
    design: str = MISSING
    tasks: str = MISSING
    approved: FrozenSet[str] = frozenset()
    auto_approve: bool = False
    tasks_done: bool = False
    tests_passed: Optional[bool] = None
    review: bool = False

    def document(self, phase: str) -> str:
        """MISSING, INVALID or VALID for a document phase."""
        return getattr(self, phase)


@dataclass(frozen=True)
class Position:
    """Where a spec stands: its phase, the step within it, and why, in one line."""

    phase: str
    step: str
    why: str


def where(facts: SpecFacts) -> Position:
    """The first phase of the spec that is not finished, and the step it is at."""
    if not facts.exists:
        return Position(STEERING, START, "no spec yet: `qw new SPEC \"description\"` starts one")
    states = [facts.document(phase) for phase in DOCUMENT_PHASES]
    last_written = max((i for i, state in enumerate(states) if state != MISSING), default=-1)
    for index, phase in enumerate(DOCUMENT_PHASES):
        name = DOCUMENT_FILES[phase]
        state = states[index]
        if state == MISSING:
            if index < last_written:
                continue  # skipped: a later document exists without this one
            return Position(phase, WRITE, f"{name} is not written yet")
        if state == INVALID:
            return Position(phase, FIX, f"{name} does not validate")
        if phase not in facts.approved and not facts.auto_approve:
            return Position(phase, APPROVE, f"{name} waits for approval")
    if not facts.tasks_done:
        return Position(IMPLEMENTATION, RUN, "tasks.md has unchecked tasks")
    if facts.tests_passed is not True:
        return Position(TESTING, RUN, "the tests have not passed yet" if facts.tests_passed
                        is None else "the tests failed last time")
    if not facts.review:
        return Position(REVIEW, RUN, f"{REVIEW_FILE} is not written yet")
    return Position(COMPLETE, DONE, "reviewed")


def current_phase(facts: SpecFacts) -> str:
    """The spec's phase: one of PHASES."""
    return where(facts).phase


def next_command(spec: str, phase: str, step: str = RUN) -> Optional[str]:
    """The qw command that advances a spec at `phase` (and `step`), or None when no command
    can: before the spec exists (`qw new SPEC "description"` needs a human's description)
    and once it is complete. A document waiting at its gate is approved; everything else
    is `qw workflow`, which writes the documents, runs the tasks, the tests and the review."""
    name = shlex.quote(spec)
    if phase in (STEERING, COMPLETE):
        return None
    if phase in DOCUMENT_PHASES and step == APPROVE:
        return f"qw approve {name} {phase}"
    return f"qw workflow {name}"


def phase_line(position: Position, tasks_done: Optional[int] = None,
               tasks_total: Optional[int] = None) -> str:
    """One line saying where a spec stands, for `qw status`: `implementation (tasks 3/7
    done)`, `design (design.md waits for approval)`."""
    if position.phase == IMPLEMENTATION and tasks_total is not None:
        return f"{IMPLEMENTATION} (tasks {tasks_done or 0}/{tasks_total} done)"
    return f"{position.phase} ({position.why})"


def hook_suggestion(spec: str, position: Position) -> Optional[str]:
    """The command a Stop hook may suggest: only once a phase is complete (a document
    validates and waits for approval, an approved phase lets the next one start, the tasks
    or the tests are done), never for a document that is missing or broken (someone may be
    writing it right now: regenerating it would clobber their work)."""
    if position.step in (START, FIX, DONE):
        return None
    if position.phase == REQUIREMENTS and position.step == WRITE:
        return None  # nothing is complete yet: `qw new` owns this step
    return next_command(spec, position.phase, position.step)


# --- validators -------------------------------------------------------------------------

_EARS_SHALL = re.compile(r"\bshall\b", re.IGNORECASE)
_EARS_OPENING = re.compile(r"^[\s*_]*(?:when|if|while|where|the)\b", re.IGNORECASE)
_EARS_THEN = re.compile(r"\bthen\b", re.IGNORECASE)
_STORY_FIX = "add `**User Story:** As a <role>, I want <feature>, so that <benefit>`"
_EARS_FIX = ("write numbered criteria like `1. WHEN <event> THEN the system SHALL "
             "<response>` under `#### Acceptance Criteria`")


def _problem(what: str, where_: str, fix: str) -> str:
    return str(QwError(what, where_, fix))


def is_ears(criterion: str) -> bool:
    """True for an EARS-style criterion: WHEN/IF/WHILE/WHERE ... THEN ... SHALL, or a
    ubiquitous `The <system> SHALL ...`."""
    return bool(_EARS_SHALL.search(criterion)
                and (_EARS_OPENING.match(criterion) or _EARS_THEN.search(criterion)))


def validate_requirements(text: str, path: str = "requirements.md") -> List[str]:
    """Every problem of a requirements.md: it must hold numbered `### Requirement N`
    sections, each with a user story and at least one numbered EARS acceptance criterion,
    and no number twice. Empty list: valid."""
    from qw.documents import parse_requirements

    if not text.lstrip("\ufeff").strip():
        return [_problem("requirements.md is empty", f"{path}:1",
                         "write `### Requirement 1: Title` sections")]
    parsed = parse_requirements(text, path)
    if not parsed.requirements:
        return [_problem("no numbered requirements", f"{path}:1",
                         "write each requirement as a `### Requirement N: Title` section")]
    problems = []
    first = {}
    for requirement in parsed.requirements:
        at = f"{path}:{requirement.line}"
        number = requirement.number
        if number in first:
            problems.append(_problem(f"requirement {number} appears twice (first at "
                                     f"{path}:{first[number]})", at, "renumber them 1, 2, 3..."))
            continue
        first[number] = requirement.line
        if not requirement.user_story:
            problems.append(_problem(f"requirement {number} has no user story", at, _STORY_FIX))
        if not requirement.criteria:
            problems.append(_problem(f"requirement {number} has no numbered acceptance "
                                     "criteria", at, _EARS_FIX))
        elif not any(is_ears(c.text) for c in requirement.criteria):
            problems.append(_problem(
                f"no acceptance criterion of requirement {number} is in EARS form",
                f"{path}:{requirement.criteria[0].line}", _EARS_FIX))
    return problems


def validate_design(text: str, path: str = "design.md") -> List[str]:
    """Every problem of a design.md: it must not be empty and must be cut into sections
    (markdown headings) with text in them."""
    from qw.documents import parse_design

    if not text.lstrip("\ufeff").strip():
        return [_problem("design.md is empty", f"{path}:1",
                         "write `## Overview`, `## Architecture`, ... sections")]
    sections = parse_design(text, path).sections
    headed = [s for s in sections if s.level > 0]
    if not headed:
        return [_problem("design.md has no sections", f"{path}:1",
                         "cut it into `## Overview`, `## Architecture`, ... sections")]
    if not any(len(s.text.strip().splitlines()) > 1 for s in headed):
        return [_problem("design.md has headings but no text under them",
                         f"{path}:{headed[0].line}", "describe the design under each heading")]
    return []


def validate_tasks(text: str, path: str = "tasks.md",
                   requirements_text: Optional[str] = None) -> List[str]:
    """Every problem of a tasks.md: it must parse (qw.tasks) and plan (qw.plan: known
    dependencies, no cycle); with `requirements_text`, every `_Requirements:` reference must
    name a requirement or criterion there. Empty list: valid."""
    from qw.documents import parse_requirements
    from qw.plan import build_plan
    from qw.tasks import parse_tasks

    try:
        tasks = parse_tasks(text, path)
        build_plan(tasks)
    except QwError as error:
        return [str(error)]
    if requirements_text is None:
        return []
    requirements = parse_requirements(requirements_text)
    problems = []
    for task in tasks:
        unknown = requirements.unresolved(task.requirements)
        if unknown:
            problems.append(_problem(
                f"task {task.id} names requirement {', '.join(unknown)}, which "
                "requirements.md does not have", f"{path}:{task.line}",
                "name requirements by their numbers (`_Requirements: 1.2, 3_`)"))
    return problems


def validate_document(phase: str, text: str, path: str,
                      requirements_text: Optional[str] = None) -> List[str]:
    """The validator of a document phase, applied."""
    if phase == REQUIREMENTS:
        return validate_requirements(text, path)
    if phase == DESIGN:
        return validate_design(text, path)
    if phase == TASKS:
        return validate_tasks(text, path, requirements_text)
    raise ValueError(f"{phase!r} is not a document phase")


# --- prompts ----------------------------------------------------------------------------

_REQUIREMENTS_FORMAT = """\
# Requirements: <feature>

## Introduction

<what the feature is for, in a paragraph>

## Requirements

### Requirement 1: <title>

**User Story:** As a <role>, I want <feature>, so that <benefit>

#### Acceptance Criteria

1. WHEN <event> THEN the system SHALL <response>
2. IF <precondition> THEN the system SHALL <response>

### Requirement 2: <title>
..."""

_DESIGN_FORMAT = """\
# Design: <feature>

## Overview
## Architecture
## Components and Interfaces
## Data Models
## Error Handling
## Testing Strategy"""

_TASKS_FORMAT = """\
# Tasks: <feature>

- [ ] 1. <what to build, in a few words>
  - File: <path/of/the/file.ext it creates or changes>
  - <what exactly to do, the detail a developer needs>
  - _Requirements: 1.1, 1.2_
  - _Depends: none_
- [ ] 2. <next task>
  - File: <path>
  - <details>
  - _Leverage: <path of an existing file to build on>_
  - _Requirements: 2.1_
  - _Depends: 1_"""

_RULES = {
    REQUIREMENTS: [
        "Number the requirements 1, 2, 3... as `### Requirement N: Title` headings.",
        "Give every requirement a `**User Story:**` line and numbered acceptance criteria "
        "in EARS form: `WHEN <event> THEN the system SHALL <response>`, or `IF <condition> "
        "THEN the system SHALL <response>`.",
        "Criterion 2 of requirement 3 is referred to as 3.2 later: keep the numbers stable.",
    ],
    DESIGN: [
        "Cut the design into `##` sections as below; put text under every heading.",
        "Refer to requirements by number (Requirement 2, 3.1) where the design meets them.",
        "Name the files and modules the implementation will create or change.",
    ],
    TASKS: [
        "One checkbox per task, numbered 1, 2, 3... (subtasks 2.1, 2.2 indented under 2); "
        "every id unique.",
        "Each task is small enough for one focused session and names the files it creates "
        "or changes on `- File:` lines (comma-separated).",
        "`- _Requirements: ..._` names the requirement numbers (or criteria, like 2.1) "
        "the task implements; use only numbers that exist in requirements.md.",
        "`- _Depends: ..._` lists the ids of earlier tasks it needs, or `none`; never a "
        "later task, never a cycle. Tasks that do not depend on each other run in parallel.",
        "Leave every box unchecked (`- [ ]`).",
    ],
}
_FORMATS = {REQUIREMENTS: _REQUIREMENTS_FORMAT, DESIGN: _DESIGN_FORMAT, TASKS: _TASKS_FORMAT}
_GOALS = {
    REQUIREMENTS: "Write the requirements document for the feature described below.",
    DESIGN: "Write the technical design for the feature, from its requirements below.",
    TASKS: "Break the design below into an implementation task list.",
    TESTING: "Write the tests that are missing for the feature below: one test per "
             "acceptance criterion that no test covers yet. Do not change the "
             "implementation; if a test fails because the code is wrong, say so.",
    REVIEW: "Review the implementation of the feature below against its requirements and "
            "design: for every requirement, say whether the code meets it, with file:line "
            "evidence; list bugs, risks and missing tests, most serious first; end with a "
            "verdict line `Verdict: approve` or `Verdict: changes requested`.",
}


def document_path(spec_name: str, phase: str) -> str:
    """Where a phase's document lives, relative to the repository root, with `/`."""
    return f".claude/specs/{spec_name}/{_document_name(phase)}"


def draft_path(spec_name: str, phase: str) -> str:
    """Where a phase's child writes its document, relative to the repository root.

    Not the document's own place: Claude Code 2.1 refuses a headless child's writes under
    `.claude/` ("a sensitive file"), whatever the permission mode's allow rules say. qw
    validates the draft and then moves it into place, so the spec folder never holds a
    child's half-done or invalid document either."""
    return f".qw/drafts/{spec_name}/{_document_name(phase)}"


def _document_name(phase: str) -> str:
    name = DOCUMENT_FILES.get(phase) or (REVIEW_FILE if phase == REVIEW else None)
    if name is None:
        raise ValueError(f"phase {phase!r} writes no document")
    return name


def phase_prompt(phase: str, spec_name: str, description: str,
                 documents_so_far: Mapping[str, str],
                 problems: Optional[Sequence[str]] = None) -> str:
    """The prompt of a workflow phase's claude child: what to write and where, in the
    format qw parses, with the documents written so far (name -> text, in the order given:
    steering first, then requirements, design...) and, on a retry, the problems to fix.

    Phases: requirements, design, tasks (a document each), testing (tests written into the
    repository) and review (review.md)."""
    if phase not in _GOALS:
        raise ValueError(f"phase {phase!r} has no prompt")
    parts = [_GOALS[phase], "", f"Spec: {spec_name}", "", "Feature description:",
             description.strip() or "(none given: work from the documents below)"]
    if phase in _FORMATS:
        parts += ["", f"Write the whole document to `{draft_path(spec_name, phase)}` (create "
                  "or replace that one file; change no other file). qw checks it after you "
                  f"finish, puts it in place as {document_path(spec_name, phase)}, and asks "
                  "again if it does not follow these rules:"]
        parts += [f"- {rule}" for rule in _RULES[phase]]
        parts += ["", "The format, exactly:", "", _FORMATS[phase]]
    elif phase == REVIEW:
        parts += ["", f"Write the review to `{draft_path(spec_name, REVIEW)}` (markdown; qw "
                  f"puts it in place as {document_path(spec_name, REVIEW)}); change no "
                  "other file."]
    if problems:
        parts += ["", "Your previous version had these problems. Fix every one of them and "
                  "write the whole document again:"]
        parts += [f"- {problem}" for problem in problems]
    for name, text in documents_so_far.items():
        parts += ["", f"--- {name} ---", text.strip("\n"), f"--- end of {name} ---"]
    return "\n".join(parts) + "\n"


def analyst_prompt(agent: str, spec_name: str, description: str,
                   documents_so_far: Mapping[str, str]) -> str:
    """The prompt of an analyst of the design fan-out (an architect, a security reviewer:
    an agent of `.claude/agents/`): notes for the design's author, given as its answer."""
    parts = [f"As the {agent} of this project, write the notes the technical design of the "
             "feature below must take into account, from your point of view: constraints, "
             "risks, choices to make and what you recommend, each with its reason. Read the "
             "repository as you need. Do not create or change any file: answer with the "
             "notes in markdown; qw hands them to the author of the design.",
             "", f"Spec: {spec_name}", "", "Feature description:",
             description.strip() or "(none given: work from the documents below)"]
    for name, text in documents_so_far.items():
        parts += ["", f"--- {name} ---", text.strip("\n"), f"--- end of {name} ---"]
    return "\n".join(parts) + "\n"


def is_analyst(agent_name: str) -> bool:
    """Whether an agent of `.claude/agents/` takes part in the design fan-out: an
    architect or a security reviewer, by its name."""
    name = agent_name.lower()
    return name.startswith(("architect", "security"))
