"""The spec workflow end to end: qw.pyz with the real Claude Code CLI against the fake API.

`qw new` writes the documents, `qw workflow` runs the tasks, the test command and the review;
every phase shows in `qw status` as it is reached and every child's transcript is kept. The
fake model answers each phase from one feature description: its directives are gated
(`FAKE[<target path>]: ...`, see fakeapi.py) on the path each phase's prompt names. And the
Stop hook, run by the real CLI, suggests `qw workflow`, which `qw consume` then carries out.
Skipped when no CLI is installed, failed under QW_REQUIRE_CLAUDE=1.
"""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Dict, List

import pytest

from claude_cli import claude_or_skip, fake_api_env
from e2ehelpers import (Qw, build_pyz, checkboxes, describe_processes, kill_processes,
                        processes_with, wait_for_no_processes)
from fakeapi import FakeAnthropic

from qw.approve import MARKER, approve, record_description

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads /proc to find stray processes")

RUN_TIMEOUT_S = 240.0     # a workflow takes 20-60 s on a busy machine; this catches a hang
LEFTOVER_WAIT_S = 10.0

REQUIREMENTS_MD = """\
# Requirements: greeter

## Introduction

A greeting function.

## Requirements

### Requirement 1: Greeting

**User Story:** As a user, I want a greeting, so that I feel welcome

#### Acceptance Criteria

1. WHEN hello is called with a name THEN the system SHALL return "hello " and the name
"""
DESIGN_MD = """\
# Design: greeter

## Overview

One function, hello(name), in src/greet.py, meets Requirement 1.

## Testing Strategy

check.py looks for the module and its test.
"""
# The implementation's tasks script the fake model too: each writes its file.
TASKS_MD = """\
# Tasks: greeter

- [ ] 1. Write the greeter in src/greet.py
  - File: src/greet.py
  - _Requirements: 1.1_
  - _Depends: none_
  - FAKE: write src/greet.py def hello(name): return "hello " + name
- [ ] 2. Test the greeter in tests/test_greet.py
  - File: tests/test_greet.py
  - _Requirements: 1_
  - _Depends: 1_
  - FAKE: write tests/test_greet.py from greet import hello
"""
REVIEW_MD = """\
# Review: greeter

Requirement 1: met (src/greet.py:1).

Verdict: approve
"""
CHECK_PY = """\
import pathlib, sys
ok = pathlib.Path("src/greet.py").read_text().startswith("def hello")
ok = ok and pathlib.Path("tests/test_greet.py").exists()
print("2 checks passed" if ok else "the greeter is missing")
sys.exit(0 if ok else 1)
"""


def description(spec: str) -> str:
    """The feature description: a sentence, then one gated answer per phase."""
    def answer(name: str, text: str) -> str:   # where the phase's prompt says to write it
        path = f".qw/drafts/{spec}/{name}"
        return f"FAKE[{path}`]: write {path} <<{text}>>\n"

    return ("A greeter: hello(name) in src/greet.py.\n"
            + answer("requirements.md", REQUIREMENTS_MD) + answer("design.md", DESIGN_MD)
            + answer("tasks.md", TASKS_MD) + answer("review.md", REVIEW_MD)
            + "FAKE[As the architect]: text ARCHITECT-NOTE-7Q: keep hello pure.\n"
            + "FAKE[As the security-reviewer]: text SECURITY-NOTE-3K: no input is trusted.\n")


@pytest.fixture(scope="module")
def claude() -> str:
    return claude_or_skip()


@pytest.fixture(scope="module")
def pyz(tmp_path_factory, claude) -> Path:
    return build_pyz(tmp_path_factory.mktemp("pyz"))


