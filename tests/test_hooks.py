"""Claude Code hooks: install/uninstall merge into .claude/settings.json without clobbering,
and the Stop hook writes the next command — in-process, as a real subprocess, and run by
the real Claude Code CLI against the fake API."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from claude_cli import claude_or_skip, fake_api_env
from fakeapi import FakeAnthropic
from qw.approve import MARKER, approve
from qw.consume import RAN, consume_once
from qw.errors import ConfigError
from qw.hooks import hook_stop, install, qw_command, uninstall
from qw.lock import SpecLock

ROOT = Path(__file__).resolve().parent.parent
QW = "python /opt/tools/qw.pyz"
HOOK_PROCESS_TIMEOUT_S = 30.0   # a bound for a hung hook, far above the time it takes
CLI_TIMEOUT_S = 90.0

REQUIREMENTS_MD = """\
# Requirements

### Requirement 1: Greeting

**User Story:** As a user, I want a greeting, so that I feel welcome

#### Acceptance Criteria

1. WHEN the program starts THEN the system SHALL print hello
"""
TASKS_MD = "# Tasks\n\n- [x] 1. Greeting\n  - File: greeter.py\n- [x] 2. Names\n  - File: greeter.py\n"

# A settings file as a user has it: other keys, other hooks, written as json.dumps(indent=2).
USER_SETTINGS = {
    "permissions": {"allow": ["Bash(git *)"], "deny": []},
    "env": {"FOO": "bär"},
    "hooks": {
        "Stop": [{"matcher": "", "hooks": [{"type": "command", "command": "notify-send done"}]}],
        "PreToolUse": [{"matcher": "Bash", "hooks": [{"type": "command",
                                                      "command": "./check.sh"}]}],
    },
    "model": "sonnet",
}


def settings_path(repo: Path) -> Path:
    return repo / ".claude" / "settings.json"


def write_settings(repo: Path, data, indent=2) -> bytes:
    raw = (json.dumps(data, indent=indent, ensure_ascii=False) + "\n").encode("utf-8")
    settings_path(repo).parent.mkdir(parents=True, exist_ok=True)
    settings_path(repo).write_bytes(raw)
    return raw


def qw_hooks(settings: dict) -> list:
    return [hook["command"] for groups in settings.get("hooks", {}).values()
            for group in groups for hook in group.get("hooks", [])
            if hook.get("command", "").endswith(" hook stop")]


# --- install / uninstall ----------------------------------------------------------------

def test_install_creates_the_file_and_uninstall_removes_all_it_created(tmp_path):
    result = install(str(tmp_path), QW)
    assert result.created_file and result.added == ("Stop", "SubagentStop")
    settings = json.loads(settings_path(tmp_path).read_text())
    for event in ("Stop", "SubagentStop"):
        [group] = settings["hooks"][event]
        assert group["matcher"] == ""
        assert group["hooks"] == [{"type": "command", "command": QW + " hook stop",
                                   "timeout": 10}]
    removed = uninstall(str(tmp_path))
    assert removed.file_removed and removed.removed == ("Stop", "SubagentStop")
    assert not (tmp_path / ".claude").exists()


def test_round_trip_over_a_users_settings_is_byte_exact(tmp_path):
    original = write_settings(tmp_path, USER_SETTINGS)
    result = install(str(tmp_path), QW)
    assert not result.created_file
    merged = json.loads(settings_path(tmp_path).read_text(encoding="utf-8"))
    assert merged["permissions"] == USER_SETTINGS["permissions"]
    assert merged["env"] == {"FOO": "bär"} and merged["model"] == "sonnet"
    assert merged["hooks"]["PreToolUse"] == USER_SETTINGS["hooks"]["PreToolUse"]
    assert merged["hooks"]["Stop"][0] == USER_SETTINGS["hooks"]["Stop"][0]   # theirs first
    assert len(merged["hooks"]["Stop"]) == 2 and len(merged["hooks"]["SubagentStop"]) == 1
    assert qw_hooks(merged) == [QW + " hook stop"] * 2

    uninstall(str(tmp_path))
    assert settings_path(tmp_path).read_bytes() == original


def test_round_trip_over_other_formatting_is_the_same_json(tmp_path):
    write_settings(tmp_path, USER_SETTINGS, indent=None)
    install(str(tmp_path), QW)
    uninstall(str(tmp_path))
    restored = json.loads(settings_path(tmp_path).read_text(encoding="utf-8"))
    assert restored == USER_SETTINGS
    assert list(restored) == list(USER_SETTINGS)   # key order kept


def test_uninstall_keeps_containers_the_user_had_and_hooks_added_after_install(tmp_path):
    write_settings(tmp_path, {"hooks": {"Stop": []}})
    install(str(tmp_path), QW)
    settings = json.loads(settings_path(tmp_path).read_text())
    settings["hooks"]["SubagentStop"].append(
        {"matcher": "", "hooks": [{"type": "command", "command": "echo mine"}]})
    write_settings(tmp_path, settings)
    uninstall(str(tmp_path))
    assert json.loads(settings_path(tmp_path).read_text()) == {"hooks": {
        "Stop": [],
        "SubagentStop": [{"matcher": "", "hooks": [{"type": "command",
                                                     "command": "echo mine"}]}]}}


def test_install_is_idempotent_and_moves_to_a_new_command(tmp_path):
    write_settings(tmp_path, USER_SETTINGS)
    install(str(tmp_path), QW)
    once = settings_path(tmp_path).read_bytes()
    again = install(str(tmp_path), QW)
    assert again.added == () and again.updated == ()
    assert settings_path(tmp_path).read_bytes() == once
    moved = install(str(tmp_path), "python /new/qw.pyz")
    assert moved.updated == ("Stop", "SubagentStop")
    assert qw_hooks(json.loads(settings_path(tmp_path).read_text())) == \
        ["python /new/qw.pyz hook stop"] * 2


def test_invalid_json_is_refused_naming_line_and_column_and_left_alone(tmp_path):
    raw = b'{\n  "model": "sonnet",\n  "hooks": {,}\n}\n'
    settings_path(tmp_path).parent.mkdir(parents=True)
    settings_path(tmp_path).write_bytes(raw)
    for action in (lambda: install(str(tmp_path), QW), lambda: uninstall(str(tmp_path))):
        with pytest.raises(ConfigError) as raised:
            action()
        assert "settings file is not valid JSON" in str(raised.value)
        assert f"{settings_path(tmp_path)}:3:13" in str(raised.value)
    assert settings_path(tmp_path).read_bytes() == raw


@pytest.mark.parametrize("data, key", [
    ([1, 2], None), ({"hooks": []}, "hooks"), ({"hooks": {"Stop": {}}}, "hooks.Stop")])
def test_settings_of_the_wrong_shape_are_refused(tmp_path, data, key):
    raw = write_settings(tmp_path, data)
    with pytest.raises(ConfigError) as raised:
        install(str(tmp_path), QW)
    if key:
        assert f"key {key}" in str(raised.value)
    assert settings_path(tmp_path).read_bytes() == raw


def test_qw_command_for_the_zipapp_and_the_package(tmp_path):
    pyz = tmp_path / "my tools" / "qw.pyz"
    pyz.parent.mkdir()
    pyz.write_bytes(b"")
    assert qw_command("/usr/bin/python3", str(pyz)) == \
        f"/usr/bin/python3 '{pyz}'"
    assert qw_command("/usr/bin/python3", str(ROOT / "qw" / "__main__.py")) == \
        "/usr/bin/python3 -m qw"
    script = tmp_path / "qw"
    script.write_bytes(b"")
    assert qw_command("/usr/bin/python3", str(script)) == str(script)


# --- the hook, in-process ---------------------------------------------------------------

def make_repo(repo: Path, spec: str = "demo", **documents: str) -> Path:
    folder = repo / ".claude" / "specs" / spec
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in documents.items():
        (folder / f"{name}.md").write_text(text)
    return folder


def stop_json(cwd: Path, **extra) -> str:
    data = {"session_id": "s1", "transcript_path": str(cwd / "t.jsonl"), "cwd": str(cwd),
            "hook_event_name": "Stop", "stop_hook_active": False}
    data.update(extra)
    return json.dumps(data)


def suggestion(repo: Path):
    path = repo / ".claude" / "next_command.txt"
    return path.read_text() if path.exists() else None


def test_a_document_that_now_validates_is_suggested_for_approval(tmp_path):
    make_repo(tmp_path, requirements=REQUIREMENTS_MD)
    assert hook_stop(stop_json(tmp_path), {}) == 0
    assert suggestion(tmp_path) == "qw approve demo requirements\n"


def test_approved_tasks_suggest_the_workflow_from_project_dir_or_a_subfolder(tmp_path):
    make_repo(tmp_path, tasks=TASKS_MD.replace("[x]", "[ ]"))
    approve(str(tmp_path), "demo", "tasks")
    sub = tmp_path / "src" / "deep"
    sub.mkdir(parents=True)
    assert hook_stop(stop_json(sub), {}) == 0        # found from cwd upwards
    assert suggestion(tmp_path) == "qw workflow demo\n"
    (tmp_path / ".claude" / "next_command.txt").unlink()
    assert hook_stop(stop_json(Path("/")), {"CLAUDE_PROJECT_DIR": str(tmp_path)}) == 0
    assert suggestion(tmp_path) == "qw workflow demo\n"


def test_the_spec_changed_last_wins(tmp_path):
    make_repo(tmp_path, "old", requirements=REQUIREMENTS_MD)
    new = make_repo(tmp_path, "new", requirements=REQUIREMENTS_MD)
    past = time.time() - 100
    os.utime(tmp_path / ".claude" / "specs" / "old" / "requirements.md", (past, past))
    hook_stop(stop_json(tmp_path), {})
    assert suggestion(tmp_path) == "qw approve new requirements\n"
    os.utime(new / "requirements.md", (past - 100, past - 100))
    hook_stop(stop_json(tmp_path), {})
    assert suggestion(tmp_path) == "qw approve old requirements\n"


@pytest.mark.parametrize("stdin", ["", "not json", "[1, 2]", '"text"', "{", None])
def test_malformed_stdin_returns_0_and_writes_nothing(tmp_path, stdin):
    make_repo(tmp_path, requirements=REQUIREMENTS_MD)
    assert hook_stop(stdin, {"CLAUDE_PROJECT_DIR": str(tmp_path)}) == 0
    assert suggestion(tmp_path) is None and not (tmp_path / ".qw").exists()


def test_stop_hook_active_or_a_qw_child_session_does_nothing(tmp_path):
    make_repo(tmp_path, requirements=REQUIREMENTS_MD)
    assert hook_stop(stop_json(tmp_path, stop_hook_active=True), {}) == 0
    assert hook_stop(stop_json(tmp_path), {"QW_RUN_ID": "r1"}) == 0
    assert suggestion(tmp_path) is None


def test_nothing_is_suggested_while_a_run_holds_the_spec_or_nothing_is_complete(tmp_path):
    make_repo(tmp_path, requirements=REQUIREMENTS_MD)
    make_repo(tmp_path, "fresh")                                      # nothing written yet
    make_repo(tmp_path, "broken", requirements="# Requirements\n")  # someone is at it
    lock = SpecLock(str(tmp_path / ".qw" / "locks" / "demo.lock")).acquire({"run_id": "r"})
    try:
        assert hook_stop(stop_json(tmp_path), {}) == 0
        assert suggestion(tmp_path) is None
    finally:
        lock.release()
    hook_stop(stop_json(tmp_path), {})
    assert suggestion(tmp_path) == "qw approve demo requirements\n"


def test_a_command_the_consumer_gave_up_on_is_not_suggested_again_until_the_spec_changes(
        tmp_path):
    folder = make_repo(tmp_path, requirements=REQUIREMENTS_MD)
    failed = tmp_path / ".claude" / "next_command.failed"
    failed.write_text("qw approve demo requirements\n")
    hook_stop(stop_json(tmp_path), {})
    assert suggestion(tmp_path) is None
    later = failed.stat().st_mtime + 10
    os.utime(folder / "requirements.md", (later, later))
    hook_stop(stop_json(tmp_path), {})
    assert suggestion(tmp_path) == "qw approve demo requirements\n"


def test_a_failure_inside_the_hook_is_logged_and_still_returns_0(tmp_path):
    make_repo(tmp_path, requirements=REQUIREMENTS_MD)
    (tmp_path / ".claude" / "next_command.txt").mkdir()   # cannot be written
    assert hook_stop(stop_json(tmp_path), {}) == 0
    [line] = (tmp_path / ".qw" / "hooks.log").read_text().splitlines()
    entry = json.loads(line)
    assert entry["at"] and "Error" in entry["error"]


# --- the hook as a real process ---------------------------------------------------------

HOOK_MAIN = ("import sys; sys.path.insert(0, %r); from qw.hooks import main; "
             "sys.exit(main())" % str(ROOT))


def run_hook(stdin: str, env_extra=None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("QW_RUN_ID", "CLAUDE_PROJECT_DIR")}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", HOOK_MAIN, "hook", "stop"], input=stdin,
                          capture_output=True, text=True, env=env,
                          timeout=HOOK_PROCESS_TIMEOUT_S)


HEAVY = ("multiprocessing", "subprocess", "psutil", "asyncio", "http.server", "qw.runner")


def test_the_hook_process_stays_light_and_prints_nothing(tmp_path):
    """Claude Code runs the hook at every Stop: it must stay well under a second. What keeps
    it so is what it imports (a timed assertion would flake on a loaded machine)."""
    make_repo(tmp_path, requirements=REQUIREMENTS_MD)
    done = run_hook(stop_json(tmp_path))
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert suggestion(tmp_path) == "qw approve demo requirements\n"
    probe = ("import sys, io; sys.path.insert(0, %r); sys.stdin = io.StringIO(sys.argv[1]); "
             "from qw.hooks import main; main(); "
             "print(sorted(m for m in %r if m in sys.modules))" % (str(ROOT), HEAVY))
    loaded = subprocess.run([sys.executable, "-c", probe, stop_json(tmp_path)],
                            capture_output=True, text=True, timeout=HOOK_PROCESS_TIMEOUT_S)
    assert loaded.stdout.strip() == "[]", loaded.stdout + loaded.stderr


@pytest.mark.parametrize("stdin", ["", "}{", "\x00\xff"])
def test_the_hook_process_exits_0_on_garbage(tmp_path, stdin):
    make_repo(tmp_path, requirements=REQUIREMENTS_MD)
    done = run_hook(stdin, {"CLAUDE_PROJECT_DIR": str(tmp_path)})
    assert (done.returncode, done.stdout) == (0, "")
    assert suggestion(tmp_path) is None


# --- the hook run by the real Claude Code CLI -------------------------------------------

@pytest.fixture
def claude() -> str:
    return claude_or_skip()


@pytest.mark.parametrize("how", ["--settings", "qw hook install"])
def test_the_real_cli_runs_the_hook_and_the_consumer_executes_its_suggestion(
        tmp_path, claude, how):
    repo = tmp_path / "repo"
    folder = make_repo(repo, requirements=REQUIREMENTS_MD)
    (repo / ".git").mkdir()
    command = f"{shlex.quote(sys.executable)} -c {shlex.quote(HOOK_MAIN)}"
    flags = []
    if how == "--settings":
        flags = ["--settings", json.dumps({"hooks": {"Stop": [{"matcher": "", "hooks": [
            {"type": "command", "command": command + " hook stop", "timeout": 30}]}]}})]
    else:
        install(str(repo), command)
    config = tmp_path / "config"
    config.mkdir()
    with FakeAnthropic() as fake:
        env = fake_api_env(fake.url, str(config))
        env.pop("QW_RUN_ID", None)
        done = subprocess.run(
            [claude, "-p", "--output-format", "stream-json", "--verbose", *flags],
            input="Say hello.\nFAKE: text Hello.", capture_output=True, text=True,
            cwd=str(repo), env=env, timeout=CLI_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    log = repo / ".qw" / "hooks.log"
    # The CLI runs its Stop hooks before it exits: the suggestion is there when it has.
    assert suggestion(repo) == "qw approve demo requirements\n", \
        log.read_text() if log.exists() else "no suggestion and no hooks.log"

    ran = []

    def runner(argv):   # what `qw approve SPEC PHASE --repo R` does
        ran.append(argv)
        approve(argv[argv.index("--repo") + 1], argv[1], argv[2], who="consumer")
        return 0

    result = consume_once(str(repo), runner, sleep=lambda s: None)
    assert result.action == RAN
    assert ran == [["approve", "demo", "requirements", "--repo", str(repo)]]
    assert MARKER in (folder / "requirements.md").read_text()
    assert suggestion(repo) is None
