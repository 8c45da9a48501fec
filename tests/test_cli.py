"""The command line as a user meets it: `python -m qw ...` in a scratch repository.

Exit codes, stderr and "no traceback" are checked on real processes; the rest runs
`qw.cli.main` in-process, which is faster and tests the same code.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from qw import __version__
from qw.cli import main
from qw.config import KEYS

ROOT = Path(__file__).resolve().parent.parent          # the checkout holding qw/
FIXTURES = Path(__file__).resolve().parent / "fixtures"
EVERY_FEATURE = FIXTURES / "specs" / "every-feature"
EXAMPLE_CONFIG = ROOT / "config.example.toml"

# Generous: the machine is shared; a hung qw fails with this timeout's message, not forever.
PROCESS_TIMEOUT = 60


def clean_env(**extra: str) -> Dict[str, str]:
    """os.environ without any qw setting of the developer's, with qw importable from ROOT."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("QW_", "QUANTUMWALA_"))}
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"]
                                     if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


def qw(*args: str, cwd: Path, env: Optional[Dict[str, str]] = None
       ) -> subprocess.CompletedProcess:
    """Run `python -m qw ARGS` in `cwd` and return the finished process (text output)."""
    try:
        return subprocess.run([sys.executable, "-m", "qw", *args], cwd=str(cwd),
                              env=env or clean_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, encoding="utf-8",
                              timeout=PROCESS_TIMEOUT)
    except subprocess.TimeoutExpired as hung:
        pytest.fail(f"`qw {' '.join(args)}` did not finish in {PROCESS_TIMEOUT}s: "
                    f"stdout {hung.stdout!r}, stderr {hung.stderr!r}")


@pytest.fixture(autouse=True)
def no_qw_environment(monkeypatch):
    """In-process runs read os.environ: keep the developer's QW_* settings out of them."""
    for name in list(os.environ):
        if name.startswith(("QW_", "QUANTUMWALA_")):
            monkeypatch.delenv(name)


def run_main(monkeypatch, capsys, cwd: Path, *args: str) -> Tuple[int, str, str]:
    monkeypatch.chdir(cwd)
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def make_repo(root: Path, specs: Optional[Dict[str, str]] = None) -> Path:
    """A repository (`.git/` and `.claude/specs/`) with the given specs' tasks.md texts."""
    (root / ".git").mkdir(parents=True)
    (root / ".claude" / "specs").mkdir(parents=True)
    for name, text in (specs or {}).items():
        write(root / ".claude" / "specs" / name / "tasks.md", text)
    return root


def write(path: Path, text) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def every_feature_repo(root: Path) -> Path:
    repo = make_repo(root)
    shutil.copytree(str(EVERY_FEATURE), str(repo / ".claude" / "specs" / "every-feature"))
    return repo


def snapshot(root: Path) -> Dict[str, Tuple[bool, int, int]]:
    """Every path under `root` with (is a directory, size, mtime in ns)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(str(root)):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            found[os.path.relpath(path, str(root))] = (os.path.isdir(path), st.st_size,
                                                       st.st_mtime_ns)
    found["."] = (True, 0, os.lstat(str(root)).st_mtime_ns)
    return found


# --- qw plan on a spec that uses every format feature ------------------------------------

EVERY_FEATURE_BATCHES = [["1", "3.2", "4.1", "5"], ["2", "4.2"], ["3.1"]]
EVERY_FEATURE_REASONS = {
    "1": {}, "2": {"1": "_Depends: 1 (tasks.md:22)"}, "3.1": {"2": "_Depends: 2 (tasks.md:33)"},
    "3.2": {}, "4.1": {},
    "4.2": {"1": "mentions task 1", "3.2": "mentions task 3.2", "4.1": "mentions task 4.1"},
    "5": {},
}


def test_plan_json_of_every_feature(tmp_path):
    repo = every_feature_repo(tmp_path / "repo")
    done = qw("plan", "every-feature", "--json", cwd=repo)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    data = json.loads(done.stdout)
    assert set(data) == {"tasks", "groups", "batches", "critical_path"}
    assert [t["id"] for t in data["tasks"]] == ["1", "2", "3.1", "3.2", "4.1", "4.2", "5"]
    for task in data["tasks"]:
        assert set(task) == {"id", "title", "line", "deps", "reasons", "status"}
    tasks = {t["id"]: t for t in data["tasks"]}
    assert {i: t["deps"] for i, t in tasks.items()} == {
        i: list(reasons) for i, reasons in EVERY_FEATURE_REASONS.items()}
    assert {i: t["reasons"] for i, t in tasks.items()} == EVERY_FEATURE_REASONS
    assert tasks["2"]["title"] == "Build the order model" and tasks["2"]["line"] == 17
    assert {i: t["status"] for i, t in tasks.items()} == {
        "1": "done", "2": "in_progress", "3.1": "done", "3.2": "blocked", "4.1": "pending",
        "4.2": "done", "5": "pending"}
    assert data["batches"] == EVERY_FEATURE_BATCHES
    assert data["critical_path"] == ["1", "2", "3.1"]
    assert data["groups"] == {"3": ["3.1", "3.2"], "4": ["4.1", "4.2"]}


def batches_of(text: str) -> List[List[str]]:
    """The task ids under each `batch N:` heading of `qw plan`'s text output."""
    batches: List[List[str]] = []
    for line in text.splitlines():
        if re.match(r"batch \d+:$", line):
            batches.append([])
        elif batches and re.match(r"  \[.\] ", line):
            batches[-1].append(line[6:].split()[0])
    return batches


