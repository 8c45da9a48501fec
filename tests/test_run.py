"""`qw run` as a user runs it: a real qw process, its real spawn pool, the real guard, and
fake `claude` children (tests/fakeclaude.py) scripted by `FAKE:` lines in each task block.

Every test checks at the end that no process it started is left (runhelpers.QwRepo). A
representative subset also runs through qw.pyz on the oldest and newest Python installed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time

import pytest

from runhelpers import MODULE, alive, QwRepo, Qw, build_pyz, overlap, python_or_skip, wait_until

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="process trees are checked through /proc")


@pytest.fixture(scope="session")
def pyz(tmp_path_factory):
    return build_pyz(tmp_path_factory.mktemp("pyz") / "qw.pyz")


@pytest.fixture(params=["module", "pyz-3.9", "pyz-3.13"])
def qw(request):
    """How qw is started: `python -m qw` (this Python), or qw.pyz on Python 3.9 / 3.13."""
    if request.param == "module":
        return MODULE
    version = request.param.split("-")[1]
    executable = python_or_skip(version)
    return Qw(request.param, [executable, str(request.getfixturevalue("pyz"))])


@pytest.fixture
def repo(tmp_path, request):
    qw_way = request.getfixturevalue("qw") if "qw" in request.fixturenames else MODULE
    made = QwRepo(tmp_path, qw_way)
    yield made
    made.check_no_leftovers()


def starts(repo, task):
    return [e for e in repo.events("start") if e["task"] == task]


def ends(repo, task, outcome=None):
    return [e for e in repo.events("end") if e["task"] == task
            and (outcome is None or e["outcome"] == outcome)]


def attempts_ended(repo, task):
    return [e for e in repo.journal() if e["type"] == "attempt_ended" and e["task"] == task]


# ----- outcomes


def test_success_and_retry_check_tasks_md(repo, qw):
    original = repo.write_tasks("""
# Tasks

- [ ] 1. First
  - FAKE: sleep 0.2
- [ ] 2. Second, overloaded once
  - FAKE: fail-first 1 529
  - _Depends: 1_
- [ ] 3. Third
  - _Depends: none_
""")
    done = repo.run("run", "s", "-j", "2")
    assert done.code == 0, done
    assert re.search(r"retry 2 in [\d.]+s: overloaded: API error 529", done.out), done
    assert "3/3 done" in done.out
    assert [e["attempt"] for e in starts(repo, "2")] == ["1", "2"]
    assert len(ends(repo, "2", "ok")) == 1
    expected = original.replace(b"- [ ] ", b"- [x] ")
    assert repo.tasks_md.read_bytes() == expected
    assert [e["outcome"] for e in attempts_ended(repo, "2")] == ["overloaded", "ok"]


@pytest.mark.parametrize("status,kind", [(429, "rate_limited"), (500, "server_error"),
                                          (529, "overloaded")])
def test_api_errors_are_retried_then_succeed(repo, status, kind):
    repo.write_tasks(f"""
- [ ] 1. Flaky
  - FAKE: fail-first 2 {status}
""")
    done = repo.run("run", "s")
    assert done.code == 0, done
    assert [e["outcome"] for e in attempts_ended(repo, "1")] == [kind, kind, "ok"]
    assert repo.tasks_md.read_text().startswith("- [x] 1.")


def test_auth_error_stops_the_run_at_once(repo):
    repo.write_tasks("""
- [ ] 1. Bad key
  - FAKE: wait-file two-started
  - FAKE: error 401
  - _Depends: none_
- [ ] 2. Long task, cancelled by the stop
  - FAKE: wait-file never
  - _Depends: none_
- [ ] 3. Never started
  - _Depends: 1_
- [ ] 4. Never started either
  - _Depends: 2_
