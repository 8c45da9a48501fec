"""Approval gates: `qw approve` records the approval in qw's state and writes the marker the
spec-workflow dashboard reads; read_facts turns a spec folder into the workflow's facts."""
from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest

from qw.approve import (MARKER, approvals, approve, read_facts, read_state, record_tests,
                        with_marker)
from qw.errors import LockHeld, SpecError, StateError, UsageError
from qw.lock import SpecLock
from qw.documents import parse_requirements
from qw.phases import (APPROVE, COMPLETE, DESIGN, IMPLEMENTATION, INVALID, MISSING,
                       REQUIREMENTS, REVIEW, TASKS, TESTING, WRITE, where)
from qw.tasks import parse_tasks

NOW = datetime.datetime(2025, 6, 1, 12, 30, tzinfo=datetime.timezone.utc)

REQUIREMENTS_MD = """\
# Requirements: greeter

### Requirement 1: Greeting

**User Story:** As a user, I want a greeting, so that I feel welcome

#### Acceptance Criteria

1. WHEN the program starts THEN the system SHALL print hello
2. IF a name is given THEN the system SHALL greet that name
"""

DESIGN_MD = "# Design\n\n## Overview\n\ngreeter.py holds greet().\n"

TASKS_MD = """\
# Tasks

- [ ] 1. Greeting
  - File: src/greeter.py
  - _Requirements: 1.1_
- [ ] 2. Names
  - File: src/greeter.py
  - _Requirements: 1.2_
  - _Depends: 1_
"""


def make_spec(repo: Path, **documents: str) -> Path:
    folder = repo / ".claude" / "specs" / "demo"
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in documents.items():
        (folder / f"{name}.md").write_bytes(text.encode("utf-8"))
    return folder


def test_approving_appends_the_marker_once_and_records_who_and_when(tmp_path):
    folder = make_spec(tmp_path, requirements=REQUIREMENTS_MD)
    result = approve(str(tmp_path), "demo", "requirements", who="alice", now=NOW)
    assert (result.phase, result.by, result.at) == ("requirements", "alice",
                                                    "2025-06-01T12:30:00Z")
    assert result.recorded and result.marker_written
    text = (folder / "requirements.md").read_text(encoding="utf-8")
    assert text == REQUIREMENTS_MD + "\n## \u2705 APPROVED by alice, 2025-06-01 12:30 UTC\n"
    assert text.count(MARKER) == 1

    again = approve(str(tmp_path), "demo", "requirements", who="bob")
    assert not again.recorded and not again.marker_written
    assert (again.by, again.at) == ("alice", "2025-06-01T12:30:00Z")
    assert (folder / "requirements.md").read_text(encoding="utf-8") == text

    recorded = approvals(str(tmp_path), "demo")
    assert set(recorded) == {"requirements"}
    assert recorded["requirements"]["by"] == "alice"
    assert recorded["requirements"]["at"] == "2025-06-01T12:30:00Z"
    assert len(recorded["requirements"]["sha256"]) == 64
    state = json.loads((tmp_path / ".qw" / "state" / "demo.workflow.json").read_text())
    assert state["format"] == 1 and state["spec"] == "demo"


def test_the_marker_changes_nothing_qw_reads_from_the_document():
    """The heading ends the last requirement's and the last task's section, so the marker
    never reaches a prompt; every byte before it is kept."""
    marked = with_marker(REQUIREMENTS_MD, "alice", "2025-06-01T12:30:00Z")
    assert marked.startswith(REQUIREMENTS_MD)
    assert parse_requirements(marked).requirements[0].text == \
        parse_requirements(REQUIREMENTS_MD).requirements[0].text
    marked_tasks = with_marker(TASKS_MD, "alice", "2025-06-01T12:30:00Z")
    assert parse_tasks(marked_tasks).tasks == parse_tasks(TASKS_MD).tasks