def test_plan_text_shows_batches_marks_groups_and_critical_path(tmp_path, monkeypatch, capsys):
    repo = every_feature_repo(tmp_path / "repo")
    code, out, err = run_main(monkeypatch, capsys, repo, "plan", "every-feature")
    assert (code, err) == (0, "")
    assert out.splitlines()[0] == "spec every-feature: 7 runnable tasks, 3 done, 3 batches"
    assert batches_of(out) == EVERY_FEATURE_BATCHES
    # Each checkbox as tasks.md has it, prerequisites, and why a blocked task waits.
    assert "  [x] 1  Create the shared types in src/types/order.ts\n" in out
    assert "  [-] 2  Build the order model  (after 1)\n" in out
    assert "  [~] 3.2  Add migrations  [blocked: waiting for the schema review]\n" in out
    assert "  [ ] 5  Write the changelog\n" in out
    assert "groups (done when all their subtasks are):\n  3: 3.1, 3.2\n  4: 4.1, 4.2\n" in out
    assert out.endswith("critical path: 1 -> 2 -> 3.1\n")
    assert "<-" not in out


def test_plan_explain_shows_every_edge_with_its_reason(tmp_path, monkeypatch, capsys):
    repo = every_feature_repo(tmp_path / "repo")
    code, out, _ = run_main(monkeypatch, capsys, repo, "plan", "every-feature", "--explain")
    assert code == 0
    reasons = re.findall(r"^  \[.\] (\S+).*\n((?:        <- .*\n)*)", out, re.MULTILINE)
    shown = {tid: re.findall(r"<- (\S+): (.*)", block) for tid, block in reasons}
    assert shown == {tid: list(r.items()) for tid, r in EVERY_FEATURE_REASONS.items()}


def test_plan_works_from_any_working_directory_with_the_spec_repository_config(tmp_path):
    repo = every_feature_repo(tmp_path / "repo")
    write(repo / "qw.toml", '[plan]\ndependencies = "sequential"\n')
    sequential = [["1"], ["2"], ["3.1"], ["3.2"], ["4.1"], ["4.2"], ["5"]]
    deep = repo / "src" / "deep"
    deep.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    spec_dir = repo / ".claude" / "specs" / "every-feature"
    ways = [
        (deep, ["plan", "every-feature"]),                           # a subdirectory
        (elsewhere, ["plan", "every-feature", "--repo", str(repo)]),
        (elsewhere, ["--repo", os.path.join("..", "repo"), "plan", "every-feature"]),
        (elsewhere, ["plan", str(spec_dir)]),                        # a spec folder...
        (deep, ["plan", os.path.join("..", "..", ".claude", "specs", "every-feature")]),
        (elsewhere, ["plan", str(spec_dir / "tasks.md")]),           # ...or its tasks file
        (spec_dir, ["plan", "tasks.md"]),
    ]
    for cwd, argv in ways:
        done = qw(*argv, "--json", cwd=cwd)
        assert done.returncode == 0, (cwd, argv, done.stderr)
        assert json.loads(done.stdout)["batches"] == sequential, (cwd, argv)