""")
    proc = repo.start("run", "s", "-j", "2")
    repo.wait_event(lambda e: e["event"] == "start" and e["task"] == "2", "task 2 to start")
    repo.release("two-started")
    done = repo.finish(proc, timeout=30)
    assert done.code == 1, done
    assert "ANTHROPIC_API_KEY" in done.out
    assert "API error 401" in done.out
    assert [e["task"] for e in repo.events("start")] in (["1", "2"], ["2", "1"])
    assert len(starts(repo, "1")) == 1   # an auth error is not retried
    assert repo.tasks_md.read_text().count("[x]") == 0
    ended = {e["task"]: e["outcome"] for e in repo.journal() if e["type"] == "attempt_ended"}
    assert ended == {"1": "auth", "2": "interrupted"}


def test_exhausted_retries_fail_the_task_and_skip_dependents(repo):
    repo.write_tasks("""
- [ ] 1. Always failing
  - FAKE: error 500
  - _Depends: none_
- [ ] 2. Needs 1
  - _Depends: 1_
- [ ] 3. Independent
  - _Depends: none_
""")
    done = repo.run("run", "s", "-j", "2", "--retries", "1")
    assert done.code == 1, done
    assert len(starts(repo, "1")) == 2
    assert starts(repo, "2") == []
    assert "skip  2: needs 1" in done.out
    assert re.search(r"FAIL  1 after .*gave up after 2 attempts: API error 500", done.out), done
    text = repo.tasks_md.read_text()
    assert "- [ ] 1." in text and "- [ ] 2." in text and "- [x] 3." in text
    assert "qw logs s TASK" in done.out


def test_crash_without_result_is_retried(repo):
    repo.write_tasks("""
- [ ] 1. Crashes once
  - FAKE@1: no-result
""")
    done = repo.run("run", "s")
    assert done.code == 0, done
    outcomes = attempts_ended(repo, "1")
    assert [e["outcome"] for e in outcomes] == ["crashed", "ok"]
    assert "fake crash: something broke" in outcomes[0]["message"]


def test_hang_is_stopped_by_the_idle_timeout_and_retried(repo, qw):
    repo.write_tasks("""
- [ ] 1. Hangs once
  - FAKE@1: hang
""")
    done = repo.run("run", "s", "--idle-timeout", "1")
    assert done.code == 0, done
    outcomes = attempts_ended(repo, "1")
    assert [e["outcome"] for e in outcomes] == ["hung", "ok"]
    assert "no output for 1s" in outcomes[0]["message"]
    assert repo.tasks_md.read_text().startswith("- [x] 1.")


def test_timeout_is_retried_with_a_longer_limit(repo):
    repo.write_tasks("""
- [ ] 1. Slow once
  - FAKE@1: sleep 30
""")
    done = repo.run("run", "s", "--timeout", "1")
    assert done.code == 0, done
    journal = repo.journal()
    limits = [e["timeout_s"] for e in journal if e["type"] == "attempt_started"]
    assert limits == [1.0, 2.0]   # timeout x [run] timeout_multiplier (2.0)
    assert [e["outcome"] for e in attempts_ended(repo, "1")] == ["timeout", "ok"]


def test_max_turns_fails_without_a_retry(repo):
    repo.write_tasks("""
- [ ] 1. Too long
  - FAKE: max-turns
""")
    done = repo.run("run", "s")
    assert done.code == 1, done
    assert len(starts(repo, "1")) == 1
    assert "max_turns" in done.out


def test_usage_limit_far_off_exits_75_with_the_reset_time(repo):
    repo.configure(run='max_pause = "1h"')
    repo.write_tasks("""
- [ ] 1. Limited
  - FAKE: first 1 usage-limit-epoch 7200
- [ ] 2. After it
""")
    done = repo.run("run", "s")
    assert done.code == 75, done
    reset = [e for e in repo.events("start")][0]["t"] + 7200
    when = time.strftime("%Y-%m-%dT%H:%M", time.localtime(reset))
    assert when in done.out, done
    assert "run again" in done.out
    assert starts(repo, "2") == []
    assert "[x]" not in repo.tasks_md.read_text()
    again = repo.run("run", "s")   # the limit is gone (the fake says so once)
    assert again.code == 0, again
    assert repo.tasks_md.read_text().count("[x]") == 2


def test_usage_limit_within_max_pause_pauses_the_run(repo):
    # The policy waits a minute past the stated reset: a reset 58 s ago means a pause of
    # about 2 s from now.
    repo.write_tasks("""
