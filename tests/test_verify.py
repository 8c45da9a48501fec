"""The verification gate (`[run] verify`, a task's `_Verify:`) and the "changed nothing" flag.

Pure pieces first (policy, prompt, command line, which command, pathspecs), then git's view
of a real tmp repository, then `qw run` as a user runs it: a real qw process, its pool, and
fake `claude` children (tests/fakeclaude.py) whose sessions `--resume` continues.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest

from qw.claude import StreamState, build_command
from qw.config import default_config
from qw.errors import ConfigError, SpecError
from qw.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from qw.outcome import VERIFY_ERROR, VERIFY_FAILED, Outcome, classify, session_not_found
from qw.plan import build_plan
from qw.policy import decide, run_exit_code
from qw.prompt import build_fix_prompt, build_prompt
from qw.scheduler import Scheduler
from qw.specdir import load_spec, resolve_spec
from qw.tasks import parse_tasks
from qw.treewatch import change_pathspecs, tree_fingerprint
from qw.worker import verify_argv

from runhelpers import QwRepo

RUN = SimpleNamespace(max_retries=2, retry_backoff=30.0, timeout_multiplier=2.0,
                      max_pause=3600.0, verify="pytest -q")
FAILED = Outcome(VERIFY_FAILED, "verify `pytest -q` failed (exit 1): 1 failed",
                 session_id="s-1", cost_usd=0.5)
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="process trees are checked through /proc")


# ----- policy, prompt, command line


def test_a_failed_verify_is_retried_after_a_backoff_then_gives_up():
    retry = decide(FAILED, 1, RUN, now=1000.0, rng=random.Random(1), timeout_s=60.0)
    assert retry.action == "retry"
    assert 1000.0 + 24.0 <= retry.not_before <= 1000.0 + 36.0   # 30s ±20%
    assert "verify `pytest -q` failed (exit 1)" in retry.reason
    final = decide(FAILED, 3, RUN, now=1000.0, rng=random.Random(1), timeout_s=60.0)
    assert final.action == "fail"
    assert final.reason == "gave up after 3 attempts: verify `pytest -q` failed (exit 1): " \
                           "1 failed"


def test_a_verify_that_cannot_start_is_not_retried():
    cannot = Outcome(VERIFY_ERROR, "verify `pytst` could not be started: pytst: not found")
    decision = decide(cannot, 1, RUN, now=0.0, rng=random.Random(1), timeout_s=60.0)
    assert decision.action == "fail"
    assert "[run] verify" in decision.reason and "sh -c" in decision.reason


def _classified(*lines, exit_code=1, stderr=""):
    state = StreamState()
    for line in lines:
        state.feed(line)
    return classify(state, exit_code, stderr_tail=stderr, now=0.0)


def test_a_session_that_cannot_be_resumed_is_recognised_in_both_forms_of_the_cli():
    gone = "No conversation found with session ID: 35814092-99b2-4a66"
    # Older CLIs: stderr only. Newer ones: an error_during_execution result as well,
    # without a `result` field, and "session ID or name" in some.
    only_stderr = _classified(stderr=gone + "\n")
    with_result = _classified(
        '{"type":"result","subtype":"error_during_execution","is_error":true,"num_turns":0,'
        '"session_id":"35814092-99b2-4a66","total_cost_usd":0,'
        '"errors":["No conversation found with session ID or name: 35814092-99b2-4a66"]}',
        stderr=gone)
    for outcome in (only_stderr, with_result):
        assert outcome.kind == "crashed" and session_not_found(outcome), outcome
    other = _classified(stderr="fake crash: something broke")
    assert other.kind == "crashed" and not session_not_found(other)
    assert not session_not_found(Outcome("ok", "No conversation found with session ID: x"))


def test_an_interrupt_that_came_after_the_last_attempt_still_exits_130():
    plan = build_plan(parse_tasks("- [ ] 1. A\n- [ ] 2. B\n"))
    sched = Scheduler(plan, ["1", "2"], (), SimpleNamespace(
        max_retries=0, retry_backoff=1.0, timeout=60.0, timeout_multiplier=2.0,
        max_pause=0.0, budget_usd=0.0), rng=random.Random(1))
    for tid in ("1", "2"):   # 2 needs 1
        assert [d.task_id for d in sched.dispatch(1.0, free_workers=2)] == [tid]
        sched.settle(tid, Outcome("ok", "done", num_turns=2), 1.0)
    assert sched.finished() and not sched.interrupted
    assert run_exit_code(sched) == EXIT_OK
    # The Ctrl-C landed with the last result, or while the pool stopped: the work stays
    # done, the exit code says the user interrupted.
    assert run_exit_code(sched, signalled=True) == EXIT_INTERRUPTED
    failed = Scheduler(plan, ["1"], (), sched.run, rng=random.Random(1))
    failed.dispatch(0.0, free_workers=1)
    failed.settle("1", Outcome("crashed", "boom"), 1.0)
    assert run_exit_code(failed) == EXIT_FAILED
    assert run_exit_code(failed, signalled=True) == EXIT_INTERRUPTED


def test_build_command_resumes_a_session():
    claude = default_config().claude
    argv = build_command(claude, resume_session="abc-123")
    assert argv[argv.index("--resume") + 1] == "abc-123"
    assert "--resume" not in build_command(claude)


@pytest.fixture
def spec(tmp_path):
    folder = tmp_path / ".claude" / "specs" / "s"
    folder.mkdir(parents=True)
    (folder / "tasks.md").write_text("- [ ] 1. Add the parser\n  - File: src/parse.py\n"
                                     "  - Parse the input\n")
    return load_spec(resolve_spec(str(tmp_path), "s"))


def test_the_fix_prompt_of_a_resumed_session_holds_the_failure(spec):
    task = spec.tasks["1"]
    output = "collected 3 items\nE   assert 1 == 2\n```\n1 failed, 2 passed\n"
    prompt = build_fix_prompt(spec, task, "pytest -q", 1, output, resumed=True)
    assert "    pytest -q\n" in prompt and "exited with code 1" in prompt
    assert "E   assert 1 == 2" in prompt and "1 failed, 2 passed" in prompt
    assert "fix" in prompt.lower()
    assert "Parse the input" not in prompt   # the resumed session knows the task
    assert "````\n" in prompt                # a fence the output's ``` cannot close
    assert ".claude/specs/s/tasks.md" in prompt


def test_the_fix_prompt_of_a_new_session_holds_the_task_too(spec):
    task = spec.tasks["1"]
    prompt = build_fix_prompt(spec, task, "make check", None, "", resumed=False)
    assert prompt.startswith(build_prompt(spec, task))
    assert "did not finish in time" in prompt and "(no output)" in prompt


# ----- which command, which files


def _task(text):
    return parse_tasks(text).tasks[0]


def test_the_task_verify_line_wins_over_run_verify():
    plain = _task("- [ ] 1. A\n")
    assert verify_argv(plain, RUN, "tasks.md") == (("pytest", "-q"), "pytest -q")
    own = _task("- [ ] 1. A\n  - _Verify: `sh -c 'make test && echo \"ok\"'`_\n")
    assert verify_argv(own, RUN, "tasks.md") == (
        ("sh", "-c", 'make test && echo "ok"'), "sh -c 'make test && echo \"ok\"'")
    for off in ("- _Verify: none_", "- _Verify: NONE", "- _Verify:"):
        assert verify_argv(_task(f"- [ ] 1. A\n  {off}\n"), RUN, "tasks.md") == ((), "")
    assert verify_argv(plain, SimpleNamespace(verify=""), "tasks.md") == ((), "")


def test_an_unclosed_quote_is_refused_where_it_was_written():
    with pytest.raises(SpecError) as raised:
        verify_argv(_task("- [ ] 1. A\n  - _Verify: sh -c 'oops_\n"), RUN, "t.md")
    assert "t.md:1" in str(raised.value) and "task 1" in str(raised.value)
    with pytest.raises(ConfigError) as raised:
        verify_argv(_task("- [ ] 1. A\n"), SimpleNamespace(verify='pytest "-q'), "t.md")
    assert "[run] verify" in str(raised.value)


def test_change_pathspecs():
    assert change_pathspecs(("src/a.py", "src/b.py"), (".qw",)) == ("src/a.py", "src/b.py")
    assert change_pathspecs((), (".qw", ".claude/specs/s/tasks.md", "../elsewhere.md")) == (
        ".", ":(exclude).qw", ":(exclude).claude/specs/s/tasks.md")


# ----- git's view of a real repository


def _git(root, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=str(root),
                   check=True, stdout=subprocess.DEVNULL, timeout=30)


def test_the_fingerprint_sees_writes_edits_deletes_and_commits(tmp_path):
    env = dict(os.environ)
    whole = change_pathspecs((), (".qw",))
    assert tree_fingerprint(str(tmp_path), whole, env) is None   # not a git work tree
    _git(tmp_path, "init", "-q")
    # qw's repository root may be a folder inside the work tree: pathspecs are relative
    # to it, git's paths in the output to the top of the work tree.
    root = tmp_path / "project"
    root.mkdir()
    kept = root / "kept.txt"
    kept.write_text("v1")
    _git(tmp_path, "add", "project/kept.txt")
    _git(tmp_path, "commit", "-qm", "one")

    def look(specs=whole):
        return tree_fingerprint(str(root), specs, env)

    start = look()
    assert start is not None and look() == start
    (root / ".qw").mkdir()
    (root / ".qw" / "transcript.jsonl").write_text("qw's own")
    (tmp_path / "outside.txt").write_text("not under qw's root")
    assert look() == start                       # neither is the task's work
    (root / "new.txt").write_text("new")
    untracked = look()
    assert untracked != start
    (root / "new.txt").write_text("newer!")      # an untracked file written again
    assert look() != untracked
    kept.write_text("v2")
    edited = look()
    assert edited != look(("new.txt",))
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "two")       # a clean tree again, but a new HEAD
    committed = look()
    assert committed != start and committed != edited
    kept.unlink()
    assert look() != committed


def test_the_fingerprint_of_declared_files_ignores_other_files(tmp_path):
    _git(tmp_path, "init", "-q")
    env = dict(os.environ)
    declared = change_pathspecs(("src/a.py",))
    before = tree_fingerprint(str(tmp_path), declared, env)
    (tmp_path / "other.txt").write_text("not declared")
    assert tree_fingerprint(str(tmp_path), declared, env) == before
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("x = 1\n")
    assert tree_fingerprint(str(tmp_path), declared, env) != before


# ----- qw run


@pytest.fixture
def repo(tmp_path):
    if not sys.platform.startswith("linux"):
        pytest.skip("process trees are checked through /proc")
    made = QwRepo(tmp_path)
    # The fake's own files and qw's output are not what a task changes.
    (tmp_path / ".gitignore").write_text("log.jsonl\nfake-state/\nqw-*\n.qw/\n")
    yield made
    made.check_no_leftovers()


def attempts_ended(repo, task):
    return [e for e in repo.journal() if e["type"] == "attempt_ended" and e["task"] == task]


def starts(repo, task):
    return [e for e in repo.events("start") if e["task"] == task]


CHECK_FIXED = ("`sh -c 'echo checking; test -f fixed.txt "
               "|| { echo \"boom: fixed.txt missing\" >&2; exit 3; }'`")


def test_a_failed_verify_resumes_the_session_which_fixes_it(repo):
    original = repo.write_tasks(f"""