# --- malformed input: one line, exit 2, no traceback, nothing written --------------------

GOOD_TASKS = "- [ ] 1. First in a.py\n- [ ] 2. Second in b.py\n"


class Case:
    """One malformed input: the files of a repository, the command, and what stderr names."""

    def __init__(self, name: str, argv: List[str], expect: List[str],
                 files: Optional[Dict[str, object]] = None, env: Optional[Dict[str, str]] = None,
                 spec: object = GOOD_TASKS):
        self.name, self.argv, self.expect = name, argv, expect
        self.files = dict(files or {})
        if spec is not None:
            self.files.setdefault(".claude/specs/s/tasks.md", spec)
        self.env = env or {}

    def __repr__(self) -> str:
        return self.name


TASKS_PATH = ".claude/specs/s/tasks.md"
RENUMBER = "renumber"

MALFORMED = [
    # --- specs
    Case("duplicate ids", ["plan", "s"],
         ["duplicate task id 2", f"{TASKS_PATH}:2", f"{TASKS_PATH}:4", RENUMBER],
         spec="- [ ] 1. a\n- [ ] 2. b\n- [ ] 3. c\n- [ ] 2. d\n"),
    Case("the upstream template's reused numbers", ["plan", "s"],
         ["duplicate task id 4", f"{TASKS_PATH}:32", f"{TASKS_PATH}:72", "upstream", RENUMBER],
         spec=(FIXTURES / "specs" / "upstream-template" / "tasks.md").read_text(encoding="utf-8")),
    Case("dependency cycle", ["plan", "s"],
         ["dependency cycle 1 (tasks.md:1) -> 2 (tasks.md:3) -> 1", f"{TASKS_PATH}:1"],
         spec="- [ ] 1. a\n  - _Depends: 2_\n- [ ] 2. b\n  - _Depends: 1_\n"),
    Case("unknown _Depends target", ["plan", "s"], ["unknown task 7", f"{TASKS_PATH}:3"],
         spec="- [ ] 1. a in a.py\n- [ ] 2. b\n  - _Depends: 7_\n"),
    Case("_Depends on its own group", ["plan", "s"], ["a group that holds it", f"{TASKS_PATH}:3"],
         spec="- [ ] 1. group\n  - [ ] 1.1 a\n    - _Depends: 1_\n"),
    Case("unreadable tasks.md (a directory)", ["plan", "s"], ["it is a directory", TASKS_PATH],
         spec=None, files={".claude/specs/s/tasks.md/keep": ""}),
    Case("bad encoding", ["plan", "s"], ["not UTF-8", "0xff", f"{TASKS_PATH}:3"],
         spec=b"- [ ] 1. a\n  - detail\n  - caf\xff\n"),
    Case("bad encoding in requirements.md", ["plan", "s"],
         ["not UTF-8", ".claude/specs/s/requirements.md:2"],
         files={".claude/specs/s/requirements.md": b"# Requirements\n\xff\n"}),
    Case("empty tasks.md", ["plan", "s"], ["tasks file is empty", TASKS_PATH], spec=""),
    Case("no tasks", ["plan", "s"], ["no tasks found", TASKS_PATH],
         spec="# Tasks\n\nNothing to do yet.\n"),
    Case("spec folder without tasks.md", ["plan", "s"], ["no tasks file", TASKS_PATH],
         spec=None, files={".claude/specs/s/design.md": "# Design\n"}),
    Case("bad _Timeout", ["plan", "s"], ["bad _Timeout: 'soon'", f"{TASKS_PATH}:2", "20m"],
         spec="- [ ] 1. a\n  - _Timeout: soon_\n"),
    Case("two _Agent lines", ["plan", "s"], ["more than one _Agent", f"{TASKS_PATH}:3"],
         spec="- [ ] 1. a\n  - _Agent: x_\n  - _Agent: y_\n"),
    Case("unnumbered checkbox", ["plan", "s"], ["no task number", f"{TASKS_PATH}:2"],
         spec="- [ ] 1. a\n- [ ] b without a number\n"),
    # --- config
    Case("bad TOML", ["plan", "s"], ["invalid TOML", "qw.toml:2"],
         files={"qw.toml": "[run]\nmax_concurrent = = 3\n"}),
    Case("unknown section", ["plan", "s"], ["unknown section [rn]", "qw.toml:1", "[run]"],
         files={"qw.toml": "[rn]\nmax_concurrent = 3\n"}),
    Case("unknown key", ["plan", "s"], ["unknown key [run] max_concurency", "qw.toml:2",
                                        "max_concurrent"],
         files={"qw.toml": "[run]\nmax_concurency = 3\n"}),
    Case("unknown key in .claude/qw.toml", ["plan", "s"], [".claude/qw.toml:3", "bogus"],
         files={".claude/qw.toml": "# mine\n[claude]\nbogus = 1\n"}),
    Case("wrong type", ["plan", "s"], ["max_concurrent must be a whole number", "qw.toml:2"],
         files={"qw.toml": '[run]\nmax_concurrent = "eight"\n'}),
    Case("negative concurrency", ["plan", "s"], ["max_concurrent must be at least 1", "qw.toml:3"],
         files={"qw.toml": "[run]\n\nmax_concurrent = -2\n"}),
    Case("zero concurrency", ["plan", "s"], ["max_concurrent must be at least 1", "qw.toml:2"],
         files={"qw.toml": "[run]\nmax_concurrent = 0\n"}),
    Case("bad duration", ["plan", "s"], ["timeout must be a duration", "qw.toml:2", "30m"],
         files={"qw.toml": '[run]\ntimeout = "forever"\n'}),
    Case("bad enum", ["plan", "s"], ["permission_mode must be one of", "acceptEdits",
                                     "qw.toml:2"],
         files={"qw.toml": '[claude]\npermission_mode = "yolo"\n'}),
    Case("percent out of range", ["plan", "s"], ["cpu_limit_percent", "qw.toml:2"],
         files={"qw.toml": "[resources]\ncpu_limit_percent = 150\n"}),
    Case("unknown QW_RUN_* variable", ["plan", "s"], ["QW_RUN_TIMEOUTS", "QW_RUN_TIMEOUT"],
         env={"QW_RUN_TIMEOUTS": "5m"}),
    Case("bad environment value", ["plan", "s"], ["timeout must be a duration", "QW_RUN_TIMEOUT"],
         env={"QW_RUN_TIMEOUT": "soon"}),
    Case("bad QUANTUMWALA_* value", ["plan", "s"],
         ["max_concurrent", "QUANTUMWALA_MAX_CONCURRENT"], env={"QUANTUMWALA_MAX_CONCURRENT": "0"}),
    Case("missing --config file", ["plan", "s", "--config", "nope.toml"],
         ["config file not found", "--config nope.toml"]),
    # --- the command line
    Case("unknown spec", ["plan", "nope"], ["unknown spec 'nope'", "available: other, s"],
         files={".claude/specs/other/tasks.md": GOOD_TASKS}),
    Case("unknown spec in a repo without specs", ["plan", "nope"],
         ["unknown spec 'nope'", "qw init"], spec=None),
    Case("unknown command", ["pln", "s"], ["unknown command 'pln'", "did you mean plan?"]),
    Case("bad -j value", ["run", "s", "-j", "x"], ["max_concurrent must be a whole number",
                                                   "--jobs"]),
    Case("-j 0", ["run", "s", "-j", "0"], ["max_concurrent must be at least 1", "--jobs"]),
    Case("-j without a value", ["run", "s", "-j"], ["-j/--jobs needs a value", "qw run"]),
    Case("bad --timeout", ["run", "s", "--dry-run", "--timeout", "1 hour"],
         ["timeout must be a duration", "--timeout"]),
    Case("bad --idle-timeout", ["run", "s", "--dry-run", "--idle-timeout", "0"],
         ["idle_timeout must be at least", "--idle-timeout"]),
    Case("negative --retries", ["run", "s", "--retries", "-1"],
         ["max_retries must be at least 0", "--retries"]),
    Case("unknown flag", ["run", "s", "--bogus"], ["unknown option --bogus", "qw run",
                                                   "qw run --help"]),
    Case("misspelt flag", ["plan", "s", "--explian"], ["unknown option --explian",
                                                       "did you mean --explain?"]),
    Case("extra argument", ["plan", "s", "t"], ["unexpected argument 't'", "qw plan"]),
    Case("missing SPEC", ["plan"], ["missing SPEC", "qw plan --help"]),
    Case("bad --attempt", ["logs", "s", "1", "--attempt", "x"],
         ["--attempt must be a whole number", "qw logs"]),
    Case("--repo not a directory", ["plan", "s", "--repo", "no/such/dir"],
         ["not a directory: no/such/dir", "--repo"]),
    Case("--task naming an unknown id", ["run", "s", "--task", "9"],
         ["unknown task 9", "--task 9", TASKS_PATH]),
    Case("--task naming an unknown id (dry run)", ["run", "s", "--dry-run", "--task", "1",
                                                   "--task", "3.1"],
         ["unknown task 3.1", "--task 3.1"]),
]


