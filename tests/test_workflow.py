"""`qw new` and `qw workflow` as a user runs them, with tests/fakeclaude.py as the claude
children: refusals, a document that never validates, the gates, the testing phase and its
test command, the review, the lock, Ctrl-C. (The whole workflow with the real CLI is in
test_workflow_e2e.py.)"""
from __future__ import annotations

import json
import signal
import sys

import pytest

from runhelpers import FAKE_CLAUDE, QwRepo, wait_until

from qw.approve import MARKER, approve, record_description
from qw.lock import SpecLock
from qw.phaserun import final_text

REQUIREMENTS_MD = """\
# Requirements

### Requirement 1: Greeting

**User Story:** As a user, I want a greeting, so that I feel welcome

#### Acceptance Criteria

1. WHEN the program starts THEN the system SHALL print hello
"""
# The fake claude acts on FAKE: lines anywhere in its prompt: the review's prompt carries
# the design, so this one writes the review (as the draft qw puts in place).
DESIGN_MD = """\
# Design

## Overview

greet.py prints hello.
FAKE: write .qw/drafts/demo/review.md Verdict: changes requested
"""
TASKS_MD = "# Tasks\n\n- [x] 1. Greeting\n  - File: greet.py\n  - _Requirements: 1.1_\n"
CHECK = ("import os, sys; print('checking'); "
         "sys.exit(0 if os.path.exists('greet.py') else 3)")


@pytest.fixture
def repo(tmp_path):
    repo = QwRepo(tmp_path, spec="demo")
    yield repo
    repo.check_no_leftovers()


def workflow_events(repo: QwRepo):
    events = []
    for path in sorted(repo.root.glob(".qw/runs/*/workflow.jsonl")):
        events += [json.loads(line) for line in path.read_text().splitlines()[1:]]
    return events


def at_testing(repo: QwRepo, test_command: str = CHECK, directives: str = "") -> None:
    """The spec with its documents approved and every task checked: the testing phase.
    `directives` (FAKE: lines) go into the design, and so into the review's prompt."""
    for name, text in (("requirements", REQUIREMENTS_MD), ("design", DESIGN_MD + directives),
                       ("tasks", TASKS_MD)):
        (repo.spec_dir / f"{name}.md").write_text(text)
        approve(str(repo.root), "demo", name, who="a test")
    record_description(str(repo.root), "demo", "A greeter.")
    command = json.dumps(f"{sys.executable} -c \"{test_command}\"") if test_command else '""'
    (repo.root / "qw.toml").write_text((repo.root / "qw.toml").read_text()
                                       + f"\n[workflow]\ntest_command = {command}\n")


def test_new_refuses_a_spec_with_documents_a_bad_name_and_no_description(repo):
    (repo.spec_dir / "tasks.md").write_text(TASKS_MD)
    done = repo.run("new", "demo", "A greeter.")
    assert done.code == 2, done
    assert done.err.startswith("qw: error: spec 'demo' exists already (it has tasks.md)")
    assert "`qw workflow demo`" in done.err
    for name, text in (("../x", "A."), ("-x", "A."), ("ok", "  ")):
        bad = repo.run("new", "--", name, text) if name.startswith("-") else \
            repo.run("new", name, text)
        assert bad.code == 2 and bad.err.startswith("qw: error: "), bad
    assert not repo.log.exists(), "a refused `qw new` started a child"


def test_a_document_that_never_validates_is_asked_for_again_then_given_up(repo):
    repo.configure(run="max_retries = 1")
    done = repo.run("new", "demo",
                    "A greeter.\nFAKE: write .qw/drafts/demo/requirements.md just a line")
    assert done.code == 1, done
    assert "round 2 of 2" in done.out
    assert "no numbered requirements, .qw/drafts/demo/requirements.md:1" in done.out
    assert "gave up after 2 round(s)" in done.out
    assert not (repo.spec_dir / "requirements.md").exists()   # never put in place
    assert [e["task"] for e in repo.events("start")] == ["requirements", "requirements"]
    ended = [e for e in workflow_events(repo) if e["type"] == "phase_ended"]
    assert [e["status"] for e in ended] == ["invalid", "invalid"]
    runs = list(repo.root.glob(".qw/runs/*/requirements.*.jsonl"))
    assert sorted(p.name for p in runs) == ["requirements.1.jsonl", "requirements.2.jsonl"]
    status = repo.run("status", "demo")
    assert "phase: requirements (requirements.md is not written yet)" in status.out, status
    # The description was kept: `qw workflow` takes the spec on from there.
    state = json.loads((repo.root / ".qw" / "state" / "demo.workflow.json").read_text())
    assert state["description"].startswith("A greeter.")