def test_crlf_and_a_missing_final_newline_are_kept():
    text = REQUIREMENTS_MD.replace("\n", "\r\n").rstrip("\r\n")
    marked = with_marker(text, "bob", "2025-06-01T12:30:00Z")
    assert marked == text + "\r\n\r\n## \u2705 APPROVED by bob, 2025-06-01 12:30 UTC\r\n"


def test_the_default_phase_is_the_first_unapproved_document(tmp_path):
    make_spec(tmp_path, requirements=REQUIREMENTS_MD, design=DESIGN_MD, tasks=TASKS_MD)
    assert approve(str(tmp_path), "demo", who="a").phase == "requirements"
    assert approve(str(tmp_path), "demo", who="a").phase == "design"
    assert approve(str(tmp_path), "demo", who="a").phase == "tasks"
    with pytest.raises(UsageError, match="every document of spec 'demo' is approved"):
        approve(str(tmp_path), "demo")
    assert set(approvals(str(tmp_path), "demo")) == {"requirements", "design", "tasks"}


def test_a_document_approved_on_the_dashboard_counts_and_is_not_marked_twice(tmp_path):
    folder = make_spec(tmp_path, requirements=REQUIREMENTS_MD + "\n\u2705 APPROVED\n",
                       design=DESIGN_MD)
    before = (folder / "requirements.md").read_bytes()
    result = approve(str(tmp_path), "demo", who="a")
    assert result.phase == "design"       # requirements count as approved already
    explicit = approve(str(tmp_path), "demo", "requirements", who="a")
    assert explicit.recorded and not explicit.marker_written
    assert (folder / "requirements.md").read_bytes() == before


def test_an_invalid_document_is_refused_with_its_problem_and_left_alone(tmp_path):
    broken = REQUIREMENTS_MD.replace("**User Story:** As a user, I want a greeting, so that "
                                     "I feel welcome\n", "")
    folder = make_spec(tmp_path, requirements=broken)
    with pytest.raises(SpecError) as raised:
        approve(str(tmp_path), "demo", "requirements")
    message = str(raised.value)
    assert "requirements.md does not validate: requirement 1 has no user story" in message
    assert "requirements.md:3" in message and "qw validate demo" in message
    assert (folder / "requirements.md").read_text() == broken
    assert approvals(str(tmp_path), "demo") == {}


def test_refusals_missing_document_wrong_order_unknown_phase_and_spec(tmp_path):
    make_spec(tmp_path, requirements=REQUIREMENTS_MD, design=DESIGN_MD)
    with pytest.raises(SpecError, match="there is no tasks.md to approve"):
        approve(str(tmp_path), "demo", "tasks")
    with pytest.raises(SpecError, match="requirements.md is not approved yet") as raised:
        approve(str(tmp_path), "demo", "design")
    assert "qw approve demo requirements" in str(raised.value)
    with pytest.raises(UsageError, match="unknown phase 'review'"):
        approve(str(tmp_path), "demo", "review")
    with pytest.raises(UsageError, match="unknown spec 'nope'"):
        approve(str(tmp_path), "nope")
    (tmp_path / ".claude" / "specs" / "empty").mkdir()
    with pytest.raises(SpecError, match="has no documents to approve yet"):
        approve(str(tmp_path), "empty")


def test_a_hand_written_tasks_md_is_approvable_without_earlier_documents(tmp_path):
    make_spec(tmp_path, tasks=TASKS_MD)
    assert approve(str(tmp_path), "demo", who="a").phase == "tasks"


def test_approval_waits_for_no_run_it_is_refused_while_a_run_holds_the_spec(tmp_path):
    folder = make_spec(tmp_path, requirements=REQUIREMENTS_MD)
    lock = SpecLock(str(tmp_path / ".qw" / "locks" / "demo.lock")).acquire({"run_id": "r1"})
    try:
        with pytest.raises(LockHeld) as raised:
            approve(str(tmp_path), "demo")
        assert raised.value.exit_code == 3
    finally:
        lock.release()
    assert MARKER not in (folder / "requirements.md").read_text()
    assert approve(str(tmp_path), "demo").recorded


