"""`qw approve`, `qw hook`, `qw consume` as a user (and Claude Code) runs them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def qw(repo, *args, stdin=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("QW_RUN_ID", None)
    return subprocess.run([sys.executable, "-m", "qw", *args], cwd=repo, env=env,
                          input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=60)


@pytest.fixture
def repo(tmp_path):
    assert qw(tmp_path, "init").returncode == 0
    return tmp_path


def test_approve_writes_the_marker_and_names_the_next_step(repo):
    done = qw(repo, "approve", "example")
    assert done.returncode == 0, done.stderr
    assert "next: qw approve example design" in done.stdout
    text = (repo / ".claude" / "specs" / "example" / "requirements.md").read_text()
    assert text.count("✅ APPROVED") == 1
    assert qw(repo, "approve", "example", "requirements").returncode == 0
    assert (repo / ".claude" / "specs" / "example" / "requirements.md").read_text() == text
    bad = qw(repo, "approve", "example", "review")
    assert bad.returncode == 2 and bad.stderr.startswith("qw: error: ")


def test_the_hook_suggests_the_next_step_and_uninstall_leaves_no_trace(repo):
    settings = repo / ".claude" / "settings.json"
    settings.write_text(json.dumps({"model": "opus", "hooks": {"Stop": [
        {"matcher": "", "hooks": [{"type": "command", "command": "echo mine"}]}]}}))
    before = json.loads(settings.read_text())
    assert qw(repo, "hook", "install").returncode == 0
    installed = json.loads(settings.read_text())
    assert installed["model"] == "opus" and len(installed["hooks"]["Stop"]) == 2
    assert "SubagentStop" in installed["hooks"]
    payload = json.dumps({"hook_event_name": "Stop", "stop_hook_active": False,
                          "cwd": str(repo), "session_id": "s"})
    done = qw(repo, "hook", "stop", stdin=payload)
    assert (done.returncode, done.stdout) == (0, "")
    assert (repo / ".claude" / "next_command.txt").read_text().strip() == \
        "qw approve example requirements"
    broken = qw(repo, "hook", "stop", stdin="{not json")
    assert broken.returncode == 0 and broken.stdout == ""
    assert qw(repo, "hook", "uninstall").returncode == 0
    assert json.loads(settings.read_text()) == before


@pytest.mark.parametrize("suggestion", [
    "rm -rf /", "qw run example; rm -rf ~", "qw run $(whoami)", "qw run `id`",
    "qw run nosuchspec", "qw doctor", "qw run example --bogus",
])
def test_consume_refuses_anything_but_qw_workflow_commands(repo, suggestion):
    (repo / ".claude" / "next_command.txt").write_text(suggestion + "\n")
    done = qw(repo, "consume")
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout.startswith("refused ")
    assert not (repo / ".claude" / "next_command.txt").exists()
    assert (repo / ".claude" / "next_command.rejected").exists()
    assert not (repo / ".qw" / "runs").exists()          # nothing ran


def test_consume_runs_an_allowed_suggestion_and_deletes_it(repo):
    (repo / ".claude" / "next_command.txt").write_text("qw approve example requirements\n")
    done = qw(repo, "consume")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1].startswith("ran `qw approve example requirements`")
    assert not (repo / ".claude" / "next_command.txt").exists()
    assert "✅ APPROVED" in (repo / ".claude" / "specs" / "example" / "requirements.md").read_text()


def test_consume_watch_stops_on_sigterm_and_frees_its_lock(repo):
    import signal
    import time

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "qw", "consume", "--watch", "--interval",
                             "0.05"], cwd=repo, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True)
    lock = repo / ".qw" / "locks" / "consume.lock"
    deadline = time.monotonic() + 30
    while not (lock.exists() and lock.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)   # polling another process's file: nothing to wait on
    time.sleep(0.3)        # let it get into its wait: the signal must end the wait itself
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert qw(repo, "consume").returncode == 0          # the lock was released


def test_bad_interval_and_port_are_one_line_errors(repo):
    for args in (["consume", "--watch", "--interval", "0"], ["dashboard", "--port", "99999"]):
        done = qw(repo, *args)
        assert done.returncode == 2 and done.stderr.startswith("qw: error: ")
        assert "Traceback" not in done.stderr