def test_there_are_at_least_25_malformed_inputs():
    assert len(MALFORMED) >= 25
    assert len({c.name for c in MALFORMED}) == len(MALFORMED)


@pytest.mark.parametrize("case", MALFORMED, ids=repr)
def test_malformed_input_is_one_line_exit_2_and_writes_nothing(tmp_path, case):
    repo = make_repo(tmp_path / "repo")
    for rel, text in case.files.items():
        write(repo / rel, text)
    before = snapshot(tmp_path)
    # QW_CLAUDE: should a regression let a run through, it starts nothing real.
    done = qw(*case.argv, cwd=repo,
              env=clean_env(QW_CLAUDE=str(tmp_path / "no-claude"), **case.env))
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "Traceback" not in output
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("qw: error: ")
    for text in case.expect:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"
    assert done.stdout == ""
    assert snapshot(tmp_path) == before, "qw wrote something"
    assert not (repo / ".qw").exists()


def test_debug_shows_the_traceback(tmp_path):
    repo = make_repo(tmp_path / "repo", {"s": ""})
    for env, args in ((clean_env(QW_DEBUG="1"), ["plan", "s"]),
                      (clean_env(), ["plan", "s", "--debug"])):
        done = qw(*args, cwd=repo, env=env)
        assert done.returncode == 2
        assert "Traceback" in done.stderr
        assert done.stderr.splitlines()[-1].startswith("qw: error: tasks file is empty")