def test_a_rejected_key_fails_the_phase_at_once(repo):
    done = repo.run("new", "demo", "A greeter.\nFAKE: error 401")
    assert done.code == 1, done
    assert "requirements: failed: " in done.out and "transcript: .qw/runs/" in done.out
    assert len(repo.events("start")) == 1   # no retry: every attempt would fail the same


def test_a_gate_stops_the_workflow_without_starting_anything(repo):
    (repo.spec_dir / "requirements.md").write_text(REQUIREMENTS_MD)
    done = repo.run("workflow", "demo")
    assert done.code == 0, done
    assert ("requirements.md waits for approval; review it (.claude/specs/demo/"
            "requirements.md), then `qw approve demo requirements` and `qw workflow demo`"
            ) in done.out
    assert not repo.log.exists()
    assert repo.status()["phase"] == "requirements"


def test_testing_runs_the_command_records_a_failure_then_the_review_completes_the_spec(repo):
    at_testing(repo)
    assert repo.status()["phase"] == "testing"
    failed = repo.run("workflow", "demo")
    assert failed.code == 1, failed
    assert "failed with exit code 3" in failed.out and "  checking" in failed.out
    state = json.loads((repo.root / ".qw" / "state" / "demo.workflow.json").read_text())
    assert state["tests"]["passed"] is False
    assert repo.status()["phase"] == "testing"
    [log] = repo.root.glob(".qw/runs/*/testing.1.log")
    assert log.read_text().startswith("checking")

    (repo.root / "greet.py").write_text("print('hello')\n")
    done = repo.run("workflow", "demo")
    assert done.code == 0, done
    assert "passed" in done.out and "verdict: changes requested" in done.out, done
    assert (repo.spec_dir / "review.md").read_text() == "Verdict: changes requested"
    assert not (repo.root / ".qw" / "drafts" / "demo" / "review.md").exists()
    assert "demo is complete" in done.out
    status = repo.run("status", "demo")
    assert "phase: complete (reviewed)" in status.out
    assert [e["task"] for e in repo.events("start")] == ["review"]


def test_no_test_command_counts_as_passed_and_a_tester_agent_runs_first(repo):
    at_testing(repo, test_command="")
    agents = repo.root / ".claude" / "agents"
    agents.mkdir(parents=True)
    (agents / "tester.md").write_text("---\nname: tester\ndescription: Writes tests\n---\n"
                                      "You write tests.\n")
    # The tester's prompt carries the design too, so it writes the review's draft as well.
    (repo.root / ".qw" / "drafts" / "demo").mkdir(parents=True)
    done = repo.run("workflow", "demo")
    assert done.code == 0, done
    assert "no [workflow] test_command is set" in done.out
    starts = repo.events("start")
    assert [e["task"] for e in starts] == ["tester", "review"]
    argv = starts[0]["argv"]
    assert argv[argv.index("--agent") + 1] == "tester"
    assert MARKER not in (repo.spec_dir / "review.md").read_text()


def test_a_failed_attempt_is_retried_as_a_task_would_be(repo):
    at_testing(repo, test_command="", directives="FAKE: fail-first 1 529\n")
    done = repo.run("workflow", "demo")
    assert done.code == 0, done
    assert "review: " in done.out and "attempt 2 of 3" in done.out, done
    ended = [e["outcome"] for e in workflow_events(repo) if e["type"] == "attempt_ended"]
    assert ended == ["overloaded", "ok"]
    assert sorted(p.name for p in repo.root.glob(".qw/runs/*/review.*.jsonl")) == \
        ["review.1.jsonl", "review.2.jsonl"]


