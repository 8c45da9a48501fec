"""qw.pyz against the real Claude Code CLI, end to end (issue 4).

Each test builds a git repository holding the nine-task "inventory" spec and two agents
(e2ehelpers.py), points the real `claude` at a FakeAnthropic server on loopback (fakeapi.py)
and runs `python qw.pyz run` on it. The tasks script the fake model: the CLI really writes
the files, runs Bash, retries, hangs. Skipped when no CLI is installed, failed under
QW_REQUIRE_CLAUDE=1.

Every process a test starts carries E2E_MARK=<a fresh id> in its environment (qw passes its
environment on to workers, children and their tool shells), so "nothing survives the run" is
checked by scanning /proc for that marker, which does not rely on qw's own QW_RUN_ID marker.
"""
from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from claude_cli import claude_or_skip, fake_api_env
from e2ehelpers import (AGENT_TASKS, AGENTS, EXPECTED_FILES, SPEC, Qw, build_pyz,
                        checkboxes, describe_processes, kill_processes, make_repo,
                        processes_with, wait_for_no_processes)
from fakeapi import FakeAnthropic, Request

from qw.claude import QW_SYSTEM_RULE

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads /proc to find stray processes")

API_KEY = "sk-ant-test"   # fake_api_env's key, the one the fake accepts
RUN_TIMEOUT_S = 150.0     # a run takes 5-20 s; this only turns a hang into a failure
LEFTOVER_WAIT_S = 10.0    # a leftover `sleep 300` would outlive this by far
FAST_RETRIES = "[run]\nretry_backoff = \"1s\"\n"


@pytest.fixture(scope="module")
def claude() -> str:
    return claude_or_skip()


@pytest.fixture(scope="module")
def pyz(tmp_path_factory, claude) -> Path:
    """qw.pyz built from this checkout; QW_TEST_PYZ=FILE tests that archive instead."""
    given = os.environ.get("QW_TEST_PYZ")
    return Path(given) if given else build_pyz(tmp_path_factory.mktemp("pyz"))


class World:
    """One test's fake API, its marker, and the environment qw runs with."""

    def __init__(self, root: Path, fake: FakeAnthropic, pyz: Path, claude: str) -> None:
        self.root, self.fake, self.pyz, self.claude = root, fake, pyz, claude
        self.marker_value = uuid.uuid4().hex
        self.marker = "E2E_MARK=" + self.marker_value
        config_dir = root / "claude-config"
        config_dir.mkdir(parents=True, exist_ok=True)
        self.env = fake_api_env(fake.url, str(config_dir), {"E2E_MARK": self.marker_value})

    def repo(self, directives: Optional[Dict[str, List[str]]] = None, config: str = "") -> Path:
        return make_repo(self.root / "repo", self.claude, directives, config)

    def qw(self, repo: Path, *args: str, env: Optional[Dict[str, str]] = None) -> Qw:
        return Qw(self.pyz, repo, env or self.env, *args)

    def run(self, repo: Path, *args: str, env: Optional[Dict[str, str]] = None) -> Qw:
        qw = self.qw(repo, *args, env=env)
        qw.finish(RUN_TIMEOUT_S)
        return qw

    def assert_nothing_left(self) -> None:
        """No process this test started is alive (bounded wait for the last exits)."""
        left = wait_for_no_processes(self.marker, LEFTOVER_WAIT_S)
        assert not left, "processes outlived the run:\n" + describe_processes(left)

    def cleanup(self) -> None:
        kill_processes(processes_with(self.marker))


@pytest.fixture
def world(tmp_path, pyz, claude):
    with FakeAnthropic(api_key=API_KEY) as fake:
        world = World(tmp_path, fake, pyz, claude)
        try:
            yield world
        finally:
            world.cleanup()


def task_requests(fake: FakeAnthropic, task_id: str) -> List[Request]:
    """The Messages requests of one task's children (its block is in their prompt)."""
    return [r for r in fake.messages() if f"] {task_id}. " in r.prompt]


def attempts_ended(repo: Path, run_id: str) -> List[Tuple[str, str]]:
    """(task, outcome kind) of each attempt_ended event in the run's journal, in order."""
    path = repo / ".qw" / "runs" / run_id / "events.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(e["task"], e["outcome"]) for e in lines if e.get("type") == "attempt_ended"]


def transcript(repo: Path, run_id: str, task_id: str, attempt: int) -> List[dict]:
    path = repo / ".qw" / "runs" / run_id / f"{task_id}.{attempt}.jsonl"
    assert path.is_file(), f"no transcript {path}"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def sleep_alive(pid_file: Path, marker: str) -> bool:
    """Whether the background `sleep` whose pid a task wrote to pid_file is still running."""
    pid = int(pid_file.read_text().split()[0])
    try:
        with open(f"/proc/{pid}/environ", "rb") as environ:
            return marker.encode() in environ.read().split(b"\0")
    except OSError:
        return False


# --- 1 and 7: the whole spec succeeds, agents included ---------------------------------

