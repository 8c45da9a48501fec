"""The claude command line, the child's environment, and reading stream-json output."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from qw.agents import AgentDef
from qw.claude import QW_SYSTEM_RULE, StreamState, build_command, build_env

STREAMS = Path(__file__).parent / "fixtures" / "streams"


def claude_config(**overrides):
    """The [claude] defaults of DESIGN §4, as any object with those attributes."""
    values = dict(command="claude", model="", permission_mode="acceptEdits", allowed_tools=(),
                  disallowed_tools=(), max_turns=0, append_system_prompt="", extra_args=(),
                  env={})
    values.update(overrides)
    return SimpleNamespace(**values)


def replay(name: str, upto: int = None) -> StreamState:
    state = StreamState()
    with open(STREAMS / name, "rb") as f:
        for number, line in enumerate(f, 1):
            if upto is not None and number > upto:
                break
            state.feed(line)
    return state


def flag_values(argv, flag):
    """The arguments after `flag` up to the next `--` flag."""
    start = argv.index(flag) + 1
    end = start
    while end < len(argv) and not argv[end].startswith("--"):
        end += 1
    return argv[start:end]


# --- build_command ---------------------------------------------------------------------

def test_default_command_is_headless_stream_json_with_qw_rule_and_no_prompt():
    argv = build_command(claude_config())
    assert argv == ["claude", "-p", "--output-format", "stream-json", "--verbose",
                    "--permission-mode", "acceptEdits",
                    "--append-system-prompt", QW_SYSTEM_RULE]


def test_qw_rule_tells_the_child_its_place():
    rule = QW_SYSTEM_RULE.lower()
    assert "tasks.md" in rule and "checkbox" in rule
    assert "other claude sessions" in rule
    assert "summary" in rule


def test_every_config_field_reaches_the_command_line():
    argv = build_command(claude_config(
        command="/opt/claude/bin/claude", model="opus", permission_mode="plan",
        allowed_tools=["Bash(git *)", "Edit"], disallowed_tools=("WebFetch", "WebSearch"),
        max_turns=25, append_system_prompt="Use tabs.",
        extra_args=["--add-dir", "../lib", "--strict-mcp-config"]))
    assert argv[0] == "/opt/claude/bin/claude"
    assert flag_values(argv, "--permission-mode") == ["plan"]
    assert flag_values(argv, "--model") == ["opus"]
    # One flag, then each tool as its own argument (a tool with spaces stays whole).
    assert flag_values(argv, "--allowedTools") == ["Bash(git *)", "Edit"]
    assert flag_values(argv, "--disallowedTools") == ["WebFetch", "WebSearch"]
    assert argv.count("--allowedTools") == 1
    assert flag_values(argv, "--max-turns") == ["25"]
    assert flag_values(argv, "--append-system-prompt") == [QW_SYSTEM_RULE + "\n\nUse tabs."]
    assert argv[-3:] == ["--add-dir", "../lib", "--strict-mcp-config"]


def test_unset_options_are_left_out():
    argv = build_command(claude_config(max_turns=0, model="", permission_mode=""))
    for flag in ("--model", "--max-turns", "--allowedTools", "--disallowedTools", "--agents",
                 "--agent", "--resume", "--max-budget-usd", "--permission-mode"):
        assert flag not in argv


def test_command_may_be_an_argv_list():
    argv = build_command(claude_config(command=["node", "/opt/cli.js"]))
    assert argv[:3] == ["node", "/opt/cli.js", "-p"]


def test_agent_definition_goes_in_agents_json_and_selects_it():
    reviewer = AgentDef(name="reviewer", description="Reviews code", prompt="Be strict.",
                        tools=("Read", "Grep"), model="haiku")
    argv = build_command(claude_config(model="sonnet"), agent=reviewer)
    assert flag_values(argv, "--agent") == ["reviewer"]
    assert json.loads(flag_values(argv, "--agents")[0]) == {
        "reviewer": {"description": "Reviews code", "prompt": "Be strict.",
                     "tools": ["Read", "Grep"], "model": "haiku"}}
    # The configured model stays; the agent's model travels inside the JSON.
    assert flag_values(argv, "--model") == ["sonnet"]


def test_agent_by_name_with_all_definitions():
    defs = [AgentDef(name="a", description="A", prompt="pa"),
            AgentDef(name="b", description="B", prompt="pb")]
    argv = build_command(claude_config(), agent="b", agents=defs)
    assert sorted(json.loads(flag_values(argv, "--agents")[0])) == ["a", "b"]
    assert flag_values(argv, "--agent") == ["b"]


def test_agent_by_name_alone_lets_the_cli_find_the_file():
    argv = build_command(claude_config(), agent="reviewer")
    assert flag_values(argv, "--agent") == ["reviewer"]
    assert "--agents" not in argv


def test_resume_and_budget():
    argv = build_command(claude_config(), resume_session="5f0c3a52", max_budget_usd=0.25)
    assert flag_values(argv, "--resume") == ["5f0c3a52"]
    assert flag_values(argv, "--max-budget-usd") == ["0.25"]
    assert flag_values(build_command(claude_config(), max_budget_usd=2),
                       "--max-budget-usd") == ["2"]
    assert flag_values(build_command(claude_config(), max_budget_usd=1 / 3),
                       "--max-budget-usd") == ["0.333333"]


def test_extra_args_come_last_after_everything_qw_adds():
    argv = build_command(claude_config(extra_args=["--fallback-model", "haiku"]),
                         agent="x", resume_session="s", max_budget_usd=1.0)
    assert argv[-2:] == ["--fallback-model", "haiku"]


# --- build_env -------------------------------------------------------------------------

def test_env_drops_nesting_markers_and_adds_quiet_defaults_and_markers():
    base = {"PATH": "/usr/bin", "HOME": "/home/u", "CLAUDECODE": "1",
            "CLAUDE_CODE_ENTRYPOINT": "cli", "ANTHROPIC_API_KEY": "sk-ant-x"}
    env = build_env(base, claude_config(), run_id="r1", task_id="2.1", attempt=3)
    assert "CLAUDECODE" not in env and "CLAUDE_CODE_ENTRYPOINT" not in env
    assert env["PATH"] == "/usr/bin" and env["ANTHROPIC_API_KEY"] == "sk-ant-x"
    assert env["DISABLE_AUTOUPDATER"] == "1"
    assert env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    assert env["CLAUDE_CODE_MAX_RETRIES"] == "2"
    assert (env["QW_RUN_ID"], env["QW_TASK_ID"], env["QW_ATTEMPT"]) == ("r1", "2.1", "3")
    assert "CLAUDECODE" in base  # the caller's mapping is left alone


def test_env_user_max_retries_wins_over_qw_default():
    env = build_env({"CLAUDE_CODE_MAX_RETRIES": "5"}, claude_config(), run_id="r",
                    task_id="1", attempt=1)
    assert env["CLAUDE_CODE_MAX_RETRIES"] == "5"
    env = build_env({"CLAUDE_CODE_MAX_RETRIES": "5"},
                    claude_config(env={"CLAUDE_CODE_MAX_RETRIES": 0}), run_id="r",
                    task_id="1", attempt=1)
    assert env["CLAUDE_CODE_MAX_RETRIES"] == "0"


def test_env_config_table_overrides_but_cannot_fake_markers():
    config = claude_config(env={"API_TIMEOUT_MS": 60000, "DISABLE_AUTOUPDATER": "0",
                                "QW_TASK_ID": "9"})
    env = build_env({}, config, run_id="r", task_id="1", attempt=1)
    assert env["API_TIMEOUT_MS"] == "60000"
    assert env["DISABLE_AUTOUPDATER"] == "0"
    assert env["QW_TASK_ID"] == "1"


# --- StreamState -----------------------------------------------------------------------

def test_successful_transcript():
    state = replay("success_write.jsonl")
    assert state.events == 6 and state.bad_lines == 0
    assert state.last_type == "result"
    assert state.session_id == "5f0c3a52-8d8e-4b7e-9c55-2b0b4b0e7a11"
    assert state.model == "claude-sonnet-4-5-20250929"
    assert state.version == "2.1.197"
    assert state.tool is None and state.tool_uses == 1
    assert state.cost_usd == pytest.approx(0.00035)
    # The result's usage totals: input includes cache creation and cache reads.
    assert (state.input_tokens, state.output_tokens) == (1230 + 300 + 1500, 81)
    assert state.result["subtype"] == "success"
    assert state.permission_denials == []


def test_tool_in_flight_until_its_result_arrives():
    assert replay("success_write.jsonl", upto=1).last_type == "system/init"
    state = replay("success_write.jsonl", upto=3)
    assert state.tool == "Write" and state.last_type == "assistant"
    state = replay("success_write.jsonl", upto=4)
    assert state.tool is None and state.last_type == "user"


def test_usage_of_one_message_split_over_events_is_not_added_twice():
    state = replay("success_write.jsonl", upto=3)  # msg_01A arrives as two events
    assert (state.input_tokens, state.output_tokens) == (1500, 61)
    state = replay("success_write.jsonl", upto=5)
    assert (state.input_tokens, state.output_tokens) == (1500 + 1530, 81)


def test_api_retries_and_synthetic_error():
    state = replay("auth_401.jsonl", upto=3)
    assert state.last_type == "system/api_retry"
    assert state.api_retries == 2 and state.last_api_error_status == 401
    assert state.last_api_error == "authentication_failed"
    state = replay("auth_401.jsonl")
    assert state.assistant_error == "authentication_failed"
    assert state.model == "claude-sonnet-4-5-20250929"  # not "<synthetic>"
    assert state.result["api_error_status"] == 401


def test_bad_and_blank_lines_are_counted_not_fatal():
    state = replay("terminated.jsonl")  # ends with a half-written line
    assert state.bad_lines == 1 and state.events == 3
    assert state.result is None and state.tool == "Bash"
    assert state.feed(b"") is None and state.feed("   \n") is None
    assert state.feed(b"[1, 2]\n") is None
    assert state.feed(b"\xff\xfe not json\n") is None
    assert state.bad_lines == 3
    event = state.feed('{"type":"user","message":{"content":[{"type":"tool_result",'
                       '"tool_use_id":"toolu_05B","content":"done"}]}}')
    assert event["type"] == "user" and state.tool is None and state.events == 4


def test_parallel_tools_leave_the_other_in_flight():
    state = StreamState()
    state.feed(json.dumps({"type": "assistant", "message": {"id": "m", "content": [
        {"type": "tool_use", "id": "t1", "name": "Read", "input": {}},
        {"type": "tool_use", "id": "t2", "name": "Grep", "input": {}}]}}))
    assert state.tool == "Grep"
    state.feed(json.dumps({"type": "user", "message": {"content": [
        {"type": "tool_result", "tool_use_id": "t2", "content": "x"}]}}))
    assert state.tool == "Read"


def test_result_keeps_permission_denials():
    state = replay("denied.jsonl")
    assert [d["tool_name"] for d in state.permission_denials] == ["Bash"]


def test_progress_is_small_and_json_able():
    state = replay("success_write.jsonl", upto=3)
    progress = state.progress()
    assert json.loads(json.dumps(progress)) == progress
    assert progress["tool"] == "Write" and progress["events"] == 3
    assert progress["last_text"] == "I'll create the file."
    assert progress["model"] == "claude-sonnet-4-5-20250929"