- [ ] 1. Fix it on the second try
  - FAKE: log-prompt
  - FAKE@2: write fixed.txt yes
  - _Verify: {CHECK_FIXED}_
""")
    done = repo.run("run", "s")
    assert done.code == 0, done
    assert repo.tasks_md.read_bytes() == original.replace(b"- [ ] ", b"- [x] ")
    assert [e["outcome"] for e in attempts_ended(repo, "1")] == [VERIFY_FAILED, "ok"]
    first, second = attempts_ended(repo, "1")
    assert "failed (exit 3): boom: fixed.txt missing" in first["message"]
    assert re.search(r"retry 1 in [\d.]+s: verify_failed: verify `sh -c", done.out), done
    one, two = starts(repo, "1")
    assert "--resume" not in one["argv"]
    assert two["argv"][two["argv"].index("--resume") + 1] == first["session_id"]
    prompts = [e["text"] for e in repo.events("prompt")]
    assert "Verification failed" not in prompts[0]
    assert "boom: fixed.txt missing" in prompts[1] and "exited with code 3" in prompts[1]
    assert "checking" in prompts[1]              # stdout and stderr, both
    logs = repo.run("logs", "s", "1")
    assert logs.code == 0, logs
    assert "1.2.verify.log" in logs.out and "[exit 0]" in logs.out


def test_a_verify_that_keeps_failing_fails_the_task_with_its_output_in_logs(repo):
    repo.configure(run="max_retries = 1\n")
    repo.write_tasks("""