def test_validate_lists_every_problem(tmp_path):
    repo = make_repo(tmp_path / "repo", {"s": (
        "- [ ] 1. a in a.py\n"
        "  - _Agent: ghost_\n"
        "  - _Requirements: 9.9_\n"
        "- [ ] 2. b\n"
        "  - _Depends: 7_\n")})
    write(repo / ".claude" / "specs" / "s" / "requirements.md",
          "### Requirement 1: x\n\n1. WHEN a THEN b\n")
    write(repo / "qw.toml", "[run]\nbogus = 1\n")
    before = snapshot(tmp_path)
    done = qw("validate", "s", cwd=repo)
    assert done.returncode == 2
    assert "Traceback" not in done.stdout + done.stderr
    problems = [line for line in done.stderr.splitlines() if line.startswith("qw: error: ")]
    assert len(problems) == 4, done.stderr
    assert "unknown key [run] bogus, qw.toml:2" in problems[0]
    expected = [("unknown task 7", f"{TASKS_PATH}:5"),
                ("unknown agent 'ghost'", f"{TASKS_PATH}:1"),
                ("requirement 9.9", f"{TASKS_PATH}:1")]
    for (what, where), line in zip(expected, problems[1:]):
        assert what in line and where in line, line
    assert done.stderr.splitlines()[-1] == "4 problems found"
    assert snapshot(tmp_path) == before


def test_validate_names_a_verify_command_it_cannot_split(tmp_path):
    repo = make_repo(tmp_path / "repo", {"s": (
        "- [ ] 1. a\n"
        "  - _Verify: pytest -k 'unclosed_\n"
        "- [ ] 2. b\n")})
    write(repo / "qw.toml", "[run]\nverify = \"sh -c 'also unclosed\"\n")
    done = qw("validate", "s", cwd=repo)
    assert done.returncode == 2
    problems = [line for line in done.stderr.splitlines() if line.startswith("qw: error: ")]
    assert len(problems) == 2, done.stderr       # [run] verify once, not once per task
    assert "task 1: cannot split the verify command" in problems[0]
    assert f"{TASKS_PATH}:1" in problems[0] and "sh -c" in problems[0]
    assert "[run] verify" in problems[1]


