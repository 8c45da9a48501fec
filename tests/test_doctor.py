"""`qw doctor` in a scratch repository, with the real claude CLI (found through QW_CLAUDE).

Each test runs `python -m qw doctor` as a user would and reads its one-line-per-check report.
The CLI's own `auth status` answers the credential check; it talks to nothing but the fake
API's `HEAD /`, and each test gives it its own CLAUDE_CONFIG_DIR.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict

import pytest

from claude_cli import claude_or_skip, fake_api_env
from fakeapi import FakeAnthropic

REPO_ROOT = Path(__file__).resolve().parent.parent
DEADLINE_S = 120
CHECKS = ("config", "claude CLI", "credentials", "git", "python", "psutil", ".qw/")


@pytest.fixture(scope="module")
def claude() -> str:
    return claude_or_skip()


@pytest.fixture(scope="module")
def fake():
    with FakeAnthropic() as server:
        yield server


@pytest.fixture
def repo(tmp_path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=str(root), check=True, timeout=60)
    return root


@pytest.fixture
def env(tmp_path, fake, claude) -> Dict[str, str]:
    """A world with an API key and the real CLI named by QW_CLAUDE."""
    config_dir = tmp_path / "claude-config"
    config_dir.mkdir()
    return fake_api_env(fake.url, str(config_dir), {
        "QW_CLAUDE": claude, "PYTHONPATH": str(REPO_ROOT)})


def doctor(repo: Path, env: Dict[str, str]):
    """Run `python -m qw doctor` in repo: (exit code, {check name: its line}, output)."""
    try:
        done = subprocess.run([sys.executable, "-m", "qw", "doctor"], cwd=str(repo), env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"qw doctor did not finish within {DEADLINE_S}s")
    lines = {}
    for line in done.stdout.splitlines():
        name = next((c for c in CHECKS if line[5:].startswith(c + ":")), None)
        assert name and name not in lines, f"unexpected line {line!r} in\n{done.stdout}"
        lines[name] = line
    assert set(lines) == set(CHECKS), done.stdout + done.stderr
    return done.returncode, lines, done.stdout + done.stderr


def failed(lines: Dict[str, str]):
    return sorted(name for name, line in lines.items() if line.startswith("FAIL"))


def test_all_ok_exits_0_and_shows_the_cli_version(repo, env, claude):
    version = subprocess.run([claude, "--version"], stdout=subprocess.PIPE, env=env,
                             universal_newlines=True, timeout=DEADLINE_S).stdout.split()[0]
    code, lines, output = doctor(repo, env)
    assert code == 0, output
    assert all(line.startswith(("ok ", "warn ")) for line in lines.values()), output
    assert version in lines["claude CLI"] and claude in lines["claude CLI"]
    assert "QW_CLAUDE" in lines["claude CLI"]
    assert "ANTHROPIC_API_KEY" in lines["credentials"]
    assert lines["config"] == "ok   config: defaults (no qw.toml)"
    assert str(repo / ".qw") in lines[".qw/"]


def test_a_missing_cli_fails_with_how_to_install_it(repo, env):
    code, lines, output = doctor(repo, dict(env, QW_CLAUDE="/nonexistent/claude"))
    assert code == 1, output
    assert failed(lines) == ["claude CLI"]
    assert "/nonexistent/claude" in lines["claude CLI"]
    assert "npm install" in lines["claude CLI"] and "QW_CLAUDE" in lines["claude CLI"]


def test_no_key_and_no_login_fails_the_credentials_check(repo, env):
    no_key = {k: v for k, v in env.items() if k != "ANTHROPIC_API_KEY"}
    code, lines, output = doctor(repo, no_key)
    assert code == 1, output
    assert failed(lines) == ["credentials"]
    assert "ANTHROPIC_API_KEY" in lines["credentials"] and "/login" in lines["credentials"]


def test_the_clis_own_login_counts_as_credentials(repo, env):
    # What `claude /login` leaves behind for a subscription (not a real token: the check
    # must not spend money, so nothing would ever send it).
    no_key = {k: v for k, v in env.items() if k != "ANTHROPIC_API_KEY"}
    login = {"claudeAiOauth": {"accessToken": "sk-ant-oat01-test", "refreshToken":
                               "sk-ant-ort01-test", "expiresAt": int(time.time() + 3600) * 1000,
                               "scopes": ["user:inference"], "subscriptionType": "max"}}
    Path(no_key["CLAUDE_CONFIG_DIR"], ".credentials.json").write_text(json.dumps(login))
    code, lines, output = doctor(repo, no_key)
    assert code == 0, output
    assert "claude.ai login" in lines["credentials"]


def test_a_key_in_the_claude_env_table_counts_as_credentials(repo, env):
    no_key = {k: v for k, v in env.items() if k != "ANTHROPIC_API_KEY"}
    (repo / "qw.toml").write_text('[claude]\nenv = { ANTHROPIC_API_KEY = "sk-ant-test" }\n')
    code, lines, output = doctor(repo, no_key)
    assert code == 0, output
    assert "ANTHROPIC_API_KEY" in lines["credentials"]


def test_a_bad_config_names_the_key_and_the_line(repo, env):
    (repo / "qw.toml").write_text('[run]\ntimeout = "30m"\nmax_concurrent = "lots"\n')
    code, lines, output = doctor(repo, env)
    assert code == 1, output
    assert failed(lines) == ["config"]
    assert "max_concurrent" in lines["config"] and "qw.toml:3" in lines["config"]


def test_a_qw_path_that_is_a_file_fails_the_qw_check(repo, env):
    (repo / ".qw").write_text("not a folder\n")
    code, lines, output = doctor(repo, env)
    assert code == 1, output
    assert failed(lines) == [".qw/"]
    assert "not a folder" in lines[".qw/"]