def test_a_usage_limit_past_max_pause_exits_75_and_the_next_workflow_finishes(repo):
    repo.configure(run='max_pause = "1s"')
    at_testing(repo, test_command="", directives="FAKE: first 1 usage-limit-epoch 600\n")
    paused = repo.run("workflow", "demo")
    assert paused.code == 75, paused
    assert "review: paused: " in paused.out
    assert repo.status()["phase"] == "review"
    done = repo.run("workflow", "demo")
    assert done.code == 0, done
    assert repo.status()["phase"] == "complete"


def test_a_spec_held_by_another_run_is_refused_with_exit_3(repo):
    at_testing(repo)
    lock = SpecLock(str(repo.root / ".qw" / "locks" / "demo.lock")).acquire({"run_id": "r"})
    try:
        done = repo.run("workflow", "demo")
    finally:
        lock.release()
    assert done.code == 3, done
    assert "spec demo is being run by pid" in done.err


def test_ctrl_c_stops_a_phase_child_and_exits_130(repo):
    proc = repo.start("new", "demo", "A greeter.\nFAKE: hang")
    wait_until(lambda: repo.events("hang"), 60, "the requirements child to hang",
               lambda: repo.output(proc))
    proc.send_signal(signal.SIGINT)
    done = repo.finish(proc)
    assert done.code == 130, done
    assert "requirements: interrupted" in done.out
    interrupted = [e for e in workflow_events(repo) if e["type"] == "attempt_ended"]
    assert [e["outcome"] for e in interrupted] == ["interrupted"]


def test_final_text_is_the_last_result_of_a_transcript(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"type":"system"}\nnot json\n{"type":"result","result":"first"}\n'
                    '{"type":"result","result":"the notes"}\n{"type":"user"}\n')
    assert final_text(str(path)) == "the notes"
    assert final_text(str(tmp_path / "missing.jsonl")) == ""


# A claude that copies an approval into its draft: it writes the design (valid, with the
# marker heading qw writes) and notes whether its prompt carried the marker; the fake
# claude then answers for it.
MARKER_COPIER = """\
import os, subprocess, sys
prompt = sys.stdin.read()
if "technical design" in prompt:
    with open(os.path.join("{root}", "prompt-had-marker"), "w") as note:
        note.write(str("\\u2705 APPROVED" in prompt))
    with open(".qw/drafts/demo/design.md", "w", encoding="utf-8") as draft:
        draft.write("# Design\\n\\n## Overview\\n\\ngreet.py prints hello.\\n\\n"
                    "## \\u2705 APPROVED by the child, 2026-01-01 00:00 UTC\\n")
sys.exit(subprocess.run([sys.executable, "{fake}"] + sys.argv[1:],
                        input=prompt.encode()).returncode)
"""


def test_a_child_never_sees_nor_gives_an_approval(repo):
    (repo.spec_dir / "requirements.md").write_text(REQUIREMENTS_MD)
    approve(str(repo.root), "demo", "requirements", who="a test")
    record_description(str(repo.root), "demo", "A greeter.")
    copier = repo.root / "copier.py"
    copier.write_text(MARKER_COPIER.format(root=repo.root, fake=FAKE_CLAUDE))
    repo.claude.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{copier}" "$@"\n')
    done = repo.run("workflow", "demo")
    assert done.code == 0, done
    assert (repo.root / "prompt-had-marker").read_text() == "False"
    design = (repo.spec_dir / "design.md").read_text()
    assert design == "# Design\n\n## Overview\n\ngreet.py prints hello.\n"
    assert "design.md written; review it" in done.out, done   # the gate holds
    assert repo.status()["phase"] == "design"
    assert [e["task"] for e in repo.events("start")] == ["design"]


def at_implementation_after_a_review(repo: QwRepo) -> None:
    """A spec tested and reviewed, then given a new task that waits for `go`."""
    at_testing(repo)
    (repo.root / "greet.py").write_text("print('hello')\n")
    done = repo.run("workflow", "demo")
    assert done.code == 0 and "demo is complete" in done.out, done
    with open(repo.spec_dir / "tasks.md", "a") as tasks:
        tasks.write("- [ ] 2. Farewell\n  - FAKE: wait-file go\n")