- [ ] 1. Limited once
  - FAKE: first 1 usage-limit-epoch -58
""")
    done = repo.run("run", "s", "--retries", "0")
    assert done.code == 0, done
    assert re.search(r"pause 1: .*pausing until", done.out), done
    first, second = starts(repo, "1")
    assert second["t"] - first["t"] > 1.0
    journal = repo.journal()
    assert [e["until"] is None for e in journal if e["type"] == "run_paused"] == [False, True]
    # A usage-limited attempt is not the task's fault: it is not counted against it.
    assert [e["attempt"] for e in journal if e["type"] == "attempt_started"] == [1, 1]


def test_budget_spent_stops_dispatching_with_75(repo):
    repo.configure(run="budget_usd = 0.015")
    repo.write_tasks("""
- [ ] 1. One
- [ ] 2. Two
- [ ] 3. Three
""")
    done = repo.run("run", "s", "-j", "1")
    assert done.code == 75, done
    assert "budget spent" in done.out
    assert len(repo.events("start")) == 2


def test_grandchildren_and_background_jobs_do_not_survive(repo):
    repo.write_tasks("""
- [ ] 1. Leaves strays behind
  - FAKE: grandchildren
""")
    done = repo.run("run", "s")
    assert done.code == 0, done
    strays = repo.events("grandchildren")[0]["pids"]
    assert len(strays) == 2
    wait_until(lambda: not any(alive(p) for p in strays), 15, f"strays {strays} to be gone")


def test_child_ignoring_sigint_and_sigterm_is_killed_on_timeout(repo):
    repo.write_tasks("""
- [ ] 1. Stubborn
  - FAKE: ignore-signals
""")
    done = repo.run("run", "s", "--timeout", "1", "--retries", "0")
    assert done.code == 1, done
    ended = attempts_ended(repo, "1")
    assert [e["outcome"] for e in ended] == ["timeout"]
    assert ended[0]["exit_code"] == 128 + signal.SIGKILL   # only SIGKILL ended it


def test_worker_killed_mid_task_is_replaced_and_the_task_retried(repo):
    repo.write_tasks("""
- [ ] 1. Its worker dies
  - FAKE@1: wait-file never
- [ ] 2. Runs on
""")
    proc = repo.start("run", "s", "-j", "2")
    first = repo.wait_event(lambda e: e["event"] == "start" and e["task"] == "1",
                            "task 1 to start")
    guard_pid, worker_pid = first["ppids"]
    os.kill(worker_pid, signal.SIGKILL)
    done = repo.finish(proc)
    assert done.code == 0, done
    assert re.search(r"worker \d died while running 1", done.out), done
    assert [e["attempt"] for e in starts(repo, "1")] == ["1", "2"]
    assert [e["outcome"] for e in attempts_ended(repo, "1")] == ["crashed", "ok"]
    assert repo.tasks_md.read_text().count("[x]") == 2


# ----- resume after qw itself is killed


def test_sigkill_of_qw_leaves_nothing_and_the_next_run_finishes(repo, qw):
    repo.write_tasks("""
- [ ] 1. Quick
  - _Depends: none_
- [ ] 2. Quick too
  - _Depends: none_
- [ ] 3. Held until released
  - FAKE: wait-file go
  - _Depends: 1, 2_
- [ ] 4. Held too
  - FAKE: wait-file go
  - _Depends: 1, 2_
- [ ] 5. After both
  - _Depends: 3, 4_
