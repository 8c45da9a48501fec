"""The fake Anthropic API drives the real Claude Code CLI: files, commands, errors, hangs.

Most tests run the real CLI (skipped when it is not installed, failed under
QW_REQUIRE_CLAUDE=1); each gets its own config dir and working dir, and every wait is bounded.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from typing import List, Optional

import pytest

from claude_cli import claude_or_skip, fake_api_env
from fakeapi import USAGE_LIMIT_TEXT, FakeAnthropic, Step, parse_script

RUN_TIMEOUT_S = 60.0  # far above the ~1 s a run takes, to survive a loaded machine


@pytest.fixture
def claude() -> str:
    return claude_or_skip()


@pytest.fixture
def fake():
    with FakeAnthropic() as server:
        yield server


class Cli:
    """One claude -p child in its own session, so that a test can kill its whole tree."""

    def __init__(self, claude: str, fake: FakeAnthropic, tmp_path, prompt: str, *flags: str,
                 env: Optional[dict] = None, subscription: bool = False) -> None:
        self.cwd, config = tmp_path / "work", tmp_path / "config"
        self.cwd.mkdir(parents=True, exist_ok=True)
        config.mkdir(exist_ok=True)
        self.proc = subprocess.Popen(
            [claude, "-p", "--output-format", "stream-json", "--verbose", *flags],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=str(self.cwd), start_new_session=True,
            env=fake_api_env(fake.url, str(config), env, subscription=subscription))
        self.proc.stdin.write(prompt)
        self.proc.stdin.close()

    def finish(self, timeout: float = RUN_TIMEOUT_S) -> List[dict]:
        """Wait for the CLI to exit; its stream-json events."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail("claude did not finish within %.0f s" % timeout)
        events = [json.loads(line) for line in self.proc.stdout if line.strip()]
        self.stderr = self.proc.stderr.read()
        return events

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        self.proc.stdout.close()
        self.proc.stderr.close()


def run(claude, fake, tmp_path, prompt: str, *flags: str, **kwargs) -> dict:
    """Run the CLI to the end; its result event (with "exit" added)."""
    cli = Cli(claude, fake, tmp_path, prompt, *flags, **kwargs)
    events = cli.finish()
    results = [e for e in events if e.get("type") == "result"]
    assert results, "no result event; stderr: %s" % cli.stderr
    return dict(results[-1], exit=cli.proc.returncode, cwd=cli.cwd)


def test_steps_write_files_relative_to_cwd_then_run_bash(claude, fake, tmp_path):
    prompt = ("Make the files.\nFAKE: write a.txt <<first>>\nFAKE: write sub/b.txt <<two\n"
              "lines\n>>\nFAKE: bash <<cat a.txt sub/b.txt >> both.txt>>\nFAKE: text Made.")
    result = run(claude, fake, tmp_path, prompt, "--permission-mode", "acceptEdits",
                 "--allowedTools", "Bash")
    cwd = result["cwd"]
    assert (cwd / "a.txt").read_text() == "first"
    assert (cwd / "sub" / "b.txt").read_text() == "two\nlines\n"
    assert (cwd / "both.txt").read_text() == "firsttwo\nlines\n"
    assert (result["exit"], result["is_error"], result["result"]) == (0, False, "Made.")
    assert result["num_turns"] == 4
    answers = [r.answer for r in fake.messages()]
    assert answers == ["tool_use write", "tool_use write", "tool_use bash", "text"]


def test_text_answer_costs_money_and_the_request_log_shows_flags(claude, fake, tmp_path):
    result = run(claude, fake, tmp_path, "Say hi.\nFAKE: text Hi there.", "--model",
                 "claude-sonnet-4-5", "--append-system-prompt", "QW-AGENT-PROMPT-7",
                 "--disallowedTools", "WebSearch")
    assert (result["exit"], result["is_error"], result["result"]) == (0, False, "Hi there.")
    assert result["num_turns"] > 0
    assert result["total_cost_usd"] == pytest.approx(1000 * 3e-6 + 50 * 15e-6)
    [request] = fake.messages()
    assert request.model == "claude-sonnet-4-5"
    assert "QW-AGENT-PROMPT-7" in request.system
    assert request.prompt == "Say hi.\nFAKE: text Hi there."
    assert request.cwd == str(result["cwd"])
    assert "Bash" in request.tools and "WebSearch" not in request.tools
    assert request.headers["x-api-key"] == "sk-ant-test"
    assert request.session_id == result["session_id"]
    assert fake.requests[0].method == "HEAD"  # the CLI's connectivity probe


def test_overloaded_twice_then_success_within_the_clis_own_retries(claude, fake, tmp_path):
    result = run(claude, fake, tmp_path, "FAKE: fail 2 529\nFAKE: text Made it.",
                 env={"CLAUDE_CODE_MAX_RETRIES": "3"})
    assert (result["exit"], result["is_error"], result["result"]) == (0, False, "Made it.")
    assert [r.answer for r in fake.messages()] == ["error 529", "error 529", "text"]