class World:
    """A scratch repository, the fake API and the environment qw runs with."""

    def __init__(self, root: Path, fake: FakeAnthropic, pyz: Path, claude: str) -> None:
        self.fake, self.pyz, self.claude = fake, pyz, claude
        self.repo = root / "repo"
        self.repo.mkdir()
        self.marker = "E2E_MARK=" + uuid.uuid4().hex
        config_dir = root / "claude-config"
        config_dir.mkdir()
        self.env = fake_api_env(fake.url, str(config_dir),
                                {"E2E_MARK": self.marker.split("=", 1)[1]})
        self.env.pop("QW_RUN_ID", None)
        subprocess.run(["git", "init", "-q", str(self.repo)], check=True, timeout=60)
        (self.repo / "check.py").write_text(CHECK_PY)
        test_command = f"{shlex.quote(sys.executable)} check.py"
        (self.repo / "qw.toml").write_text(
            f"[claude]\ncommand = {json.dumps(claude)}\n\n"
            '[run]\nretry_backoff = "1s"\n\n'
            "[resources]\ncpu_limit_percent = 100\nmemory_limit_percent = 100\n"
            "memory_reserve_mb = 0\nper_task_memory_mb = 0\n\n"
            f"[workflow]\ntest_command = {json.dumps(test_command)}\n")

    def qw(self, *args: str) -> Qw:
        qw = Qw(self.pyz, self.repo, self.env, *args)
        qw.finish(RUN_TIMEOUT_S)
        return qw

    def phase(self, spec: str) -> str:
        status = self.qw("status", spec, "--json")
        assert status.proc.returncode == 0, status.explain()
        return status.json()["phase"]

    def spec_file(self, spec: str, name: str) -> Path:
        return self.repo / ".claude" / "specs" / spec / name

    def prompts(self, target: str) -> List[str]:
        """The prompts of the children whose prompt names `target` outside directives."""
        return [r.prompt for r in self.fake.messages()
                if any(target in line for line in r.prompt.splitlines()
                       if not line.startswith("FAKE"))]


@pytest.fixture
def world(tmp_path, pyz, claude):
    with FakeAnthropic(api_key="sk-ant-test") as fake:
        world = World(tmp_path, fake, pyz, claude)
        try:
            yield world
        finally:
            kill_processes(processes_with(world.marker))


def workflow_events(repo: Path) -> List[dict]:
    """Every line of every workflow journal, oldest run first."""
    events = []
    for path in sorted(repo.glob(".qw/runs/*/workflow.jsonl")):
        events += [json.loads(line) for line in path.read_text().splitlines()[1:]]
    return events


def transcripts(repo: Path) -> Dict[str, Path]:
    """File name -> path of every transcript and test log in the run folders."""
    return {p.name: p for p in repo.glob(".qw/runs/*/*") if p.suffix in (".jsonl", ".log")
            and p.name not in ("events.jsonl", "workflow.jsonl", "debug.jsonl")}


def test_new_then_workflow_goes_from_nothing_to_a_reviewed_implementation(world):
    new = world.qw("new", "demo", description("demo"), "--auto-approve")
    assert new.proc.returncode == 0, new.explain()
    assert "next: qw workflow demo" in new.out, new.explain()
    for name in ("requirements.md", "design.md", "tasks.md"):
        text = world.spec_file("demo", name).read_text()
        assert MARKER in text, f"{name} was not approved:\n{text}"
    assert world.phase("demo") == "implementation"
    status = world.qw("status", "demo")
    assert "phase: implementation (tasks 0/2 done)" in status.out, status.explain()

    done = world.qw("workflow", "demo")
    assert done.proc.returncode == 0, done.explain()
    assert set(checkboxes(world.spec_file("demo", "tasks.md")).values()) == {"x"}
    assert (world.repo / "src" / "greet.py").read_text().startswith("def hello")
    assert "`" + sys.executable in done.out and "passed" in done.out, done.explain()
    assert "Verdict: approve" in world.spec_file("demo", "review.md").read_text()
    assert "verdict: approve" in done.out and "demo is complete" in done.out, done.explain()
    state = json.loads((world.repo / ".qw" / "state" / "demo.workflow.json").read_text())
    assert state["tests"]["passed"] is True
    final = world.qw("status", "demo")
    assert "phase: complete (reviewed)" in final.out, final.explain()

    # Every phase in the journals, in order, and every child's transcript kept.
    ended = [(e["phase"], e["status"]) for e in workflow_events(world.repo)
             if e["type"] == "phase_ended"]
    assert [p for p, _ in ended] == ["requirements", "design", "tasks", "implementation",
                                     "testing", "review"], ended
    files = transcripts(world.repo)
    for name in ("requirements.1.jsonl", "design.1.jsonl", "tasks.1.jsonl", "1.1.jsonl",
                 "2.1.jsonl", "testing.1.log", "review.1.jsonl"):
        assert name in files, f"no {name} in {sorted(files)}"
    assert "2 checks passed" in files["testing.1.log"].read_text()
    last = json.loads(files["review.1.jsonl"].read_text().splitlines()[-1])
    assert last["type"] == "result" and last["is_error"] is False
    logs = world.qw("logs", "demo", "design")
    assert logs.proc.returncode == 0 and "[end] success" in logs.out, logs.explain()
    # One more `qw workflow` has nothing left to do.
    again = world.qw("workflow", "demo")
    assert again.proc.returncode == 0 and "complete" in again.out, again.explain()
    left = wait_for_no_processes(world.marker, LEFTOVER_WAIT_S)
    assert not left, "processes outlived the workflow:\n" + describe_processes(left)