- [ ] 1. Never right
  - _Verify: `sh -c 'echo first line; echo "E   assert 1 == 2" >&2; exit 1'`_
- [ ] 2. Needs 1
  - _Depends: 1_
""")
    done = repo.run("run", "s")
    assert done.code == 1, done
    assert [e["outcome"] for e in attempts_ended(repo, "1")] == [VERIFY_FAILED] * 2
    assert re.search(r"FAIL  1 after .*gave up after 2 attempts: verify `sh -c .*` failed "
                     r"\(exit 1\): E assert 1 == 2", done.out), done
    assert "skip  2: needs 1" in done.out
    assert "- [ ] 1." in repo.tasks_md.read_text()
    status = {t["id"]: t for t in repo.status()["tasks"]}
    assert status["1"]["status"] == "failed"
    assert "verify `sh -c" in status["1"]["error"] and "failed (exit 1)" in status["1"]["error"]
    logs = repo.run("logs", "s", "1")
    assert logs.code == 0, logs
    transcript_at = logs.out.index("1.2.jsonl")
    verify_at = logs.out.index("1.2.verify.log")
    assert transcript_at < logs.out.index("[end] success") < verify_at
    assert "first line\nE   assert 1 == 2\n[exit 1]" in logs.out[verify_at:]


def test_a_passing_verify_marks_the_task_and_a_task_line_overrides_run_verify(repo):
    repo.configure(run="verify = \"sh -c 'echo run-level; exit 1'\"\n")
    repo.write_tasks("""