def test_tasks_added_after_the_review_run_under_the_lock_then_test_and_review_again(repo):
    at_implementation_after_a_review(repo)
    proc = repo.start("workflow", "demo")
    wait_until(lambda: repo.events("start") and repo.events("start")[-1]["task"] == "2", 60,
               "task 2 to start", lambda: repo.output(proc))
    # The workflow's own lock holds the spec while its tasks run (never let go between).
    holder = json.loads((repo.root / ".qw" / "locks" / "demo.lock").read_text())
    assert holder["command"] == "qw workflow demo", holder
    repo.release("go")
    done = repo.finish(proc)
    assert done.code == 0, done
    assert "tasks ran, so the tests and the review run again" in done.out
    assert "`" in done.out and "passed" in done.out and "demo is complete" in done.out
    assert [e["task"] for e in repo.events("start")] == ["review", "2", "review"]
    [previous] = repo.root.glob(".qw/runs/*/review.previous.md")
    assert previous.read_text() == "Verdict: changes requested"
    assert (repo.spec_dir / "review.md").exists()


def test_a_test_command_that_keeps_printing_is_stopped_at_the_timeout_and_fails(repo):
    repo.configure(run='timeout = "2s"')
    # Prints faster than qw reads, forever (its output never pauses), and exits 0 on the
    # SIGINT that stops it: still not a pass.
    at_testing(repo, "import signal, sys; "
                     "signal.signal(signal.SIGINT, lambda *a: sys.exit(0)); "
                     "[sys.stdout.write('tick' + chr(10)) for _ in iter(int, 1)]")
    done = repo.run("workflow", "demo")
    assert done.code == 1, done
    assert "` was stopped after [run] timeout (2" in done.out, done
    assert "  [qw: stopped after [run] timeout]" in done.out
    state = json.loads((repo.root / ".qw" / "state" / "demo.workflow.json").read_text())
    assert state["tests"]["passed"] is False
    assert repo.status()["phase"] == "testing"


def test_sigterm_during_the_test_command_stops_it_and_exits_130(repo):
    at_testing(repo, "import time; print('started', flush=True); time.sleep(600)")
    proc = repo.start("workflow", "demo")
    logs = lambda: list(repo.root.glob(".qw/runs/*/testing.1.log"))   # noqa: E731
    wait_until(lambda: logs() and "started" in logs()[0].read_text(), 60,
               "the test command to start", lambda: repo.output(proc))
    proc.send_signal(signal.SIGTERM)
    done = repo.finish(proc)
    assert done.code == 130, done
    assert "testing: interrupted; `qw workflow demo` runs the tests again" in done.out
    assert "[qw: interrupted]" in logs()[0].read_text()
    state = json.loads((repo.root / ".qw" / "state" / "demo.workflow.json").read_text())
    assert "tests" not in state   # not run to the end: neither passed nor failed
    assert (repo.root / ".qw" / "locks" / "demo.lock").read_text() == ""   # released


def test_a_spec_outside_the_specs_folder_is_refused(repo, tmp_path):
    elsewhere = tmp_path / "elsewhere" / "demo"
    elsewhere.mkdir(parents=True)
    (elsewhere / "tasks.md").write_text(TASKS_MD)
    done = repo.run("workflow", str(elsewhere))
    assert done.code == 2, done
    assert done.err.startswith("qw: error: ") and "not a spec under .claude/specs/" in done.err
    assert len(done.err.strip().splitlines()) == 1
    assert not repo.log.exists()


def test_a_ctrl_c_that_comes_with_the_last_result_still_interrupts(repo):
    """In-process: the signal is sent while the last result is being settled (when its
    attempt_ended is journalled), after the loop last looked at the signals."""
    from qw.config import load_config
    from qw.journal import Journal
    from qw.phaserun import PhaseJob, PhaseSession

    class SignalOnEnd(Journal):
        def append(self, event):
            super().append(event)
            if event.get("type") == "attempt_ended":
                signal.raise_signal(signal.SIGINT)

    # The fake claude of qw.toml, without its log: this process's environment (and so
    # the marker check_no_leftovers looks for) stays as it is.
    session = PhaseSession(str(repo.root), "demo", load_config(str(repo.root)),
                           lambda line: None)
    session.journal.close()
    session.journal = SignalOnEnd(str(repo.root / "journal.jsonl"))
    try:
        [result] = session.run([PhaseJob("review", "Review it.")])
    finally:
        session.close()
    assert result.ok, result            # the child had finished: its result stands
    assert session.interrupted          # but the command stops there