def test_validate_reports_a_spec_error_and_a_config_error_together(tmp_path):
    repo = make_repo(tmp_path / "repo", {"s": "- [ ] 1. a\n- [ ] 1. b\n"})
    done = qw("validate", "s", cwd=repo, env=clean_env(QW_RUN_TIMEOUT="never"))
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert any("QW_RUN_TIMEOUT" in line for line in lines)
    assert any("duplicate task id 1" in line and f"{TASKS_PATH}:2" in line for line in lines)


def test_validate_checks_agents_and_passes_a_good_spec(tmp_path, monkeypatch, capsys):
    repo = every_feature_repo(tmp_path / "repo")
    code, out, err = run_main(monkeypatch, capsys, repo, "validate", "every-feature")
    # every-feature names agent typescript-pro, which this repository does not define.
    assert code == 2 and "unknown agent 'typescript-pro'" in err
    write(repo / ".claude" / "agents" / "typescript-pro.md",
          "---\nname: typescript-pro\ndescription: writes TypeScript\n---\nYou write TypeScript.\n")
    code, out, err = run_main(monkeypatch, capsys, repo, "validate", "every-feature")
    assert (code, err) == (0, "")
    assert out == ("ok: spec every-feature, 9 tasks, 7 runnable, 3 batches, "
                   "agents: typescript-pro\n")


# --- qw init, then the example spec --------------------------------------------------------

def test_init_writes_the_example_and_a_second_init_keeps_it(tmp_path):
    root = tmp_path / "fresh"
    root.mkdir()
    done = qw("init", cwd=root)
    assert done.returncode == 0, done.stderr
    assert (root / "qw.toml").read_bytes() == EXAMPLE_CONFIG.read_bytes()
    assert (root / ".gitignore").read_text(encoding="utf-8") == ".qw/\n"
    spec = root / ".claude" / "specs" / "example"
    assert sorted(p.name for p in spec.iterdir()) == ["design.md", "requirements.md", "tasks.md"]
    assert "wrote qw.toml" in done.stdout and "plan example" in done.stdout
    assert "python" in done.stdout and "-m qw" in done.stdout   # how this qw was started

    (spec / "tasks.md").write_text(GOOD_TASKS, encoding="utf-8")   # the user's edit
    before = snapshot(tmp_path)
    again = qw("init", cwd=root)
    assert again.returncode == 0, again.stderr
    assert snapshot(tmp_path) == before
    assert "kept  qw.toml" in again.stdout and "wrote" not in again.stdout


def test_init_appends_to_an_existing_gitignore_once(tmp_path, monkeypatch, capsys):
    write(tmp_path / ".gitignore", b"node_modules/\r\ncaf\xe9/")   # CRLF, Latin-1, no final EOL
    assert run_main(monkeypatch, capsys, tmp_path, "init")[0] == 0
    assert (tmp_path / ".gitignore").read_bytes() == b"node_modules/\r\ncaf\xe9/\r\n.qw/\r\n"
    other = tmp_path / "other"
    write(other / ".gitignore", "/.qw\n")
    assert run_main(monkeypatch, capsys, other, "init")[0] == 0
    assert (other / ".gitignore").read_text(encoding="utf-8") == "/.qw\n"


def test_init_force_overwrites_and_repo_names_the_folder(tmp_path, monkeypatch, capsys):
    target = tmp_path / "target"
    target.mkdir()
    write(target / "qw.toml", "[run]\n")
    code, out, _ = run_main(monkeypatch, capsys, tmp_path, "init", "--repo", str(target))
    assert code == 0 and "kept  qw.toml" in out
    assert (target / "qw.toml").read_text(encoding="utf-8") == "[run]\n"
    code, out, _ = run_main(monkeypatch, capsys, tmp_path, "init", "--repo", str(target),
                            "--force")
    assert code == 0 and "wrote qw.toml" in out
    assert (target / "qw.toml").read_bytes() == EXAMPLE_CONFIG.read_bytes()
    assert not (tmp_path / "qw.toml").exists()


