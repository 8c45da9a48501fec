"""Agent files (.claude/agents/*.md): front matter variants, errors, loading, --agents JSON."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from qw.agents import AgentDef, agents_json, load_agents, parse_agent
from qw.claude import build_command
from qw.errors import SpecError

FULL = """\
---
name: test-writer
description: Writes unit tests for new code. Use after a feature lands.
tools: Read, Write, Bash
disallowedTools: [WebFetch, "WebSearch"]
model: haiku
permissionMode: acceptEdits
maxTurns: 30
color: green
---
You write focused unit tests.

Run them before you finish.
"""


def agent(front: str, body: str = "Do the job.", path: str = "a/.claude/agents/helper.md"):
    return parse_agent(f"---\n{front}\n---\n{body}\n", path)


def error(front: str, body: str = "Do the job.", path: str = "helper.md") -> SpecError:
    with pytest.raises(SpecError) as caught:
        agent(front, body, path)
    return caught.value


def test_every_field():
    got = parse_agent(FULL, "/r/.claude/agents/tw.md")
    assert got == AgentDef(
        name="test-writer",
        description="Writes unit tests for new code. Use after a feature lands.",
        prompt="You write focused unit tests.\n\nRun them before you finish.",
        tools=("Read", "Write", "Bash"), disallowed_tools=("WebFetch", "WebSearch"),
        model="haiku", permission_mode="acceptEdits", max_turns=30,
        path="/r/.claude/agents/tw.md")


def test_name_defaults_to_the_file_stem_and_optional_fields_are_empty():
    got = agent("description: Helps")
    assert (got.name, got.tools, got.model, got.max_turns) == ("helper", (), "", None)


@pytest.mark.parametrize("front", [
    "tools: Read, Write, Bash(git add, commit)",
    "tools: [Read, 'Write', \"Bash(git add, commit)\"]",
    "tools:\n  - Read\n  # a comment\n  - Write\n  - \"Bash(git add, commit)\"",
    "tools:\n- Read\n- Write\n- 'Bash(git add, commit)'",
])
def test_tool_list_forms(front):
    got = agent("description: d\n" + front)
    assert got.tools == ("Read", "Write", "Bash(git add, commit)")


def test_quoted_values():
    got = agent('description: "Reviews: code \\"carefully\\"\\nline two"\n'
                "model: 'it''s-sonnet' # trailing comment")
    assert got.description == 'Reviews: code "carefully"\nline two'
    assert got.model == "it's-sonnet"


def test_plain_values_keep_colons_and_fold_continuation_lines():
    got = agent("description: Use this agent when: the user asks\n"
                "  for C# tests, or code changed # a comment")
    assert got.description == ("Use this agent when: the user asks for C# tests, "
                               "or code changed")


def test_block_scalars():
    got = agent("description: |\n  Line one.\n    indented\n\n  Line three.\nmodel: opus")
    assert got.description == "Line one.\n  indented\n\nLine three."
    assert got.model == "opus"
    got = agent("description: >-\n  Folded\n  together.\n\n  New paragraph.")
    assert got.description == "Folded together.\nNew paragraph."


def test_unknown_keys_and_their_nested_blocks_are_skipped():
    got = agent("# a comment\ndescription: d\nhooks:\n  PreToolUse:\n    - matcher: Bash\n"
                "      hooks: []\nmcpServers:\n  - github\nmodel: sonnet")
    assert (got.description, got.model) == ("d", "sonnet")


def test_windows_line_endings_and_bom():
    text = "\ufeff---\r\ndescription: d\r\ntools: Read\r\n---\r\nBody\r\n"
    got = parse_agent(text, "x.md")
    assert (got.description, got.tools, got.prompt) == ("d", ("Read",), "Body")


# --- errors name path:line and say what to do ------------------------------------------

def test_missing_description():
    err = error("name: helper\nmodel: sonnet")
    assert err.what == "agent has no description"
    assert err.where == "helper.md:1"
    assert "description: <when to use this agent>" in err.fix


def test_no_front_matter():
    with pytest.raises(SpecError) as caught:
        parse_agent("You are a helper.\n", "h.md")
    assert caught.value.where == "h.md:1" and "---" in caught.value.fix


def test_front_matter_not_closed():
    with pytest.raises(SpecError) as caught:
        parse_agent("---\ndescription: d\nBody text\n", "h.md")
    assert (caught.value.what, caught.value.where) == ("agent front matter is not closed",
                                                       "h.md:1")


@pytest.mark.parametrize("front,line,words", [
    ("description: d\nthis line has no colon", 3, "cannot read"),
    ("description: d\nmodel: \"sonnet", 3, "not closed"),
    ("description: d\nmodel: 'sonnet", 3, "not closed"),
    ("description: d\nmodel: \"son\" net", 3, "after a quoted value"),
    ("description: d\ntools: [Read, Write", 3, "not closed"),
    ("description: d\ntools: [Read,\n  Write]", 3, "continues on the next line"),
    ("  description: d", 2, "indented"),
    ("description: d\nmodel: a\nmodel: b", 4, "twice"),
    ("description: d\nmaxTurns: many", 3, "maxTurns"),
    ("description: d\nmaxTurns: 0", 3, "maxTurns"),
    ("description:\n  - a\n  - b", 2, "must be text"),
    ("description: d\ntools:\n  - Read\n  - \"Write", 5, "not closed"),
])
def test_bad_front_matter_names_the_line(front, line, words):
    err = error(front)
    assert err.where == f"helper.md:{line}"
    assert words in err.what
    assert err.fix


def test_empty_body_is_an_error_at_the_line_after_the_front_matter():
    err = error("description: d", body="  ")
    assert (err.what, err.where) == ("agent has no system prompt", "helper.md:4")


def test_error_text_reads_as_one_line():
    assert str(error("description: d\nbad line")) == (
        "cannot read agent front matter line 'bad line', helper.md:3; write `key: value`")


# --- load_agents -----------------------------------------------------------------------

def write_agent(repo, file_name, text):
    folder = repo / ".claude" / "agents"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / file_name).write_text(text, encoding="utf-8")


def test_load_agents_reads_md_files_in_order(tmp_path):
    write_agent(tmp_path, "zeta.md", "---\ndescription: Z\n---\nz prompt\n")
    write_agent(tmp_path, "alpha.md", "---\ndescription: A\nname: first\n---\na prompt\n")
    write_agent(tmp_path, "notes.txt", "not an agent")
    agents = load_agents(tmp_path)
    assert list(agents) == ["first", "zeta"]
    assert agents["zeta"].path == str(tmp_path / ".claude" / "agents" / "zeta.md")


def test_load_agents_without_a_folder(tmp_path):
    assert load_agents(tmp_path) == {}


def test_two_files_with_one_name(tmp_path):
    write_agent(tmp_path, "a.md", "---\nname: dup\ndescription: A\n---\nx\n")
    write_agent(tmp_path, "b.md", "---\nname: dup\ndescription: B\n---\ny\n")
    with pytest.raises(SpecError) as caught:
        load_agents(tmp_path)
    assert "a.md" in caught.value.what and "b.md" in caught.value.what
    assert caught.value.where.endswith("b.md:1")


def test_bad_file_in_the_folder_names_its_path(tmp_path):
    write_agent(tmp_path, "bad.md", "---\nmodel: sonnet\n---\nx\n")
    with pytest.raises(SpecError) as caught:
        load_agents(tmp_path)
    assert caught.value.where == str(tmp_path / ".claude" / "agents" / "bad.md") + ":1"


def test_non_utf8_agent_file(tmp_path):
    folder = tmp_path / ".claude" / "agents"
    folder.mkdir(parents=True)
    (folder / "latin.md").write_bytes(b"---\ndescription: caf\xe9\n---\nx\n")
    with pytest.raises(SpecError, match="UTF-8"):
        load_agents(tmp_path)


# --- agents_json -----------------------------------------------------------------------

def test_agents_json_omits_empty_fields():
    minimal = AgentDef(name="m", description="M", prompt="pm")
    full = parse_agent(FULL, "tw.md")
    data = json.loads(agents_json([minimal, full]))
    assert data["m"] == {"description": "M", "prompt": "pm"}
    assert data["test-writer"] == {
        "description": "Writes unit tests for new code. Use after a feature lands.",
        "prompt": "You write focused unit tests.\n\nRun them before you finish.",
        "tools": ["Read", "Write", "Bash"], "disallowedTools": ["WebFetch", "WebSearch"],
        "model": "haiku", "permissionMode": "acceptEdits", "maxTurns": 30}


def test_loaded_agent_reaches_the_command_line(tmp_path):
    write_agent(tmp_path, "tw.md", FULL)
    agents = load_agents(tmp_path)
    claude = SimpleNamespace(command="claude", model="", permission_mode="acceptEdits",
                             allowed_tools=(), disallowed_tools=(), max_turns=0,
                             append_system_prompt="", extra_args=(), env={})
    argv = build_command(claude, agent="test-writer", agents=agents.values())
    payload = json.loads(argv[argv.index("--agents") + 1])
    assert payload["test-writer"]["tools"] == ["Read", "Write", "Bash"]
    assert argv[argv.index("--agent") + 1] == "test-writer"