@pytest.fixture(scope="module")
def full_run(tmp_path_factory, pyz, claude):
    """The whole spec at -j 3, once for the tests that look at its results."""
    with FakeAnthropic(api_key=API_KEY) as fake:
        world = World(tmp_path_factory.mktemp("full"), fake, pyz, claude)
        try:
            repo = world.repo()
            qw = world.run(repo, "run", SPEC, "-j", "3", "--json")
            left = wait_for_no_processes(world.marker, LEFTOVER_WAIT_S)
            yield world, repo, qw, left
        finally:
            world.cleanup()


def test_all_tasks_succeed_with_files_checkboxes_transcripts_costs_and_j(full_run):
    world, repo, qw, left = full_run
    assert qw.proc.returncode == 0, qw.explain()
    for rel, text in EXPECTED_FILES.items():
        assert (repo / rel).is_file(), f"{rel} was not written\n{qw.explain()}"
        assert (repo / rel).read_text() == text, rel
    assert set(checkboxes(repo / ".claude" / "specs" / SPEC / "tasks.md").values()) == {"x"}

    summary = qw.json()
    tasks = {t["id"]: t for t in summary["tasks"]}
    assert sorted(tasks) == [str(n) for n in range(1, 10)]
    for tid, task in tasks.items():
        assert (task["status"], task["attempts"]) == ("done", 1), task
        # The transcript is the child's own stream: its result and session are the ones
        # the fake answered, and the cost qw reports is the CLI's total_cost_usd.
        lines = transcript(repo, summary["run_id"], tid, 1)
        assert lines[0]["type"] == "system" and lines[0]["subtype"] == "init"
        result = lines[-1]
        assert result["type"] == "result" and result["is_error"] is False, result
        assert {r.session_id for r in task_requests(world.fake, tid)} == {result["session_id"]}
        assert task["cost_usd"] == pytest.approx(result["total_cost_usd"]), tid
    costs = [t["cost_usd"] for t in summary["tasks"]]
    assert summary["totals"]["cost_usd"] == pytest.approx(sum(costs))
    assert summary["totals"]["cost_usd"] > 0 and all(c > 0 for c in costs)

    # -j 3 is a limit and was used: at most three CLI sessions in flight, and parallel ones.
    assert 2 <= world.fake.concurrency_max <= 3, world.fake.concurrency_max
    assert not left, "processes outlived the run:\n" + describe_processes(left)


@pytest.mark.parametrize("task_id", sorted(AGENT_TASKS))
def test_an_agent_tasks_model_tools_and_prompt_reach_the_cli(full_run, task_id):
    world, repo, qw, _ = full_run
    assert qw.proc.returncode == 0, qw.explain()
    model, tools, prompt = AGENTS[AGENT_TASKS[task_id]]
    requests = task_requests(world.fake, task_id)
    assert requests, f"task {task_id} sent no request"
    for request in requests:
        assert model in request.model, request.model   # "haiku" -> claude-haiku-4-5-...
        assert set(request.tools) == set(tools)
        assert prompt in request.system                # the agent's body is its system prompt
        assert QW_SYSTEM_RULE in request.system        # and qw's rule is still appended
    # A task without an agent keeps the CLI's own prompt, tools and model.
    plain = task_requests(world.fake, "1")[0]
    assert not any(body in plain.system for _, _, body in AGENTS.values())
    assert f"Primary working directory: {repo}" in plain.system
    assert {"Bash", "Edit", "Read", "Write"} < set(plain.tools)
    assert not any(m in plain.model for m, _, _ in AGENTS.values())


# --- 2: a bad API key stops the run ---------------------------------------------------

def test_a_rejected_api_key_stops_the_run_in_seconds_and_marks_nothing(world):
    repo = world.repo()
    env = dict(world.env, ANTHROPIC_API_KEY="sk-ant-wrong")
    qw = world.run(repo, "run", SPEC, "-j", "3", env=env)
    assert qw.proc.returncode == 1, qw.explain()
    # The CLI alone would retry a 401 for about three minutes.
    assert qw.seconds < 30, f"took {qw.seconds:.0f}s\n{qw.explain()}"
    assert "api key" in (qw.out + qw.err).lower(), qw.explain()
    assert set(checkboxes(repo / ".claude" / "specs" / SPEC / "tasks.md").values()) == {" "}
    answers = {r.answer for r in world.fake.messages()}
    assert answers == {"error 401"}, answers
    started = {tid for tid in map(str, range(1, 10)) if task_requests(world.fake, tid)}
    assert started <= {"1", "3", "6", "7"}, f"tasks started after the 401: {started}"
    world.assert_nothing_left()


# --- 3: transient API errors ------------------------------------------------------------