""")
    proc = repo.start("run", "s", "-j", "2")
    for task in ("3", "4"):
        repo.wait_event(lambda e, t=task: e["event"] == "start" and e["task"] == t,
                        f"task {task} to start")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    wait_until(lambda: not repo.leftovers(), 20, "every process of the killed run to exit",
               lambda: "\n".join(map(str, repo.leftovers())))
    assert "- [x] 1." in repo.tasks_md.read_text()
    status = repo.status()
    assert status["live"] is False
    by_id = {t["id"]: t for t in status["tasks"]}
    assert by_id["1"]["status"] == by_id["2"]["status"] == "done"
    assert by_id["3"]["status"] == by_id["4"]["status"] == "pending"

    repo.release("go")
    done = repo.run("run", "s", "-j", "2")
    assert done.code == 0, done
    assert "3 tasks of s" in done.out            # 1 and 2 are not run again
    ok = [e["task"] for e in repo.events("end") if e["outcome"] == "ok"]
    assert sorted(ok) == ["1", "2", "3", "4", "5"]   # each task succeeded exactly once
    assert repo.tasks_md.read_text().count("[x]") == 5


# ----- concurrency and order


def test_concurrency_stays_within_jobs_and_every_edge_is_respected(repo):
    repo.write_tasks("""
- [ ] 1. Root
  - FAKE: sleep 0.3
  - _Depends: none_
- [ ] 2. Root too
  - FAKE: sleep 0.2
  - _Depends: none_
- [ ] 3. Fan out a
  - FAKE: sleep 0.3
  - _Depends: 1_
- [ ] 4. Fan out b
  - FAKE: sleep 0.2
  - _Depends: 1_
- [ ] 5. Fan out c
  - FAKE: sleep 0.3
  - _Depends: 1_
- [ ] 6. Free
  - FAKE: sleep 0.4
  - _Depends: none_
- [ ] 7. Join
  - FAKE: sleep 0.2
  - _Depends: 3, 4, 5_
- [ ] 8. After 2
  - FAKE: sleep 0.3
  - _Depends: 2_
- [ ] 9. After 8 and 6
  - FAKE: sleep 0.2
  - _Depends: 8, 6_
- [ ] 10. Free too
  - FAKE: sleep 0.3
  - _Depends: none_
- [ ] 11. After 7
  - FAKE: sleep 0.1
  - _Depends: 7_
- [ ] 12. Last
  - _Depends: 9, 10, 11_
""")
    deps = {t["id"]: t["deps"] for t in repo.plan()["tasks"]}
    assert deps["7"] == ["3", "4", "5"] and deps["12"] == ["9", "10", "11"]
    done = repo.run("run", "s", "-j", "3")
    assert done.code == 0, done
    events = repo.events()
    assert overlap(events) <= 3
    assert overlap(events) >= 2                  # and the workers are actually used
    start = {e["task"]: e["t"] for e in events if e["event"] == "start"}
    end = {e["task"]: e["t"] for e in events if e["event"] == "end"}
    assert sorted(start, key=int) == [str(n) for n in range(1, 13)]
    for task, prerequisites in deps.items():
        for dep in prerequisites:
            assert end[dep] <= start[task], f"{task} started before {dep} ended"


# ----- tasks.md


def test_tasks_md_ends_with_exactly_the_succeeded_tasks_checked(repo):
    # CRLF, trailing spaces, no final newline; a child ticks a box itself (task 4's, a
    # task that fails), and groups: 5 completes, 6 does not.
    original = repo.write_tasks("""
# Tasks  \t
\t
- [ ] 1. Ticks task 4 itself, against the rules   
  - FAKE: edit-tasks 4
  - FAKE: sleep 0.2
  - _Depends: none_
- [ ] 2. Fine  
  - _Depends: 1_
- [ ] 4. Fails
  - FAKE: max-turns
  - _Depends: 1_
- [ ] 5. Group that completes
  - [ ] 5.1 One
    - _Depends: none_
  - [ ] 5.2 Two  
    - _Depends: none_
- [ ] 6. Group that does not
  - [ ] 6.1 Good
    - _Depends: none_
  - [ ] 6.2 Needs the failed task
    - _Depends: 4_