- [ ] 1. Own check passes
  - _Verify: `sh -c 'echo own check; exit 0'`_
  - _Depends: none_
- [ ] 2. No check at all
  - _Verify: none_
  - _Depends: none_
- [ ] 3. The run's check, failing
  - _Depends: none_
""")
    done = repo.run("run", "s", "-j", "2", "--retries", "0")
    assert done.code == 1, done
    text = repo.tasks_md.read_text()
    assert "- [x] 1." in text and "- [x] 2." in text and "- [ ] 3." in text
    runs = repo.root / ".qw" / "runs" / repo.runs()[-1]
    assert (runs / "1.1.verify.log").read_text() == \
        "$ sh -c 'echo own check; exit 0'\nown check\n[exit 0]\n"
    assert not (runs / "2.1.verify.log").exists()
    assert "run-level" in (runs / "3.1.verify.log").read_text()


def test_a_verify_command_not_found_fails_without_a_retry(repo):
    repo.write_tasks("""
- [ ] 1. Checked by a missing tool
  - _Verify: no-such-checker --all_
""")
    done = repo.run("run", "s")
    assert done.code == 1, done
    assert len(starts(repo, "1")) == 1
    [ended] = attempts_ended(repo, "1")
    assert ended["outcome"] == VERIFY_ERROR
    assert "could not be started: no-such-checker: not found on PATH" in ended["message"]
    assert "_Verify:" in done.out        # what to fix, in the failure line
    logs = repo.run("logs", "s", "1")
    assert "qw: cannot start no-such-checker" in logs.out


def test_a_hanging_verify_is_stopped_at_its_timeout_with_its_tree(repo):
    repo.configure(run='verify_timeout = "1s"\nmax_retries = 0\n')
    repo.write_tasks("""
- [ ] 1. Checked forever
  - _Verify: `sh -c 'sleep 600 & echo started; sleep 600'`_
""")
    done = repo.run("run", "s")
    assert done.code == 1, done
    [ended] = attempts_ended(repo, "1")
    assert ended["outcome"] == VERIFY_FAILED
    assert "timed out after 1s ([run] verify_timeout)" in ended["message"]
    log = (repo.root / ".qw" / "runs" / repo.runs()[-1] / "1.1.verify.log").read_text()
    assert "started\n" in log and "[stopped: still running after 1s]" in log
    # The fixture checks that neither sleep is left running.


def test_changed_nothing_is_flagged_per_declared_files(repo):
    repo.write_tasks("""
- [ ] 1. Writes its file
  - File: a.txt
  - FAKE: write a.txt hello
- [ ] 2. Writes nothing
  - File: b.txt
  - FAKE: sleep 0.3
""")
    done = repo.run("run", "s", "-j", "2")
    assert done.code == 0, done    # a note, not a failure
    ended = {e["task"]: e for e in repo.journal() if e["type"] == "attempt_ended"}
    assert "changed_nothing" not in ended["1"]
    assert ended["2"]["changed_nothing"] is True
    assert re.search(r"done  2 in .*\(changed nothing\)", done.out), done
    assert not re.search(r"done  1 in .*changed nothing", done.out), done
    status = repo.run("status", "s")
    row = next(line for line in status.out.splitlines() if line.startswith("2 "))
    assert "changed nothing" in row
    tasks = {t["id"]: t for t in repo.status()["tasks"]}
    assert tasks["2"].get("changed_nothing") is True and "changed_nothing" not in tasks["1"]


def test_changed_nothing_in_the_whole_tree_and_not_outside_git(repo):
    repo.write_tasks("""