def test_the_gates_stop_the_workflow_and_analysts_feed_the_design(world):
    agents = world.repo / ".claude" / "agents"
    agents.mkdir(parents=True)
    for name in ("architect", "security-reviewer"):
        (agents / f"{name}.md").write_text(
            f"---\nname: {name}\ndescription: The {name}\ntools: Read\n---\n"
            f"You are the {name}.\n")
    new = world.qw("new", "gated", description("gated"))
    assert new.proc.returncode == 0, new.explain()
    assert "requirements.md written; review it" in new.out, new.explain()
    assert "`qw approve gated requirements` and `qw workflow gated`" in new.out
    assert not world.spec_file("gated", "design.md").exists()
    assert world.phase("gated") == "requirements"

    asked = len(world.fake.messages())
    waiting = world.qw("workflow", "gated")
    assert waiting.proc.returncode == 0 and "waits for approval" in waiting.out
    assert len(world.fake.messages()) == asked, "a gate started a child"

    approved = world.qw("approve", "gated", "requirements")
    assert "next: qw workflow gated" in approved.out, approved.explain()
    design = world.qw("workflow", "gated")
    assert design.proc.returncode == 0, design.explain()
    assert "design.md written; review it" in design.out, design.explain()
    assert world.phase("gated") == "design"
    assert not world.spec_file("gated", "tasks.md").exists()
    # The analysts ran (as their agents) and their notes reached the design's author.
    [prompt] = world.prompts(".qw/drafts/gated/design.md`")[:1]
    assert "ARCHITECT-NOTE-7Q" in prompt and "SECURITY-NOTE-3K" in prompt
    systems = [r.system for r in world.fake.messages()
               if r.prompt.startswith("As the architect")]
    assert systems and "You are the architect." in systems[0]
    files = transcripts(world.repo)
    assert {"architect.1.jsonl", "security-reviewer.1.jsonl", "design.1.jsonl"} <= set(files)

    rest = world.qw("workflow", "gated", "--auto-approve")
    assert rest.proc.returncode == 0, rest.explain()
    assert world.phase("gated") == "complete"


def test_the_hook_run_by_the_cli_suggests_the_workflow_and_consume_carries_it_out(world):
    folder = world.spec_file("demo", "requirements.md").parent
    folder.mkdir(parents=True)
    world.spec_file("demo", "requirements.md").write_text(REQUIREMENTS_MD)
    approve(str(world.repo), "demo", "requirements", who="a test")
    record_description(str(world.repo), "demo", description("demo"))
    hook = f"{shlex.quote(sys.executable)} {shlex.quote(str(world.pyz))} hook stop"
    settings = json.dumps({"hooks": {"Stop": [{"matcher": "", "hooks": [
        {"type": "command", "command": hook, "timeout": 30}]}]}})
    done = subprocess.run(
        [world.claude, "-p", "--output-format", "stream-json", "--verbose",
         "--settings", settings], input="Say hello.\nFAKE: text Hello.",
        capture_output=True, text=True, cwd=str(world.repo), env=world.env,
        timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    suggestion = world.repo / ".claude" / "next_command.txt"
    log = world.repo / ".qw" / "hooks.log"
    assert suggestion.exists(), log.read_text() if log.exists() else "no hooks.log"
    assert suggestion.read_text() == "qw workflow demo\n"

    consumed = world.qw("consume")
    assert consumed.proc.returncode == 0, consumed.explain()
    assert re.search(r"ran `qw workflow demo` \(attempt 1, exit 0\)", consumed.out), \
        consumed.explain()
    assert "design.md written; review it" in consumed.out
    assert world.spec_file("demo", "design.md").read_text().startswith("# Design: greeter")
    assert not suggestion.exists()
    assert world.phase("demo") == "design"