""", newline="\r\n", final_newline=False)
    done = repo.run("run", "s", "-j", "2")
    assert done.code == 1, done
    assert len(starts(repo, "4")) == 1          # it ran: its box was not read as done
    expected = original
    for task in (b"1.", b"2.", b"5.", b"5.1", b"5.2", b"6.1"):
        expected = expected.replace(b"- [ ] " + task + b" ", b"- [x] " + task + b" ", 1)
    assert repo.tasks_md.read_bytes() == expected


def test_mark_in_progress_shows_running_tasks_while_they_run(repo):
    repo.configure(spec="mark_in_progress = true")
    repo.write_tasks("""
- [ ] 1. First
  - FAKE: show-tasks
- [ ] 2. Second
  - FAKE: show-tasks
  - FAKE: max-turns
  - _Depends: 1_
""")
    done = repo.run("run", "s")
    assert done.code == 1, done
    seen = [e["text"] for e in repo.events("tasks-md")]
    assert "- [-] 1. First" in seen[0] and "- [ ] 2. Second" in seen[0]
    assert "- [x] 1. First" in seen[1] and "- [-] 2. Second" in seen[1]
    text = repo.tasks_md.read_text()
    assert "- [x] 1. First" in text and "- [ ] 2. Second" in text   # failed: unmarked again


# ----- one run per spec


def test_a_second_run_of_the_same_spec_exits_3_naming_the_holder(repo, qw):
    repo.write_tasks("""
- [ ] 1. Held
  - FAKE: wait-file go
""")
    first = repo.start("run", "s")
    repo.wait_event(lambda e: e["event"] == "start", "the first run's task to start")
    second = repo.run("run", "s")
    assert second.code == 3, second
    assert f"pid {first.pid} on {os.uname().nodename} since " in second.err, second
    assert "qw: error: spec s is being run by" in second.err
    assert len(repo.events("start")) == 1
    repo.release("go")
    done = repo.finish(first)
    assert done.code == 0, done


# ----- Ctrl-C and SIGTERM


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_interrupt_stops_the_children_and_the_next_run_completes(repo, how):
    repo.write_tasks("""
- [ ] 1. Quick
  - _Depends: none_
- [ ] 2. Held
  - FAKE: wait-file go
  - _Depends: none_
- [ ] 3. Held too
  - FAKE: wait-file go
  - _Depends: 1_
""")
    proc = repo.start("run", "s", "-j", "2")
    for task in ("2", "3"):
        repo.wait_event(lambda e, t=task: e["event"] == "start" and e["task"] == t,
                        f"task {task} to start")
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)   # a terminal signals the whole group
    else:
        os.kill(proc.pid, signal.SIGTERM)
    done = repo.finish(proc)
    assert done.code == 130, done
    assert "stopped 2" in done.out and "stopped 3" in done.out
    assert "qw run s` continues where this run stopped" in done.out
    wait_until(lambda: not repo.leftovers(), 15, "every process of the run to exit")
    assert repo.status()["run_status"] == "interrupted"
    text = repo.tasks_md.read_text()
    assert "- [x] 1." in text and "- [ ] 2." in text and "- [ ] 3." in text

    repo.release("go")
    again = repo.run("run", "s", "-j", "2")
    assert again.code == 0, again
    assert repo.tasks_md.read_text().count("[x]") == 3
    assert len(starts(repo, "1")) == 1


def test_a_second_ctrl_c_kills_at_once(repo):
    repo.write_tasks("""
- [ ] 1. Ignores SIGINT and SIGTERM
  - FAKE: ignore-signals
""")
    proc = repo.start("run", "s")
    repo.wait_event(lambda e: e["event"] == "hang", "the stubborn child to start")
    os.killpg(proc.pid, signal.SIGINT)
    repo.wait_output(proc, "press Ctrl-C again")
    second = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    done = repo.finish(proc)
    took = time.monotonic() - second
    assert done.code == 130, done
    assert "stopping at once" in done.out
    # Without the second Ctrl-C the child would get SIGTERM only after a 5 s grace and
    # SIGKILL 5 s later.
    assert took < 5.0, f"the second Ctrl-C took {took:.1f}s to end the run"


# ----- status, logs, --task, nothing to do


def test_status_is_live_during_a_run_and_from_the_snapshot_after(repo):
    repo.write_tasks("""
