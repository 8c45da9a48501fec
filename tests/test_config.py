"""qw.config: the four layers, their sources, and the error a user sees for each mistake."""

from __future__ import annotations

import dataclasses
import os
import shutil

import pytest

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

from qw.config import KEYS, Config, default_config, describe, load_config
from qw.durations import parse_duration
from qw.errors import ConfigError

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "config.example.toml")


def write(repo, text, name="qw.toml"):
    path = repo / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def values(config: Config):
    """Every section's values, without the sources."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
            if f.name != "sources"}


def error(repo, text=None, env=None, flags=None, config_file=None) -> str:
    if text is not None:
        write(repo, text)
    with pytest.raises(ConfigError) as caught:
        load_config(str(repo), config_file=config_file, env=env or {}, flags=flags)
    return str(caught.value)


# --- defaults and the example file ------------------------------------------------------

def test_no_file_no_env_gives_the_design_defaults(tmp_path):
    config = load_config(str(tmp_path), env={})
    assert config.run.max_concurrent == 8
    assert config.run.timeout == 1800.0
    assert config.run.idle_timeout == 600.0
    assert config.run.max_retries == 2
    assert config.run.retry_backoff == 30.0
    assert config.run.timeout_multiplier == 2.0
    assert config.run.max_pause == 6 * 3600.0
    assert config.run.budget_usd == 0.0
    assert config.plan.dependencies == "infer" and config.plan.undeclared == "serial"
    assert config.claude.command == "claude"
    assert config.claude.permission_mode == "acceptEdits"
    assert config.claude.allowed_tools == () and config.claude.env == {}
    assert config.resources.cpu_limit_percent == 80
    assert config.resources.memory_limit_percent == 75
    assert config.resources.memory_reserve_mb == 1024
    assert config.resources.per_task_memory_mb == 512
    assert config.spec.mark_in_progress is False
    assert config.logging.level == "info"
    assert config.workflow.auto_progression is False and config.workflow.test_command == ""
    assert set(config.sources.values()) == {"default"}
    assert values(config) == values(default_config())


def test_example_file_documents_every_key():
    with open(EXAMPLE, "rb") as f:
        data = tomllib.load(f)
    in_file = {f"{section}.{name}" for section, table in data.items() for name in table}
    assert in_file == {k.dotted for k in KEYS}, "config.example.toml must list exactly the keys"
    with open(EXAMPLE, encoding="utf-8") as f:
        text = f.read()
    for key in KEYS:
        # Each key has a comment right above it (or shares one with the key above it).
        lines = text.splitlines()
        at = next(i for i, line in enumerate(lines) if line.startswith(key.name + " ="))
        assert lines[at - 1].startswith("#") or " = " in lines[at - 1], key.dotted


def test_loading_the_example_gives_exactly_the_defaults(tmp_path):
    shutil.copy(EXAMPLE, tmp_path / "qw.toml")
    config = load_config(str(tmp_path), env={})
    assert values(config) == values(default_config())
    assert all(source.startswith("qw.toml:") for source in config.sources.values())


def test_describe_lists_every_key_in_order_with_durations_as_written(tmp_path):
    write(tmp_path, '[run]\ntimeout = "1h30m"\nmax_pause = 45\n')
    config = load_config(str(tmp_path), env={"QW_CLAUDE_ALLOWED_TOOLS": "Read,Edit"})
    rows = describe(config)
    assert [key for key, _, _ in rows] == [k.dotted for k in KEYS]
    table = {key: (value, source) for key, value, source in rows}
    assert table["run.timeout"] == ("90m", "qw.toml:2")
    assert table["run.max_pause"] == ("45s", "qw.toml:3")
    assert table["run.idle_timeout"] == ("10m", "default")
    assert table["claude.allowed_tools"] == (["Read", "Edit"], "env QW_CLAUDE_ALLOWED_TOOLS")
    for key in KEYS:   # what describe shows reads back as the same value
        if key.kind == "duration":
            stored = getattr(getattr(config, key.section), key.name)
            assert parse_duration(table[key.dotted][0]) == stored


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        default_config().run.max_concurrent = 3


# --- layers and sources -----------------------------------------------------------------

def test_each_layer_beats_the_one_below_and_says_so(tmp_path):
    write(tmp_path, '# comment\n[run]\nmax_concurrent = 3\ntimeout = "20m"\nmax_retries = 4\n'
                    '\n[claude]\nmodel = "sonnet"\n')
    env = {"QW_RUN_TIMEOUT": "40m", "QW_RUN_MAX_RETRIES": "5", "PATH": "/bin"}
    config = load_config(str(tmp_path), env=env, flags={"run.max_retries": 1, "run.timeout": None})
    assert config.run.max_concurrent == 3
    assert config.sources["run.max_concurrent"] == "qw.toml:3"
    assert config.claude.model == "sonnet" and config.sources["claude.model"] == "qw.toml:8"
    assert config.run.timeout == 2400.0
    assert config.sources["run.timeout"] == "env QW_RUN_TIMEOUT"
    assert config.run.max_retries == 1 and config.sources["run.max_retries"] == "flag --retries"
    assert config.run.idle_timeout == 600.0 and config.sources["run.idle_timeout"] == "default"


def test_flags_as_typed_or_as_strings(tmp_path):
    config = load_config(str(tmp_path), env={}, flags={
        "run.max_concurrent": "4", "run.timeout": "20m", "run.idle_timeout": 90,
        "claude.allowed_tools": ["Read"], "spec.mark_in_progress": True})
    assert config.run.max_concurrent == 4 and config.sources["run.max_concurrent"] == "flag -j/--jobs"
    assert config.run.timeout == 1200.0 and config.sources["run.timeout"] == "flag --timeout"
    assert config.run.idle_timeout == 90.0
    assert config.sources["run.idle_timeout"] == "flag --idle-timeout"
    assert config.claude.allowed_tools == ("Read",)
    assert config.spec.mark_in_progress is True


def test_claude_qw_toml_is_found_and_qw_toml_preferred(tmp_path):
    write(tmp_path, "[run]\nmax_concurrent = 5\n", name=".claude/qw.toml")
    config = load_config(str(tmp_path), env={})
    assert config.run.max_concurrent == 5
    assert config.sources["run.max_concurrent"] == ".claude/qw.toml:2"
    write(tmp_path, "\n\n[run]\nmax_concurrent = 6\n")
    config = load_config(str(tmp_path), env={})
    assert (config.run.max_concurrent, config.sources["run.max_concurrent"]) == (6, "qw.toml:4")


def test_config_file_given_replaces_the_repo_file(tmp_path):
    write(tmp_path, "[run]\nmax_concurrent = 5\n")
    other = write(tmp_path, "[run]\nmax_retries = 0\n", name="ci/qw-ci.toml")
    config = load_config(str(tmp_path), config_file=str(other), env={})
    assert config.run.max_concurrent == 8
    assert config.run.max_retries == 0
    assert config.sources["run.max_retries"] == f"{other}:2"


def test_all_value_kinds_from_the_file(tmp_path):
    write(tmp_path, '[run]\nbudget_usd = 12.5\ntimeout = 600\nverify = "make test"\n'
                    '[plan]\ndependencies = "Sequential"\n'
                    '[claude]\ncommand = "/opt/my tools/claude"\nextra_args = ["--foo", "a b"]\n'
                    '[claude.env]\nNODE_ENV = "test"\n'
                    '[spec]\nmark_in_progress = true\n')
    config = load_config(str(tmp_path), env={})
    assert config.run.budget_usd == 12.5
    assert config.run.timeout == 600.0
    assert config.run.verify == "make test"
    assert config.plan.dependencies == "sequential"
    assert config.claude.command == "/opt/my tools/claude"   # one executable, never split
    assert config.claude.extra_args == ("--foo", "a b")
    assert config.claude.env == {"NODE_ENV": "test"}
    assert config.sources["claude.env"] == "qw.toml:10"
    assert config.spec.mark_in_progress is True


def test_dotted_keys_at_top_level(tmp_path):
    write(tmp_path, 'run.max_concurrent = 2\nclaude.env.A = "1"\n')
    config = load_config(str(tmp_path), env={})
    assert config.run.max_concurrent == 2 and config.sources["run.max_concurrent"] == "qw.toml:1"
    assert config.claude.env == {"A": "1"}


# --- the environment --------------------------------------------------------------------

def test_env_lists_tables_and_booleans(tmp_path):
    config = load_config(str(tmp_path), env={
        "QW_CLAUDE_ALLOWED_TOOLS": "Read, Edit ,Bash(git log:*)",
        "QW_CLAUDE_DISALLOWED_TOOLS": '["WebFetch", "Bash(rm, -rf)"]',
        "QW_CLAUDE_EXTRA_ARGS": "",
        "QW_CLAUDE_ENV": '{"A": "1", "B": "two"}',
        "QW_SPEC_MARK_IN_PROGRESS": "yes",
        "QW_WORKFLOW_AUTO_PROGRESSION": "0",
        "QW_RUN_TIMEOUT_MULTIPLIER": "1.5",
        "QW_CLAUDE_PERMISSION_MODE": "plan",
    })
    assert config.claude.allowed_tools == ("Read", "Edit", "Bash(git log:*)")
    assert config.claude.disallowed_tools == ("WebFetch", "Bash(rm, -rf)")
    assert config.claude.extra_args == ()
    assert config.claude.env == {"A": "1", "B": "two"}
    assert config.spec.mark_in_progress is True
    assert config.workflow.auto_progression is False
    assert config.run.timeout_multiplier == 1.5
    assert config.claude.permission_mode == "plan"


def test_short_forms_and_full_names_win_over_them(tmp_path):
    env = {"QW_MAX_CONCURRENT": "3", "QW_CLAUDE": "/usr/local/bin/claude", "QW_DEBUG": "1"}
    config = load_config(str(tmp_path), env=env)
    assert config.run.max_concurrent == 3
    assert config.sources["run.max_concurrent"] == "env QW_MAX_CONCURRENT"
    assert config.claude.command == "/usr/local/bin/claude"
    assert config.sources["claude.command"] == "env QW_CLAUDE"
    assert config.logging.level == "debug" and config.sources["logging.level"] == "env QW_DEBUG"
    env.update(QW_RUN_MAX_CONCURRENT="5", QW_CLAUDE_COMMAND="claude2", QW_LOGGING_LEVEL="error")
    config = load_config(str(tmp_path), env=env)
    assert config.run.max_concurrent == 5
    assert config.claude.command == "claude2"
    assert config.logging.level == "error"


def test_qw_debug_zero_changes_nothing(tmp_path):
    config = load_config(str(tmp_path), env={"QW_DEBUG": "0"})
    assert config.logging.level == "info" and config.sources["logging.level"] == "default"


def test_quantumwala_names(tmp_path):
    env = {"QUANTUMWALA_MAX_CONCURRENT": "6", "QUANTUMWALA_CPU_LIMIT": "70",
           "QUANTUMWALA_MEMORY_LIMIT": "60", "QUANTUMWALA_MEMORY_RESERVE": "2048",
           "QUANTUMWALA_TIMEOUT_DEFAULT": "300", "QUANTUMWALA_RETRY_MAX": "3",
           "QUANTUMWALA_LOG_LEVEL": "WARNING", "QUANTUMWALA_REAL_EXECUTION": "true"}
    config = load_config(str(tmp_path), env=env)
    assert config.run.max_concurrent == 6
    assert config.resources.cpu_limit_percent == 70
    assert config.resources.memory_limit_percent == 60
    assert config.resources.memory_reserve_mb == 2048
    assert config.run.timeout == 300.0
    assert config.sources["run.timeout"] == "env QUANTUMWALA_TIMEOUT_DEFAULT"
    assert config.run.max_retries == 3
    assert config.logging.level == "warning"
    config = load_config(str(tmp_path), env=dict(env, QUANTUMWALA_TIMEOUT_AGENT="600"))
    assert config.run.timeout == 600.0
    assert config.sources["run.timeout"] == "env QUANTUMWALA_TIMEOUT_AGENT"


def test_qw_names_beat_quantumwala_names(tmp_path):
    config = load_config(str(tmp_path), env={
        "QUANTUMWALA_MAX_CONCURRENT": "6", "QW_MAX_CONCURRENT": "2",
        "QUANTUMWALA_TIMEOUT_AGENT": "600", "QW_RUN_TIMEOUT": "5m",
        "QUANTUMWALA_LOG_LEVEL": "error", "QW_DEBUG": "1"})
    assert config.run.max_concurrent == 2
    assert config.run.timeout == 300.0
    assert config.logging.level == "debug"


def test_quantumwala_bad_value_names_the_variable(tmp_path):
    message = error(tmp_path, env={"QUANTUMWALA_CPU_LIMIT": "0.8"})
    assert message.startswith("[resources] cpu_limit_percent must be a whole number, got \"0.8\"")
    assert "environment QUANTUMWALA_CPU_LIMIT" in message


def test_qw_variables_the_tool_uses_are_not_config_errors(tmp_path):
    env = {"QW_RUN_ID": "20240101-abc", "QW_TASK_ID": "2.1", "QW_CACHE_DIR": "/tmp/x",
           "QW_REQUIRE_CLAUDE": "1", "QW_DEBUG": "", "QW_CLAUDE": "claude"}
    assert load_config(str(tmp_path), env=env).run.max_concurrent == 8


# --- errors -----------------------------------------------------------------------------

def test_bad_toml_names_file_and_line(tmp_path):
    message = error(tmp_path, '[run]\nmax_concurrent = 4\ntimeout = 30m\n')
    assert message.startswith("invalid TOML: ")
    assert ", qw.toml:3;" in message


def test_duplicate_key_is_bad_toml_with_a_hint(tmp_path):
    message = error(tmp_path, "[run]\nmax_retries = 1\nmax_retries = 2\n")
    assert message.startswith("invalid TOML: ") and "qw.toml:" in message
    assert "appears twice" in message


def test_unknown_section_suggests_the_near_one(tmp_path):
    message = error(tmp_path, "[run]\nmax_retries = 1\n\n[cluade]\nmodel = \"x\"\n")
    assert message == "unknown section [cluade], qw.toml:4; did you mean [claude]?"


def test_unknown_key_suggests_the_near_one(tmp_path):
    message = error(tmp_path, "# qw\n[run]\nmax_concurent = 4\n")
    assert message == "unknown key [run] max_concurent, qw.toml:3; did you mean max_concurrent?"


def test_key_in_the_wrong_section_says_where_it_belongs(tmp_path):
    message = error(tmp_path, '[run]\nmodel = "opus"\n')
    assert message == "unknown key [run] model, qw.toml:2; model belongs in [claude]"
    message = error(tmp_path, "max_concurrent = 4\n")
    assert message == ("unknown key max_concurrent outside any section, qw.toml:1; "
                       "put it under [run]")


def test_wrong_type(tmp_path):
    message = error(tmp_path, '[run]\nmax_concurrent = "eight"\n')
    assert message.startswith('[run] max_concurrent must be a whole number, got "eight", qw.toml:2')
    message = error(tmp_path, '[spec]\nmark_in_progress = "yes"\n')
    assert '[spec] mark_in_progress must be true or false, got "yes", qw.toml:2' in message
    assert "must be a whole number, got true" in error(tmp_path, "[run]\nmax_retries = true\n")
    message = error(tmp_path, "[claude]\nmodel = 3\n")
    assert "[claude] model must be a string, got 3, qw.toml:2" in message


@pytest.mark.parametrize("value", [-2, 0])
def test_concurrency_below_one(tmp_path, value):
    message = error(tmp_path, f"[run]\nmax_concurrent = {value}\n")
    assert message.startswith(f"[run] max_concurrent must be at least 1, got {value}, qw.toml:2")


def test_percent_out_of_range(tmp_path):
    message = error(tmp_path, "[resources]\ncpu_limit_percent = 150\n")
    assert message.startswith(
        "[resources] cpu_limit_percent must be between 1 and 100, got 150, qw.toml:2")


def test_bad_durations(tmp_path):
    message = error(tmp_path, '[run]\n\nidle_timeout = "ten minutes"\n')
    assert message.startswith('[run] idle_timeout must be a duration, got "ten minutes", qw.toml:3')
    assert "30m" in message   # the fix shows the form
    message = error(tmp_path, '[run]\ntimeout = "0s"\n')
    assert message.startswith('[run] timeout must be at least 1s, got "0s", qw.toml:2')
    assert "must be at least 0s, got -5" in error(tmp_path, "[run]\nretry_backoff = -5\n")


def test_bad_enum_lists_the_allowed_values(tmp_path):
    message = error(tmp_path, '[claude]\npermission_mode = "yolo"\n')
    assert message.startswith('[claude] permission_mode must be one of acceptEdits, auto, '
                              'bypassPermissions, default, dontAsk, plan, got "yolo", qw.toml:2')
    message = error(tmp_path, '[plan]\ndependencies = "explict"\n')
    assert message.endswith("qw.toml:2; did you mean explicit?")


def test_list_of_non_strings(tmp_path):
    message = error(tmp_path, '[claude]\nallowed_tools = ["Read", 3]\n')
    assert message.startswith("[claude] allowed_tools must be a list of strings, "
                              "got 3 in the list, qw.toml:2")
    message = error(tmp_path, '[claude]\nextra_args = "--verbose"\n')
    assert "extra_args must be a list of strings" in message


def test_env_table_value_not_a_string_points_at_its_line(tmp_path):
    message = error(tmp_path, '[claude.env]\nA = "1"\nTHREADS = 4\n')
    assert message == ('[claude] env must be a table of strings, got THREADS = 4, qw.toml:3; '
                       'quote the value: THREADS = "4"')


def test_bad_env_value_names_the_variable(tmp_path):
    message = error(tmp_path, env={"QW_RUN_TIMEOUT": "soon"})
    assert message.startswith('[run] timeout must be a duration, got "soon", '
                              "environment QW_RUN_TIMEOUT;")
    message = error(tmp_path, env={"QW_MAX_CONCURRENT": "0"})
    assert message.startswith("[run] max_concurrent must be at least 1, got 0, "
                              "environment QW_MAX_CONCURRENT")
    message = error(tmp_path, env={"QW_CLAUDE_ENV": "A=1"})
    assert "env must be a JSON object of strings" in message and "QW_CLAUDE_ENV" in message
    message = error(tmp_path, env={"QW_CLAUDE_ALLOWED_TOOLS": '["Read", 1]'})
    assert "must be a list of strings, got 1" in message
    assert "environment QW_CLAUDE_ALLOWED_TOOLS" in message
    message = error(tmp_path, env={"QW_SPEC_MARK_IN_PROGRESS": "maybe"})
    assert "must be true or false" in message


def test_unknown_qw_config_variable(tmp_path):
    message = error(tmp_path, env={"QW_RUN_MAX_CONCURENT": "4"})
    assert message == ("unknown key [run] max_concurent, environment QW_RUN_MAX_CONCURENT; "
                       "did you mean QW_RUN_MAX_CONCURRENT?")
    message = error(tmp_path, env={"QW_RESOURCES_GPU": "1"})
    assert "environment QW_RESOURCES_GPU" in message


def test_missing_config_file_is_named(tmp_path):
    missing = str(tmp_path / "nope.toml")
    message = error(tmp_path, config_file=missing)
    assert message.startswith(f"config file not found, --config {missing}")


def test_bad_flag_value_names_the_flag(tmp_path):
    message = error(tmp_path, flags={"run.max_concurrent": 0})
    assert message.startswith("[run] max_concurrent must be at least 1, got 0, flag -j/--jobs")
    message = error(tmp_path, flags={"run.timeout": "forever"})
    assert 'got "forever", flag --timeout' in message


def test_error_in_claude_qw_toml_names_that_file(tmp_path):
    write(tmp_path, "[run]\nmax_retries = -1\n", name=".claude/qw.toml")
    message = error(tmp_path)
    assert message.startswith("[run] max_retries must be at least 0, got -1, .claude/qw.toml:2")


def test_file_that_is_not_utf8(tmp_path):
    (tmp_path / "qw.toml").write_bytes(b"[run]\nverify = \"\xff\"\n")
    assert "qw.toml is not UTF-8" in error(tmp_path)


def test_byte_order_mark_is_accepted(tmp_path):
    (tmp_path / "qw.toml").write_bytes(b"\xef\xbb\xbf[run]\nmax_retries = 1\n")
    assert load_config(str(tmp_path), env={}).run.max_retries == 1


@pytest.mark.parametrize("value", ["nan", "inf", "1e400"])
def test_a_duration_that_is_not_finite_is_refused(tmp_path, value):
    (tmp_path / "qw.toml").write_text(f"[run]\ntimeout = {value}\n")
    with pytest.raises(ConfigError, match=r"\[run\] timeout must be a duration.*qw.toml:2"):
        load_config(str(tmp_path), env={})