def test_init_that_cannot_write_is_one_line_and_writes_nothing(tmp_path):
    # A file where init needs a folder: the file system refuses, as it would a read-only
    # folder (which root, running these tests in CI, could write anyway).
    write(tmp_path / ".claude", "not a folder")
    before = snapshot(tmp_path)
    done = qw("init", cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith("qw: error: ") and ".claude" in done.stderr
    assert snapshot(tmp_path) == before


@pytest.fixture
def example_repo(tmp_path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    assert qw("init", cwd=root).returncode == 0
    return root


def test_the_example_plans_validates_and_has_parallel_work(example_repo):
    plan = qw("plan", "example", "--json", cwd=example_repo)
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["batches"] == [["1"], ["2", "3"], ["4"]]
    validate = qw("validate", "example", cwd=example_repo)
    assert validate.returncode == 0, validate.stderr
    assert validate.stdout.startswith("ok: spec example, 4 tasks")


def test_dry_run_prints_commands_prompts_and_sizes_and_writes_nothing(example_repo):
    before = snapshot(example_repo)
    done = qw("run", "example", "--dry-run", cwd=example_repo)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith("spec example: would run 4 tasks at -j 8 (dry run: nothing started)\n")
    assert "batch 1: 1\nbatch 2: 2, 3\nbatch 3: 4\n" in out
    for task_id in ("1", "2", "3", "4"):
        assert f"===== task {task_id}: " in out
    commands = [line for line in out.splitlines() if line.startswith("$ ")]
    assert len(commands) == 4
    for line in commands:
        assert line.startswith("$ claude -p --output-format stream-json --verbose ")
        assert line.endswith(" < prompt")
        assert "--append-system-prompt 'You are running" in line   # quoted: copy-pastable
    assert out.count("## Your task") == 4
    assert "- [ ] 2. Implement greet in hello/greet.py" in out
    assert re.search(r"\nprompt size: median \d+ chars, max \d+ chars; "
                     r"all spec documents together: \d+ chars\n$", out)
    assert snapshot(example_repo) == before
    assert not (example_repo / ".qw").exists()


def test_dry_run_shows_the_verify_command_each_task_will_get(example_repo):
    write(example_repo / "qw.toml", "[run]\nverify = \"python -m pytest -q 'tests dir'\"\n")
    tasks = example_repo / ".claude" / "specs" / "example" / "tasks.md"
    text = tasks.read_text()
    # Task 2 turns it off; the other three get [run] verify.
    tasks.write_text(text.replace("\n- [ ] 3. ", "\n  - _Verify: none_\n- [ ] 3. ", 1))
    done = qw("run", "example", "--dry-run", cwd=example_repo)
    assert done.returncode == 0, done.stderr
    verifies = [line for line in done.stdout.splitlines() if line.startswith("then verify")]
    assert verifies == ["then verify: $ python -m pytest -q 'tests dir'"] * 3, done.stdout


def test_dry_run_json_and_task_selection(example_repo, monkeypatch, capsys):
    code, out, _ = run_main(monkeypatch, capsys, example_repo,
                            "run", "example", "--dry-run", "--json", "-j", "3", "--task", "2")
    assert code == 0
    data = json.loads(out)
    assert data["spec"] == "example" and data["max_concurrent"] == 3
    assert [t["id"] for t in data["tasks"]] == ["1", "2"]    # 2 and what it waits for
    assert data["batches"] == [["1"], ["2"]]
    first = data["tasks"][0]
    assert first["command"][:5] == ["claude", "-p", "--output-format", "stream-json", "--verbose"]
    assert first["prompt_chars"] == len(first["prompt"])
    assert set(data["prompt_sizes"]) == {"median", "max", "all_documents"}


# --- qw config -----------------------------------------------------------------------------

def config_rows(text: str) -> Dict[str, Tuple[str, str]]:
    """key -> (value, source) from `qw config`'s table."""
    rows = {}
    for line in text.splitlines()[1:]:
        key, rest = line.split(None, 1)
        value, source = rest.rsplit("  ", 1)
        rows[key] = (value.strip(), source.strip())
    return rows


def test_config_shows_every_key_with_its_default(tmp_path, monkeypatch, capsys):
    repo = make_repo(tmp_path / "repo")
    code, out, err = run_main(monkeypatch, capsys, repo, "config")
    assert (code, err) == (0, "")
    assert out.splitlines()[0].split() == ["key", "value", "from"]
    rows = config_rows(out)
    assert list(rows) == [k.dotted for k in KEYS]
    assert {source for _, source in rows.values()} == {"default"}
    assert rows["run.timeout"] == ('"30m"', "default")
    assert rows["run.max_concurrent"] == ("8", "default")


def test_config_sources_file_and_environment(tmp_path):
    repo = make_repo(tmp_path / "repo")
    write(repo / "qw.toml", '[run]\ntimeout = "5m"\nmax_concurrent = 3\n\n[claude]\n'
                            'allowed_tools = ["Read", "Edit"]\n')
    env = clean_env(QW_RUN_MAX_CONCURRENT="4", QW_CLAUDE="/opt/claude")
    done = qw("config", cwd=repo / ".claude", env=env)     # from a subdirectory, too
    assert done.returncode == 0, done.stderr
    rows = config_rows(done.stdout)
    assert rows["run.timeout"] == ('"5m"', "qw.toml:2")
    assert rows["run.max_concurrent"] == ("4", "env QW_RUN_MAX_CONCURRENT")
    assert rows["claude.command"] == ('"/opt/claude"', "env QW_CLAUDE")
    assert rows["claude.allowed_tools"] == ('["Read", "Edit"]', "qw.toml:6")
    assert rows["run.idle_timeout"] == ('"10m"', "default")

    as_json = qw("config", "--json", cwd=repo, env=env)
    data = json.loads(as_json.stdout)
    assert list(data) == [k.dotted for k in KEYS]
    assert data["run.timeout"] == {"value": "5m", "source": "qw.toml:2"}
    assert data["run.max_concurrent"] == {"value": 4, "source": "env QW_RUN_MAX_CONCURRENT"}
    assert data["claude.allowed_tools"] == {"value": ["Read", "Edit"], "source": "qw.toml:6"}


def test_config_reads_claude_qw_toml_and_config_flag(tmp_path, monkeypatch, capsys):
    repo = make_repo(tmp_path / "repo")
    write(repo / ".claude" / "qw.toml", "[run]\nmax_retries = 5\n")
    code, out, _ = run_main(monkeypatch, capsys, repo, "config", "--json")
    assert json.loads(out)["run.max_retries"] == {"value": 5, "source": ".claude/qw.toml:2"}
    write(repo / "other.toml", "\n[run]\nmax_retries = 1\n")
    code, out, _ = run_main(monkeypatch, capsys, repo, "config", "--json",
                            "--config", "other.toml")
    assert json.loads(out)["run.max_retries"] == {"value": 1, "source": "other.toml:3"}


# --- version, help, and the bare command ---------------------------------------------------

def test_version(tmp_path):
    done = qw("--version", cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"qw {__version__}\n", "")


def test_no_command_prints_help_and_exits_2(tmp_path):
    done = qw(cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout.startswith("usage: qw ")
    for name in ("run", "plan", "status", "logs", "validate", "init", "config", "doctor"):
        assert re.search(rf"^    {name} ", done.stdout, re.MULTILINE), name
    assert "exit codes:" in done.stdout


def test_command_help_exits_0(tmp_path, monkeypatch, capsys):
    done = qw("run", "--help", cwd=tmp_path)
    assert done.returncode == 0 and done.stderr == ""
    for flag in ("-j N", "--timeout D", "--idle-timeout D", "--retries N", "--task ID",
                 "--dry-run", "--json", "--config FILE", "--repo DIR"):
        assert flag in done.stdout, flag
    # In-process, help and --version return 0 rather than raising SystemExit.
    assert run_main(monkeypatch, capsys, tmp_path, "plan", "--help")[0] == 0
    assert run_main(monkeypatch, capsys, tmp_path, "--version")[0] == 0


def test_dry_run_refuses_an_unknown_agent_as_the_run_does(tmp_path):
    spec = tmp_path / ".claude" / "specs" / "s"
    spec.mkdir(parents=True)
    (spec / "tasks.md").write_text("- [ ] 1. Do it\n  - _Agent: ghost_\n")
    for args in (["run", "s", "--dry-run"], ["run", "s"]):
        done = subprocess.run([sys.executable, "-m", "qw", *args], cwd=tmp_path,
                              env=dict(os.environ, PYTHONPATH=str(ROOT),
                                       QW_CLAUDE=sys.executable),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=60)
        assert done.returncode == 2, done.stderr
        assert "unknown agent 'ghost'" in done.stderr and "tasks.md:1" in done.stderr
        assert not (tmp_path / ".qw").exists()