- [ ] 1. Held
  - FAKE: wait-file go
- [ ] 2. After it
""")
    proc = repo.start("run", "s")
    repo.wait_event(lambda e: e["event"] == "start", "task 1 to start")
    live = repo.status()
    assert live["live"] is True
    assert [(t["id"], t["status"]) for t in live["tasks"]] == [("1", "running"), ("2", "pending")]
    repo.release("go")
    assert repo.finish(proc).code == 0
    after = repo.status()
    assert after["live"] is False
    assert [(t["id"], t["status"], t["attempts"]) for t in after["tasks"]] == \
        [("1", "done", 1), ("2", "done", 1)]
    assert after["totals"]["cost_usd"] == pytest.approx(0.02)


def test_logs_prints_a_transcript_and_follows_a_running_task(repo):
    repo.write_tasks("""
- [ ] 1. Writes something
  - FAKE: write out.txt hello
  - FAKE: wait-file go
""")
    proc = repo.start("run", "s")
    repo.wait_event(lambda e: e["event"] == "start", "task 1 to start")
    wait_until(lambda: list((repo.root / ".qw" / "runs").glob("*/1.1.jsonl")), 15,
               "the transcript to appear")
    follow = repo.start("logs", "s", "1", "--follow")
    repo.wait_output(follow, "[tool] Write")
    assert follow.poll() is None                 # still following
    repo.release("go")
    followed = repo.finish(follow, timeout=30)
    assert followed.code == 0, followed
    assert "[end] success is_error=False" in followed.out
    assert repo.finish(proc).code == 0
    logs = repo.run("logs", "s", "1")
    assert logs.code == 0, logs
    assert "[init] model fake-model" in logs.out and "[tool] Write" in logs.out
    assert "[end] success" in logs.out


def test_task_option_runs_a_task_and_its_unfinished_prerequisites(repo):
    repo.write_tasks("""
- [x] 1. Already done
- [ ] 2. Needed by 3
  - _Depends: 1_
- [ ] 3. Asked for
  - _Depends: 2_
- [ ] 4. Not asked for
  - _Depends: none_
""")
    unknown = repo.run("run", "s", "--task", "9")
    assert unknown.code == 2, unknown
    assert "unknown task 9" in unknown.err
    done = repo.run("run", "s", "--task", "3")
    assert done.code == 0, done
    assert "also runs unfinished prerequisites: 2" in done.out
    assert sorted(e["task"] for e in repo.events("start")) == ["2", "3"]
    text = repo.tasks_md.read_text()
    assert "- [x] 3." in text and "- [ ] 4." in text


def test_blocked_tasks_and_what_needs_them_are_not_run_unless_named(repo):
    repo.write_tasks("""
- [~] 1. Waiting on the vendor
  - _Blocked: no API key yet_
- [ ] 2. Needs 1
  - _Depends: 1_
- [ ] 3. Free
  - _Depends: none_
""")
    done = repo.run("run", "s")
    assert done.code == 0, done
    assert "1 ([~] blocked: no API key yet)" in done.out and "2 (needs blocked task 1)" in done.out
    assert [e["task"] for e in repo.events("start")] == ["3"]
    still = repo.run("run", "s", "--task", "2")      # its blocked prerequisite stays parked
    assert still.code == 0 and "needs blocked task 1" in still.out, still
    named = repo.run("run", "s", "--task", "1")      # naming it is asking for it
    assert named.code == 0, named
    assert repo.run("run", "s").code == 0            # 1 is done now: 2 can go
    assert sorted(e["task"] for e in repo.events("start")) == ["1", "2", "3"]


def test_a_run_with_everything_done_has_nothing_to_do(repo):
    repo.write_tasks("""
- [ ] 1. Only
""")
    assert repo.run("run", "s").code == 0
    again = repo.run("run", "s")
    assert again.code == 0, again
    assert "nothing to do" in again.out
    assert len(repo.events("start")) == 1


# ----- output


def test_json_output_is_one_document_on_stdout(repo):
    repo.write_tasks("""