- [ ] 1. Declares nothing, writes nothing
""")
    done = repo.run("run", "s")
    assert done.code == 0, done
    assert attempts_ended(repo, "1")[0].get("changed_nothing") is True
    # Without git there is nothing to compare: no flag.
    subprocess.run(["rm", "-rf", str(repo.root / ".git")], check=True, timeout=30)
    repo.write_tasks("""
- [ ] 1. Declares nothing, writes nothing
""")
    earlier = set(repo.runs())
    done = repo.run("run", "s")
    assert done.code == 0, done
    [second] = set(repo.runs()) - earlier   # run ids sort by second only
    ended = [e for e in repo.journal(second) if e["type"] == "attempt_ended"]
    assert "changed_nothing" not in ended[0]
    assert "changed nothing" not in done.out


def test_a_retry_that_failed_otherwise_still_resumes_the_session_to_fix_it(repo):
    # Attempt 2 resumes the failed verify's session, and is turned away (529): attempt 3
    # resumes the same session, with the same failure to fix.
    repo.write_tasks(f"""
- [ ] 1. Fixed on the third try
  - FAKE: log-prompt
  - FAKE@2: error 529
  - FAKE@3: write fixed.txt yes
  - _Verify: {CHECK_FIXED}_
""")
    done = repo.run("run", "s")
    assert done.code == 0, done
    assert [e["outcome"] for e in attempts_ended(repo, "1")] == \
        [VERIFY_FAILED, "overloaded", "ok"]
    session = attempts_ended(repo, "1")[0]["session_id"]
    one, two, three = starts(repo, "1")
    for resumed in (two, three):
        assert resumed["argv"][resumed["argv"].index("--resume") + 1] == session, resumed
    prompts = [e["text"] for e in repo.events("prompt")]
    assert "boom: fixed.txt missing" in prompts[2] and "Parse" not in prompts[2]


def test_a_session_that_cannot_be_resumed_is_fixed_in_a_new_one_told_the_failure(repo):
    repo.write_tasks(f"""
- [ ] 1. Its session is lost
  - FAKE: log-prompt
  - FAKE@1: forget-session
  - FAKE@3: write fixed.txt yes
  - _Verify: {CHECK_FIXED}_
""")
    done = repo.run("run", "s")
    assert done.code == 0, done
    first, second, third = attempts_ended(repo, "1")
    assert [first["outcome"], second["outcome"], third["outcome"]] == \
        [VERIFY_FAILED, "crashed", "ok"]
    assert "No conversation found" in second["message"]
    one, two, three = starts(repo, "1")
    assert "--resume" in two["argv"] and "--resume" not in three["argv"]
    # The new session is given the task and the failure: the full prompt.
    [prompt] = [e["text"] for e in repo.events("prompt") if e["attempt"] == "3"]
    assert "## Your task" in prompt and "Its session is lost" in prompt
    assert "Verification failed" in prompt and "boom: fixed.txt missing" in prompt


def test_a_verify_command_that_cannot_be_executed_fails_without_a_retry(repo):
    # Found and marked executable, but the kernel cannot run it: no #! line, or a #!
    # interpreter that does not exist. Another Claude session cannot fix that.
    for name, text in (("check.sh", "exit 0\n"), ("lost.sh", "#!/no/such/shell\nexit 0\n")):
        (repo.root / name).write_text(text)
        (repo.root / name).chmod(0o755)
    repo.write_tasks("""
- [ ] 1. Checked by a script without a #! line
  - _Verify: ./check.sh --all_
  - _Depends: none_
- [ ] 2. Checked by a script whose interpreter is missing
  - _Verify: ./lost.sh_
  - _Depends: none_
""")
    done = repo.run("run", "s", "-j", "2")
    assert done.code == 1, done
    for tid, name, why in (("1", "./check.sh", "Exec format error"),
                           ("2", "./lost.sh", "No such file or directory")):
        assert len(starts(repo, tid)) == 1, done
        [ended] = attempts_ended(repo, tid)
        assert ended["outcome"] == VERIFY_ERROR, ended
        assert f"could not be started: {name}: {why}" in ended["message"], ended
        log = (repo.root / ".qw" / "runs" / repo.runs()[-1] / f"{tid}.1.verify.log")
        text = log.read_text()
        assert f"qw: cannot start {name}: {why}" in text and "\0" not in text, text
    assert "_Verify:" in done.out