def test_failures_are_counted_per_prompt_key_across_runs(claude, fake, tmp_path):
    prompt = "FAKE: fail 1 500\nFAKE: key task-1"
    first = run(claude, fake, tmp_path, prompt, env={"CLAUDE_CODE_MAX_RETRIES": "0"})
    assert (first["exit"], first["is_error"], first["api_error_status"]) == (1, True, 500)
    second = run(claude, fake, tmp_path, prompt + "\nrerun", env={"CLAUDE_CODE_MAX_RETRIES": "0"})
    assert (second["exit"], second["is_error"], second["result"]) == (0, False, "Done.")


def test_bad_key_fails_fast_with_status_401(claude, fake, tmp_path):
    started = time.monotonic()
    result = run(claude, fake, tmp_path, "FAKE: fail always 401",
                 env={"CLAUDE_CODE_MAX_RETRIES": "0"})
    assert (result["exit"], result["is_error"], result["api_error_status"]) == (1, True, 401)
    assert time.monotonic() - started < 30  # no retries: the default ten would take minutes


def test_usage_limit_with_an_api_key_carries_the_sentence_in_a_429(claude, fake, tmp_path):
    result = run(claude, fake, tmp_path, "FAKE: usage-limit")
    assert (result["exit"], result["is_error"], result["api_error_status"]) == (1, True, 429)
    assert USAGE_LIMIT_TEXT in result["result"]


def test_usage_limit_on_a_subscription_is_worded_by_the_cli(claude, fake, tmp_path):
    result = run(claude, fake, tmp_path, "FAKE: usage-limit", subscription=True,
                 env={"TZ": "America/Los_Angeles"})
    assert (result["exit"], result["is_error"], result["api_error_status"]) == (1, True, 429)
    assert result["result"].startswith("You've hit your session limit · resets ")
    assert result["result"].endswith("(America/Los_Angeles)")


@pytest.mark.parametrize("verb", ["hang", "stall"])
def test_a_held_request_keeps_the_cli_waiting(claude, fake, tmp_path, verb):
    cli = Cli(claude, fake, tmp_path, "FAKE: " + verb)
    try:
        assert fake.wait_for(lambda: fake.messages(), RUN_TIMEOUT_S), "no request arrived"
        with pytest.raises(subprocess.TimeoutExpired):
            cli.proc.wait(2)
    finally:
        cli.kill()
    assert [r.answer for r in fake.messages()] == [verb]


def test_concurrency_counts_live_sessions_only(claude, fake, tmp_path):
    clis = [Cli(claude, fake, tmp_path / str(n), "FAKE: hang") for n in range(2)]
    try:
        assert fake.wait_for(lambda: len(fake.messages()) == 2, RUN_TIMEOUT_S)
    finally:
        for cli in clis:
            cli.kill()
    assert run(claude, fake, tmp_path / "2", "FAKE: text ok")["result"] == "ok"
    assert fake.concurrency_max == 2  # the killed sessions no longer count


def test_close_releases_a_hanging_request_and_unknown_paths_get_json_404():
    fake = FakeAnthropic()
    outcome = []

    def post() -> None:
        body = json.dumps({"messages": [{"role": "user", "content": "FAKE: hang"}]}).encode()
        try:
            urllib.request.urlopen(fake.url + "/v1/messages", body, timeout=RUN_TIMEOUT_S)
        except OSError as e:  # the connection closes without an answer
            outcome.append(e)

    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(fake.url + "/v1/nothing", timeout=10)
    assert missing.value.code == 404
    assert json.load(missing.value)["error"]["type"] == "not_found_error"
    poster = threading.Thread(target=post)
    poster.start()
    assert fake.wait_for(lambda: fake.messages(), 10)
    fake.close()
    poster.join(10)
    assert not poster.is_alive() and outcome, "close() did not release the held request"


def test_parse_script_reads_bodies_modifiers_and_rejects_unknown_verbs():
    script = parse_script("Task 3\nFAKE: bash <<x=1 >> log>>\nFAKE: fail always 429\n"
                          "FAKE: usage 10 2\nFAKE: text <<two\nlines>>\nFAKE: key t3")
    assert script.steps == (Step("bash", "", "x=1 >> log"), Step("text", "", "two\nlines"))
    assert (script.fail_count, script.fail_status) == (float("inf"), 429)
    assert (script.key, script.usage) == ("t3", (10, 2))
    with pytest.raises(ValueError, match="FAKE: frobnicate"):
        parse_script("FAKE: frobnicate now")


def test_a_gated_directive_applies_only_when_the_prompts_own_text_names_its_gate():
    description = ("Build a greeter.\n"
                   "FAKE[specs/demo/design.md`]: write d.md <<# Design\nnames specs/demo/tasks.md` "
                   "in its body>>\n"
                   "FAKE[specs/demo/tasks.md`]: text tasks written\n"
                   "FAKE: usage 10 5\n")
    design = parse_script("Write the whole document to `.claude/specs/demo/design.md`.\n"
                          + description)
    assert design.steps == (Step("write", "d.md",
                                 "# Design\nnames specs/demo/tasks.md` in its body"),)
    assert design.usage == (10, 5)          # an ungated directive applies everywhere
    # The gate is looked for outside directives: a body naming it does not open it.
    tasks = parse_script("Write the whole document to `.claude/specs/demo/tasks.md`.\n"
                         + description)
    assert tasks.steps == (Step("text", "tasks written"),)
    assert parse_script(description).steps == ()
