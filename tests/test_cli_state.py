"""`qw resources`, `qw reset` and `qw backup` as a user runs them (python -m qw)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

TASKS = """\
# Tasks

- [x] 1. Done already
  - File: a.txt
- [ ] 2. Still to do
  - File: b.txt
"""


def qw(repo, *args, env=None):
    full_env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-m", "qw", *args], cwd=repo, env=full_env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=60)


@pytest.fixture
def repo(tmp_path):
    spec = tmp_path / ".claude" / "specs" / "demo"
    spec.mkdir(parents=True)
    (spec / "tasks.md").write_text(TASKS)
    return tmp_path


def test_resources_reports_live_figures_and_the_backend(repo):
    done = qw(repo, "resources", "--json")
    assert done.returncode == 0, done.stderr
    snap = json.loads(done.stdout)
    assert snap["cpu_count"] >= 1 and snap["memory_total_mb"] > 0
    assert snap["backend"] in ("psutil", "stdlib")
    text = qw(repo, "resources").stdout
    assert "memory:" in text and "backend:" in text


def test_backup_create_list_restore_clean(repo):
    tasks = repo / ".claude" / "specs" / "demo" / "tasks.md"
    assert qw(repo, "backup", "create", "before-edit").returncode == 0
    tasks.write_text(TASKS.replace("[x] 1.", "[ ] 1."))
    listing = qw(repo, "backup", "list")
    assert "before-edit" in listing.stdout and "demo" in listing.stdout
    done = qw(repo, "backup", "restore", "before-edit")
    assert done.returncode == 0, done.stderr
    assert tasks.read_text() == TASKS                         # tasks.md came back
    assert "undoes this" in done.stdout
    cleaned = qw(repo, "backup", "clean", "--days", "0")
    assert "deleted before-edit" in cleaned.stdout
    assert "no backups" in qw(repo, "backup", "list").stdout


@pytest.mark.parametrize("args, names", [
    (["backup", "restore", "../etc"], "path separator"),
    (["backup", "restore", "nope"], "nope"),
    (["backup", "clean"], "--days"),
    (["backup"], "ACTION"),
    (["reset", "demo", "--uncheck"], "--hard"),
    (["reset", "demo", "--task", "9"], "9"),
    (["reset", "nope"], "nope"),
])
def test_bad_backup_and_reset_calls_are_one_line_errors(repo, args, names):
    before = sorted(p.relative_to(repo) for p in repo.rglob("*"))
    done = qw(repo, *args)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("qw: error: ") and names in lines[0]
    assert "Traceback" not in done.stderr
    after = sorted(p.relative_to(repo) for p in repo.rglob("*")
                   if ".qw" not in p.relative_to(repo).parts)
    assert after == [p for p in before if ".qw" not in p.parts]


def test_hard_reset_with_uncheck_unticks_and_backs_up_first(repo):
    tasks = repo / ".claude" / "specs" / "demo" / "tasks.md"
    done = qw(repo, "reset", "demo", "--hard", "--uncheck")
    assert done.returncode == 0, done.stderr
    assert tasks.read_text() == TASKS.replace("[x] 1.", "[ ] 1.")
    assert "backup taken first" in done.stdout
    assert "auto-" in qw(repo, "backup", "list").stdout


def test_hard_reset_with_uncheck_of_a_large_spec_is_one_pass_and_one_line(repo):
    # 5,000 ticked tasks: unticking them one scan each took minutes; the line listing
    # them all was 40 KB.
    tasks = repo / ".claude" / "specs" / "demo" / "tasks.md"
    tasks.write_text("# Tasks\n\n" + "".join(f"- [x] {i}. Unit {i}\n  - File: u{i}.py\n"
                                             for i in range(1, 5001)))
    done = qw(repo, "reset", "demo", "--hard", "--uncheck")
    assert done.returncode == 0, done.stderr
    assert "[x]" not in tasks.read_text() and tasks.read_text().count("- [ ] ") == 5000
    [line] = [ln for ln in done.stdout.splitlines() if ln.startswith("unticked")]
    assert line.startswith("unticked in tasks.md: 1, 2, 3,")
    assert line.endswith("20 and 4980 more (5000 tasks)"), line
