"""requirements.md and design.md: what a task's prompt can be given from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from qw.documents import parse_design, parse_requirements

SPEC = Path(__file__).parent / "fixtures" / "specs" / "every-feature"


@pytest.fixture(scope="module")
def requirements():
    text = (SPEC / "requirements.md").read_text(encoding="utf-8")
    return parse_requirements(text, "requirements.md")


@pytest.fixture(scope="module")
def design():
    return parse_design((SPEC / "design.md").read_text(encoding="utf-8"), "design.md")


def test_requirement_sections(requirements):
    assert [(r.number, r.title) for r in requirements.requirements] == [
        ("1", "Order types"), ("2", "Order model"), ("3", "")]
    first = requirements.by_number["1"]
    assert first.line == 9
    assert first.user_story == ("As a developer, I want shared order types, so that every "
                                "layer agrees on the shape of an order.")
    assert first.text.startswith("### Requirement 1: Order types\n\n**User Story:**")
    assert first.text.endswith("   with a message naming the order")


def test_criteria_with_continuation_lines(requirements):
    first = requirements.by_number["1"]
    assert [(c.number, c.line) for c in first.criteria] == [("1", 16), ("2", 17)]
    assert first.criteria[1].text == ("IF an order has no line items THEN the system SHALL "
                                      "reject it\n   with a message naming the order")


def test_criteria_stop_at_the_next_subheading(requirements):
    second = requirements.by_number["2"]
    assert [c.number for c in second.criteria] == ["1", "2", "3"]
    assert "4. Not a criterion" in second.text  # still part of the section


def test_requirement_without_acceptance_heading(requirements):
    third = requirements.by_number["3"]
    assert [c.text for c in third.criteria] == [
        "WHEN a client calls GET /orders THEN the API SHALL list the orders"]
    assert "Non-functional" not in third.text


def test_resolve_a_criterion_with_its_context(requirements):
    assert requirements.resolve("2.3") == (
        "Requirement 2: Order model\n"
        "User Story: As a shop owner, I want totals computed for me.\n"
        "Acceptance criterion 2.3: WHEN the order is saved THEN the system SHALL store the "
        "total in cents")
    for spelling in ("R2.3", "REQ-2.3", "req 2.3", " 2.3 "):
        assert requirements.resolve(spelling) == requirements.resolve("2.3")


def test_resolve_whole_requirements_and_everything(requirements):
    assert requirements.resolve("2") == requirements.by_number["2"].text
    assert requirements.resolve("2.0") == requirements.by_number["2"].text
    assert requirements.resolve("R1") == requirements.by_number["1"].text
    assert requirements.resolve("All").startswith("# Requirements Document")
    assert requirements.resolve("all").endswith("- Responses within 200 ms.\n")


def test_unresolved_references(requirements):
    refs = ["1.1", "1.3", "2", "9", "All", "R3.1", "3.2", "see design", ""]
    assert requirements.unresolved(refs) == ["1.3", "9", "3.2", "see design", ""]


def test_heading_styles_and_levels():
    text = ("\ufeff# R\r\n\r\n## Requirement 1 - Dashes\r\n1. WHEN a THEN b\r\n"
            "#### Requirement 2\r\n**User Story:**\r\nAs a user I want it\r\n\r\n"
            "### REQ-3: Short form\r\n##### Requirement 4: too deep to count\r\n"
            "```\n### Requirement 5: in a fence\n```\n")
    parsed = parse_requirements(text, "r.md")
    assert [(r.number, r.title, r.line) for r in parsed.requirements] == [
        ("1", "Dashes", 3), ("2", "", 5), ("3", "Short form", 9)]
    assert parsed.by_number["2"].user_story == "As a user I want it"
    assert parsed.by_number["1"].criteria[0].text == "WHEN a THEN b"
    assert "Requirement 4" in parsed.by_number["3"].text


def test_a_freeform_document_resolves_only_all():
    parsed = parse_requirements("Just some notes.\n", "r.md")
    assert parsed.requirements == ()
    assert parsed.resolve("1.1") is None
    assert parsed.resolve("All") == "Just some notes.\n"


def test_design_sections(design):
    assert [(s.heading, s.level) for s in design.sections] == [
        ("Design Document", 1), ("Overview", 2), ("Architecture", 2),
        ("Components and Interfaces", 2), ("Order model (src/models/Order.ts)", 3),
        ("Order repository", 3), ("Error Handling", 2)]
    architecture = design.sections[2]
    assert architecture.line == 7
    assert "# not a heading: inside a fence" in architecture.text
    assert design.sections[-1].text == "## Error Handling\n\nErrors cite requirement 1.10 only."


def test_relevant_sections(design):
    def headings(words):
        return [s.heading for s in design.relevant(words)]

    assert headings(["src/models/Order.ts"]) == ["Order model (src/models/Order.ts)"]
    assert headings(["OrderRepository.ts"]) == ["Order repository"]
    assert headings(["src/utils/money.ts", "orderrepository.ts"]) == [
        "Order model (src/models/Order.ts)", "Order repository"]
    assert headings(["2.1"]) == ["Order model (src/models/Order.ts)"]
    assert headings(["1.1"]) == []  # "1.10" is another requirement
    assert headings(["Order.ts"]) == ["Order model (src/models/Order.ts)"]
    assert headings(["", "  "]) == []


def test_relevant_sections_ignore_case_as_re_does_beyond_ascii():
    # re's IGNORECASE reads "\u017f" as s, "\u212a" (Kelvin) as k and "\u0131" as i: a
    # section spelled so still counts, however the words are looked for.
    design = parse_design("# A\nnothing\n## Kit\nSee \u017frc/\u212a\u0131t.ts here\n")
    assert [s.heading for s in design.relevant(["src/KIT.ts"])] == ["Kit"]
    assert [s.heading for s in design.relevant(["src/kat.ts", "rc/kit.ts"])] == []


def test_design_preamble_is_a_section():
    design = parse_design("Intro line.\n\n# First\nbody\n", "d.md")
    assert [(s.heading, s.level, s.line, s.text) for s in design.sections] == [
        ("", 0, 1, "Intro line."), ("First", 1, 3, "# First\nbody")]
