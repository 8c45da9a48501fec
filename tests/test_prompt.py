"""What a task's child is told: its own task, its requirements, the design it touches."""

from qw.config import default_config
from qw.plan import build_plan
from qw.prompt import build_prompt, dry_run_report
from qw.specdir import load_spec, resolve_spec

REQUIREMENTS = """\
# Requirements

### Requirement 1: Login

**User Story:** As a user, I want to log in, so that my data is mine.

#### Acceptance Criteria

1. WHEN the password is right THEN the system SHALL open a session
2. WHEN the password is wrong THEN the system SHALL say so

### Requirement 2: Reports

**User Story:** As a manager, I want monthly reports, so that I can plan.

#### Acceptance Criteria

1. WHEN a month ends THEN the system SHALL email the report
"""

DESIGN = """\
# Design

## Sessions

The session store lives in src/auth/session.py and keeps tokens for a day.

## Reporting

src/reports/monthly.py renders a PDF. """ + "Lots of reporting detail. " * 200 + """

## Glossary

Words nobody needs.
"""

TASKS = """\
# Tasks

- [ ] 1. Session store in src/auth/session.py
  - File: src/auth/session.py
  - Keep tokens for a day
  - _Leverage: src/auth/base.py_
  - _Requirements: 1.1_
- [ ] 2. Monthly report
  - File: src/reports/monthly.py
  - _Requirements: 2_
"""


def make_repo(tmp_path, steering=True):
    spec_dir = tmp_path / ".claude" / "specs" / "shop"
    spec_dir.mkdir(parents=True)
    (spec_dir / "requirements.md").write_text(REQUIREMENTS)
    (spec_dir / "design.md").write_text(DESIGN)
    (spec_dir / "tasks.md").write_text(TASKS)
    if steering:
        (tmp_path / ".claude" / "steering").mkdir()
        (tmp_path / ".claude" / "steering" / "tech.md").write_text("We use Python 3.12.\n")
    return load_spec(resolve_spec(str(tmp_path), "shop"))


def test_the_prompt_holds_the_task_its_criteria_leverage_design_and_the_rule(tmp_path):
    spec = make_repo(tmp_path)
    prompt = build_prompt(spec, spec.tasks["1"])
    assert "- [ ] 1. Session store in src/auth/session.py\n  - File: src/auth/session.py" in prompt
    assert "open a session" in prompt                # criterion 1.1
    assert "say so" not in prompt                    # 1.2 was not asked for
    assert "src/auth/base.py" in prompt              # leverage
    assert "keeps tokens for a day" in prompt        # the design section naming its file
    assert "Lots of reporting detail" not in prompt  # a section about another file
    assert "Words nobody needs" not in prompt
    assert "We use Python 3.12." in prompt           # steering
    assert ".claude/specs/shop/tasks.md" in prompt and "qw marks the task done" in prompt
    assert "2. Monthly report" not in prompt         # other tasks are not its business


def test_a_whole_requirement_reference_brings_every_criterion(tmp_path):
    spec = make_repo(tmp_path, steering=False)
    prompt = build_prompt(spec, spec.tasks["2"])
    assert "email the report" in prompt and "monthly reports" in prompt
    assert "Project context" not in prompt


def test_dry_run_reports_commands_prompts_and_sizes(tmp_path):
    spec = make_repo(tmp_path)
    config = default_config()
    plan = build_plan(spec.tasks)
    report = dry_run_report(spec, plan, config)
    assert [t["id"] for t in report["tasks"]] == ["1", "2"]
    command = report["tasks"][0]["command"]
    assert command[:5] == ["claude", "-p", "--output-format", "stream-json", "--verbose"]
    assert all(t["prompt"] not in " ".join(t["command"]) for t in report["tasks"])
    sizes = report["prompt_sizes"]
    assert sizes["max"] == max(t["prompt_chars"] for t in report["tasks"])
    # Task 1 touches one short design section: its prompt is a fraction of all documents.
    assert report["tasks"][0]["prompt_chars"] < sizes["all_documents"] / 2
    only = dry_run_report(spec, plan, config, only=["2"])
    assert [t["id"] for t in only["tasks"]] == ["2"]


def test_criteria_of_one_requirement_share_one_heading(tmp_path):
    spec = make_repo(tmp_path, steering=False)
    text = spec.requirements.excerpt(["1.1", "1.2", "R1.2", "9.9"])
    assert text.count("As a user, I want to log in") == 1
    assert "open a session" in text and "say so" in text
    whole = spec.requirements.excerpt(["1.1", "1"])
    assert whole.count("As a user, I want to log in") == 1   # the whole one covers 1.1