- [ ] 1. One
- [ ] 2. Two
  - FAKE: max-turns
""")
    done = repo.run("run", "s", "--json")
    assert done.code == 1, done
    view = json.loads(done.out)
    assert view["exit_code"] == 1 and view["spec"] == "s"
    assert [(t["id"], t["status"]) for t in view["tasks"]] == [("1", "done"), ("2", "failed")]
    assert "start 1 on worker" in done.err     # events go to stderr


def test_a_terminal_gets_a_live_status_line(repo):
    import pty
    import select

    repo.write_tasks("""
- [ ] 1. Takes a moment
  - FAKE: sleep 1.5
""")
    master, slave = pty.openpty()
    proc = repo.start_on_tty("run", "s", tty=slave)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:   # EIO: every writer closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    assert repo.finish(proc).code == 0
    screen = b"".join(chunks).decode("utf-8", "replace")
    assert "\r\x1b[2Kqw s: 0 done, 1 running, 0 failed, 0 queued" in screen, screen
    assert "1/1 done" in screen


def test_a_run_started_right_after_a_killed_one_sweeps_its_leftovers(repo):
    repo.write_tasks("""
- [ ] 1. Ignores SIGINT and SIGTERM the first time
  - FAKE: first 1 ignore-signals
""")
    proc = repo.start("run", "s")
    stubborn = repo.wait_event(lambda e: e["event"] == "hang", "the stubborn child to start")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    # Its guard now gives the child 5 s after SIGINT and 5 s after SIGTERM: the next run
    # does not wait for that, nor runs the task beside it.
    done = repo.run("run", "s")
    assert done.code == 0, done
    assert re.search(r"killed \d+ process(es)? left by the previous run", done.out), done
    assert not alive(stubborn["pid"])
    assert repo.tasks_md.read_text().startswith("- [x] 1.")


# ----- resources: admission and measurement

# [resources] no machine can meet: every task waits, yet one at a time they all run.
HOPELESS = ("cpu_limit_percent = 1\nmemory_limit_percent = 1\n"
            "memory_reserve_mb = 1000000000\nper_task_memory_mb = 1000000000\n")


def test_an_attempts_peak_memory_and_cpu_time_are_measured(repo):
    # The tree measured is the guard's: the guard and the fake's interpreter add 20-30 MB
    # to the 300 MB the child holds (about 10%), well inside the 20% allowed.
    repo.write_tasks("""
- [ ] 1. Holds 300 MB for a second
  - FAKE: alloc 300
""")
    done = repo.run("run", "s")
    assert done.code == 0, done
    (task,) = repo.status()["tasks"]
    assert 300 * 0.8 <= task["peak_rss_mb"] <= 300 * 1.2, task
    assert task["cpu_s"] > 0
    (ended,) = attempts_ended(repo, "1")
    assert (ended["peak_rss_mb"], ended["cpu_s"]) == (task["peak_rss_mb"], task["cpu_s"])
    assert re.search(r"done  1 in [\d.]+s, \$0\.0100, peak \d+ MB", done.out), done
    assert "peak MB" in done.out and f"peak {task['peak_rss_mb']:.0f} MB" in done.out


def test_limits_no_machine_meets_run_tasks_one_at_a_time_and_say_why(repo):
    repo.configure(resources="cpu_limit_percent = 100\nmemory_limit_percent = 100\n"
                             "memory_reserve_mb = 1000000000\nper_task_memory_mb = 0\n")
    repo.write_tasks("""
- [ ] 1. One
  - FAKE: sleep 0.3
  - _Depends: none_
- [ ] 2. Two
  - FAKE: sleep 0.3
  - _Depends: none_
- [ ] 3. Three
  - FAKE: sleep 0.3
  - _Depends: none_