def test_a_damaged_or_newer_state_is_refused_not_overwritten(tmp_path):
    make_spec(tmp_path, requirements=REQUIREMENTS_MD)
    state = tmp_path / ".qw" / "state" / "demo.workflow.json"
    state.parent.mkdir(parents=True)
    state.write_text("{not json")
    with pytest.raises(StateError, match="cannot read the workflow state"):
        approve(str(tmp_path), "demo")
    state.write_text('{"format": 99}')
    with pytest.raises(StateError, match="newer qw"):
        read_state(str(tmp_path), "demo")
    assert state.read_text() == '{"format": 99}'


# --- facts from disk --------------------------------------------------------------------

def test_read_facts_follows_a_spec_through_every_phase(tmp_path):
    repo = str(tmp_path)

    def position():
        found = where(read_facts(repo, "demo"))
        return found.phase, found.step

    assert read_facts(repo, "demo").exists is False
    folder = make_spec(tmp_path)
    assert position() == (REQUIREMENTS, WRITE)
    (folder / "requirements.md").write_text("# Requirements\n")
    assert read_facts(repo, "demo").requirements == INVALID
    (folder / "requirements.md").write_text(REQUIREMENTS_MD)
    assert position() == (REQUIREMENTS, APPROVE)
    approve(repo, "demo", who="a")
    assert position() == (DESIGN, WRITE)
    (folder / "design.md").write_text(DESIGN_MD)
    approve(repo, "demo", who="a")
    (folder / "tasks.md").write_text(TASKS_MD.replace("1.2_", "7.1_"))
    facts = read_facts(repo, "demo")
    assert facts.tasks == INVALID   # names a criterion requirements.md lacks
    (folder / "tasks.md").write_text(TASKS_MD)
    assert position() == (TASKS, APPROVE)
    approve(repo, "demo", who="a")
    assert position() == (IMPLEMENTATION, "run")
    (folder / "tasks.md").write_text(TASKS_MD.replace("[ ]", "[x]", 1))
    assert position() == (IMPLEMENTATION, "run")
    (folder / "tasks.md").write_text(TASKS_MD.replace("[ ]", "[x]"))
    assert position() == (TESTING, "run")
    record_tests(repo, "demo", False, "pytest -q", now=NOW)
    assert read_facts(repo, "demo").tests_passed is False
    record_tests(repo, "demo", True, "pytest -q", now=NOW)
    assert position() == (REVIEW, "run")
    (folder / "review.md").write_text("# Review\n\nVerdict: approve\n")
    assert position() == (COMPLETE, "done")
    # the approvals survived the test results written into the same state
    assert set(approvals(repo, "demo")) == {"requirements", "design", "tasks"}


def test_read_facts_survives_unreadable_documents_and_a_damaged_state(tmp_path):
    folder = make_spec(tmp_path)
    (folder / "requirements.md").write_bytes(b"\xff\xfe not utf-8")
    state = tmp_path / ".qw" / "state" / "demo.workflow.json"
    state.parent.mkdir(parents=True)
    state.write_text("[1, 2")
    facts = read_facts(str(tmp_path), "demo")
    assert facts.requirements == INVALID and facts.approved == frozenset()
    assert facts.design == MISSING


def test_read_facts_with_auto_approve(tmp_path):
    make_spec(tmp_path, requirements=REQUIREMENTS_MD)
    assert where(read_facts(str(tmp_path), "demo", auto_approve=True)).phase == DESIGN


def test_without_marker_gives_back_the_document_before_its_approval():
    from qw.approve import without_marker
    for text in ("# A\n\nx\n", "# A\r\n\r\nx\r\n", "# A\n\nx"):
        approved = with_marker(text, "ann", "2026-01-02T03:04:05Z")
        assert MARKER not in without_marker(approved)
        assert without_marker(approved) == (text if text.endswith("\n") else text + "\n")
    copied = f"# A\n\n## {MARKER} by a child\nstill here\n"
    assert without_marker(copied) == "# A\n\nstill here\n"
    assert without_marker("# A\n\nno marker\n\n") == "# A\n\nno marker\n\n"   # untouched