def test_overloaded_and_rate_limited_tasks_are_retried_and_finish(world):
    # 6: two 529s, absorbed by the CLI's own retries. 7: five 429s, more than the few
    # retries qw lets the CLI make: its first attempt fails and qw runs it again.
    repo = world.repo({"6": ["fail 2 529"], "7": ["fail 5 429"]}, FAST_RETRIES)
    qw = world.run(repo, "run", SPEC, "--task", "6", "--task", "7", "--json")
    assert qw.proc.returncode == 0, qw.explain()
    marks = checkboxes(repo / ".claude" / "specs" / SPEC / "tasks.md")
    assert (marks["6"], marks["7"]) == ("x", "x")
    answers = {tid: [r.answer for r in task_requests(world.fake, tid)] for tid in "67"}
    assert answers["6"] == ["error 529"] * 2 + ["tool_use write", "text"]
    assert answers["7"][:5] == ["error 429"] * 5 and answers["7"][5:] == [
        "tool_use write", "tool_use bash", "text"]
    tasks = {t["id"]: t for t in qw.json()["tasks"]}
    assert (tasks["6"]["attempts"], tasks["7"]["attempts"]) == (1, 2)
    ended = attempts_ended(repo, qw.json()["run_id"])
    assert [kind for task, kind in ended if task == "7"] == ["rate_limited", "ok"]
    world.assert_nothing_left()


# --- 4: a hung child -------------------------------------------------------------------

def test_a_hung_child_is_killed_with_its_tree_and_the_retry_succeeds(world):
    # Task 7's first attempt starts a background sleep, then its request hangs.
    repo = world.repo({"7": ["bash <<(sleep 300 & echo $! > bg-$QW_ATTEMPT.pid)>>",
                             "hang-first 1"]}, FAST_RETRIES)
    qw = world.qw(repo, "run", SPEC, "--task", "7", "--idle-timeout", "5s", "--json")
    try:
        def second_attempt() -> bool:
            return len({r.session_id for r in task_requests(world.fake, "7")}) >= 2

        assert world.fake.wait_for(second_attempt, RUN_TIMEOUT_S), "no retry of task 7"
        # By the time the retry talks to the API, the hung attempt's tree is gone.
        assert (repo / "bg-1.pid").is_file(), "the first attempt started no background job"
        assert not sleep_alive(repo / "bg-1.pid", world.marker)
        first = processes_with(world.marker, "QW_TASK_ID=7", "QW_ATTEMPT=1")
        assert not first, "the hung attempt left:\n" + describe_processes(first)
    except BaseException:
        qw.kill()
        raise
    qw.finish(RUN_TIMEOUT_S)
    assert qw.proc.returncode == 0, qw.explain()
    assert checkboxes(repo / ".claude" / "specs" / SPEC / "tasks.md")["7"] == "x"
    assert [r.answer for r in task_requests(world.fake, "7")].count("hang") == 1
    summary = qw.json()
    assert attempts_ended(repo, summary["run_id"]) == [("7", "hung"), ("7", "ok")]
    world.assert_nothing_left()


# --- 5: a tool leaves a background process ---------------------------------------------

def test_a_background_process_left_by_a_bash_tool_does_not_survive_the_run(world):
    repo = world.repo({"7": ["bash <<(sleep 300 & echo $! > bg.pid) ; echo started>>",
                             "bash <<env | grep ^QW_ > qw-env.txt>>"]})
    qw = world.run(repo, "run", SPEC, "--task", "7", "--json")
    assert qw.proc.returncode == 0, qw.explain()
    assert (repo / "bg.pid").is_file(), "the task started no background job"
    # The tool's shell carries qw's markers, which is how qw can find such strays.
    markers = dict(line.split("=", 1) for line in (repo / "qw-env.txt").read_text().split())
    assert (markers["QW_RUN_ID"], markers["QW_TASK_ID"]) == (qw.json()["run_id"], "7")
    left = wait_for_no_processes(world.marker, LEFTOVER_WAIT_S)
    assert not sleep_alive(repo / "bg.pid", world.marker), describe_processes(left)
    assert not left, "processes outlived the run:\n" + describe_processes(left)


# --- 6: Ctrl-C ---------------------------------------------------------------------------

@pytest.mark.parametrize("to", ["qw", "its process group"])
def test_ctrl_c_stops_hanging_children_exits_130_and_the_next_run_finishes(world, to):
    hanging = ("1", "3", "6")  # the first three dispatched at -j 3
    repo = world.repo({tid: ["hang-first 1"] for tid in hanging})
    tasks_md = repo / ".claude" / "specs" / SPEC / "tasks.md"
    qw = world.qw(repo, "run", SPEC, "-j", "3")
    try:
        def all_hang() -> bool:
            return sum(r.answer == "hang" for r in world.fake.messages()) == len(hanging)

        assert world.fake.wait_for(all_hang, RUN_TIMEOUT_S), "the children did not all hang"
        assert processes_with(world.marker, "QW_TASK_ID=1"), "no child process to stop"
        qw.interrupt(group=to != "qw")
    except BaseException:
        qw.kill()
        raise
    code = qw.finish(RUN_TIMEOUT_S)
    assert code == 130, qw.explain()
    assert set(checkboxes(tasks_md).values()) == {" "}
    world.assert_nothing_left()
    if to != "qw":
        return  # the run after it is the same in both cases

    again = world.run(repo, "run", SPEC, "-j", "3")
    assert again.proc.returncode == 0, again.explain()
    assert set(checkboxes(tasks_md).values()) == {"x"}
    for rel, text in EXPECTED_FILES.items():
        assert (repo / rel).read_text() == text, rel
    world.assert_nothing_left()