""")
    done = repo.run("run", "s", "-j", "3")
    assert done.code == 0, done
    assert "3/3 done" in done.out
    assert overlap(repo.events()) == 1
    # One line when tasks first wait, not one per look at the machine.
    waits = [line for line in done.out.splitlines() if " wait  " in line]
    assert len(waits) == 1, done
    assert re.search(r"wait  2, 3: waiting for memory: \d+ MB available .*- 1000000000 MB "
                     r"reserve < 0 MB estimate", waits[0]), waits
    recorded = [e for e in repo.journal() if e["type"] == "task_waiting"]
    assert {e["task"] for e in recorded} == {"2", "3"}
    assert all(t["status"] == "done" and "waiting" not in t for t in repo.status()["tasks"])


def test_status_shows_why_a_ready_task_waits_while_the_run_is_live(repo):
    repo.configure(resources=HOPELESS)
    repo.write_tasks("""
- [ ] 1. Held
  - FAKE: wait-file go
  - _Depends: none_
- [ ] 2. Free, but the machine is not
  - _Depends: none_
""")
    proc = repo.start("run", "s", "-j", "2")
    repo.wait_event(lambda e: e["event"] == "start", "task 1 to start")
    live = {t["id"]: t for t in repo.status()["tasks"]}
    assert (live["1"]["status"], live["2"]["status"]) == ("running", "ready"), live
    assert live["2"]["waiting"].startswith("waiting for "), live["2"]
    table = repo.run("status", "s")
    assert re.search(r"^2 +ready .*waiting for ", table.out, re.M), table
    repo.release("go")
    done = repo.finish(proc)
    assert done.code == 0, done
    assert re.search(r"wait  2: waiting for ", done.out), done
    assert overlap(repo.events()) == 1


def test_memory_learned_in_one_run_sizes_tasks_in_the_next(repo):
    repo.write_tasks("""
- [ ] 1. Measured
  - FAKE: alloc 300
""")
    assert repo.run("run", "s").code == 0
    (learned,) = repo.status()["memory_peaks"][""]
    assert learned >= 240
    # Unmeasured, a task would count 10^9 MB and wait for memory while another runs; the
    # ~300 MB learned above fits, so task 3 starts while task 2 is still running.
    repo.configure(resources="per_task_memory_mb = 1000000000\nmemory_reserve_mb = 0\n"
                             "cpu_limit_percent = 100\nmemory_limit_percent = 100\n")
    repo.write_tasks("""
- [x] 1. Measured
- [ ] 2. Held
  - FAKE: wait-file go
  - _Depends: none_
- [ ] 3. Beside it
  - _Depends: none_
""")
    proc = repo.start("run", "s", "-j", "2")
    repo.wait_event(lambda e: e["event"] == "end" and e["task"] == "3",
                    "task 3 to run beside task 2")
    repo.release("go")
    done = repo.finish(proc)
    assert done.code == 0, done
    assert "waiting for" not in done.out
    assert len(repo.status()["memory_peaks"][""]) == 3    # both runs' measurements


def test_debug_writes_a_json_log_with_ids_and_every_run_leaves_a_report(repo):
    repo.write_tasks("""
- [ ] 1. One
  - FAKE: fail-first 1 529
- [ ] 2. Two
  - _Depends: 1_
""")
    done = repo.run("run", "s", "--debug")
    assert done.code == 0, done
    (run_id,) = repo.runs()
    run_dir = repo.root / ".qw" / "runs" / run_id
    lines = [json.loads(line) for line in (run_dir / "debug.jsonl").read_text().splitlines()]
    assert lines and all(line["run_id"] == run_id for line in lines)
    attempts = [line for line in lines if line["msg"] in ("attempt_started", "attempt_ended")]
    assert {(line["task_id"], line["attempt"]) for line in attempts} == {("1", 1), ("1", 2),
                                                                          ("2", 1)}
    report = (run_dir / "report.html").read_text()
    assert "<svg" in report and "One" in report and "Two" in report
    # Without --debug there is no debug log, but still a report.
    repo.write_tasks("- [ ] 1. Again\n")
    assert repo.run("run", "s").code == 0
    latest = repo.root / ".qw" / "runs" / repo.runs()[-1]
    assert (latest / "report.html").exists() and not (latest / "debug.jsonl").exists()
