#!/usr/bin/env python3
"""A stand-in for `claude -p --output-format stream-json --verbose`, for the pool tests.

It reads the prompt from stdin, as the real CLI does, and behaves as the task block asks
through lines `FAKE: <directive>` (the prompt carries the task's whole block):

    FAKE: sleep 0.3            work for 0.3 s before answering (default 0)
    FAKE: wait-file NAME       emit nothing until $FAKE_CLAUDE_STATE/NAME exists (at most
                               120 s, then crash): lets a test hold a task mid-flight
    FAKE: write PATH TEXT      create PATH (relative to the cwd) holding TEXT
    FAKE: error 529            end like an API error (401, 429, 500, 529 ...)
    FAKE: fail-first 2 529     the first 2 attempts of this task fail with 529, then succeed
    FAKE: first 1 hang         the directive after `first N` only in the task's first N starts
                               (counted across runs, like fail-first)
    FAKE: no-result            exit 1 without a result line (a crash)
    FAKE: hang                 print init, then nothing, forever
    FAKE: grandchildren        start a setsid'd grandchild and a background job, then succeed
    FAKE: ignore-signals       ignore SIGINT and SIGTERM, then hang
    FAKE: edit-tasks ID        tick task ID's box in tasks.md itself (children must not)
    FAKE: usage-limit          end with a subscription usage-limit result
    FAKE: usage-limit-epoch S  end with `Claude AI usage limit reached|<now + S>`
    FAKE: show-tasks           copy $FAKE_TASKS_MD's current text into the log
    FAKE: max-turns            end with error_max_turns
    FAKE: alloc 300 1.5        allocate 300 MB, touching every page (so all of it is
                               resident), and hold it for 1.5 s (default 1) before going on
    FAKE: log-prompt           log this start's prompt (an event "prompt", field "text")

`FAKE@N: <directive>` applies only to attempt N (QW_ATTEMPT) of the task.

Sessions: each start without `--resume` opens a new session (its id in every event) and
keeps its prompt in $FAKE_CLAUDE_STATE/session-<id>.txt. `--resume ID` continues it as the
real CLI does: the directives of every earlier prompt of the session apply again, along
with the new prompt's (a resumed prompt need not repeat the task); an unknown ID fails
like the CLI ("No conversation found with session ID: ...", exit 1, no result).

Every start and end is appended to $FAKE_CLAUDE_LOG as a JSON line (task, attempt, pid, t;
a start also has `ppids`, the parent chain: guard, then worker) so tests can check
concurrency and order; $FAKE_CLAUDE_STATE holds fail-first counters and wait-file files.
Grandchildren print their pids to $FAKE_CLAUDE_LOG too, so tests can check they are gone.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def log(event, **fields):
    path = os.environ.get("FAKE_CLAUDE_LOG")
    if not path:
        return
    record = {"event": event, "task": os.environ.get("QW_TASK_ID"),
              "attempt": os.environ.get("QW_ATTEMPT"), "pid": os.getpid(), "t": time.time()}
    record.update(fields)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def directives(prompt):
    out = []
    attempt = os.environ.get("QW_ATTEMPT")
    for line in prompt.splitlines():
        line = line.strip().lstrip("-* ").strip()
        found = re.match(r"FAKE(?:@(\d+))?:(.*)", line)
        if found and (found.group(1) is None or found.group(1) == attempt):
            words = found.group(2).split()
            if words:
                out.append(words)
    return out


def parent_chain(pid, depth=2):
    """The pids of `pid`'s parent, grandparent... (Linux /proc; [] elsewhere)."""
    chain = []
    for _ in range(depth):
        try:
            with open("/proc/%d/stat" % pid, "rb") as f:
                stat = f.read()
        except OSError:
            break
        pid = int(stat[stat.rfind(b")") + 2:].split()[1])
        chain.append(pid)
    return chain


SESSION = {"id": "fake-session"}   # this start's session, once main() has opened it


def open_session(prompt):
    """The prompt whose directives apply: the session's earlier prompts (with --resume)
    and this one; None when the session to resume is unknown."""
    state = os.environ.get("FAKE_CLAUDE_STATE")
    if "--resume" in sys.argv:
        SESSION["id"] = sys.argv[sys.argv.index("--resume") + 1]
    else:
        SESSION["id"] = "fake-%s-%s-%d" % (os.environ.get("QW_TASK_ID"),
                                           os.environ.get("QW_ATTEMPT"), os.getpid())
    if not state:
        return prompt
    path = os.path.join(state, "session-%s.txt" % SESSION["id"])
    if "--resume" in sys.argv:
        if not os.path.exists(path):
            return None
        prompt = open(path, encoding="utf-8").read() + "\n" + prompt
    with open(path, "w", encoding="utf-8") as f:
        f.write(prompt)
    return prompt


def result(is_error=False, subtype="success", text="Done.", status=None, turns=2, cost=0.01):
    event = {"type": "result", "subtype": subtype, "is_error": is_error,
             "api_error_status": status, "duration_ms": 10, "num_turns": turns,
             "session_id": SESSION["id"], "total_cost_usd": cost,
             "usage": {"input_tokens": 1000 * turns, "output_tokens": 30 * turns},
             "permission_denials": [], "terminal_reason": "completed"}
    if subtype == "success":
        event["result"] = text
    else:
        event["errors"] = [text]
    return event


API_TEXT = {401: "Invalid API key · Please run /login", 429: "API Error: Request rejected (429)",
            500: "API Error: 500 Internal server error", 529: "API Error: 529 Overloaded"}


def api_error(status):
    emit({"type": "assistant", "message": {"model": "<synthetic>", "content": [
        {"type": "text", "text": API_TEXT.get(status, f"API Error: {status}")}]},
        "error": "server_error"})
    emit(result(True, text=API_TEXT.get(status, f"API Error: {status}"), status=status,
                turns=1, cost=0))
    log("end", outcome=f"error {status}")
    sys.exit(1)


def fail_count(n, counter="fail"):
    """True while this task has counted fewer than n (across attempts and runs); counts."""
    state = os.environ.get("FAKE_CLAUDE_STATE")
    key = os.path.join(state, counter + "-" + (os.environ.get("QW_TASK_ID") or "x"))
    done = int(open(key).read()) if os.path.exists(key) else 0
    if done < n:
        with open(key, "w") as f:
            f.write(str(done + 1))
        return True
    return False


def main():
    if "--version" in sys.argv:
        print("2.1.197 (Claude Code)")
        return 0
    prompt = sys.stdin.read()
    log("start", argv=sys.argv[1:], prompt_chars=len(prompt), ppids=parent_chain(os.getpid()))
    session_prompt = open_session(prompt)
    if session_prompt is None:
        sys.stderr.write("No conversation found with session ID: %s\n" % SESSION["id"])
        log("end", outcome="no-session")
        return 1
    emit({"type": "system", "subtype": "init", "cwd": os.getcwd(), "session_id": SESSION["id"],
          "tools": ["Write", "Bash"], "model": "fake-model", "permissionMode": "acceptEdits",
          "claude_code_version": "2.1.197"})
    for words in directives(session_prompt):
        verb, args = words[0], words[1:]
        if verb == "first":
            if not fail_count(int(args[0]), "first"):
                continue
            verb, args = args[1], args[2:]
        if verb == "sleep":
            time.sleep(float(args[0]))
        elif verb == "write":
            with open(args[0], "w") as f:
                f.write(" ".join(args[1:]))
            emit({"type": "assistant", "message": {"content": [
                {"type": "tool_use", "id": "toolu_1", "name": "Write",
                 "input": {"file_path": os.path.abspath(args[0])}}]}})
        elif verb == "error":
            api_error(int(args[0]))
        elif verb == "fail-first":
            if fail_count(int(args[0])):
                api_error(int(args[1]))
        elif verb == "no-result":
            sys.stderr.write("fake crash: something broke\n")
            log("end", outcome="no-result")
            return 1
        elif verb == "hang":
            log("hang")
            while True:
                time.sleep(3600)
        elif verb == "grandchildren":
            # Like Claude's Bash tool: a shell in its own session, and a background job
            # that outlives the command. Both must be killed by qw.
            code = "import time; time.sleep(600)"
            g = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
            b = subprocess.Popen(["sh", "-c", f"'{sys.executable}' -c '{code}' & echo $!"],
                                 stdout=subprocess.PIPE)
            bg_pid = int(b.stdout.readline().strip())   # the job keeps the pipe open
            b.wait()
            log("grandchildren", pids=[g.pid, bg_pid])
        elif verb == "ignore-signals":
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            log("hang")
            while True:
                time.sleep(3600)
        elif verb == "edit-tasks":
            path = os.path.join(os.environ["FAKE_TASKS_MD"])
            text = open(path, encoding="utf-8", newline="").read()
            text = re.sub(r"- \[.\] %s([. ])" % re.escape(args[0]), r"- [x] %s\1" % args[0],
                          text, count=1)
            with open(path, "w", encoding="utf-8", newline="") as f:
                f.write(text)
        elif verb == "wait-file":
            path = os.path.join(os.environ["FAKE_CLAUDE_STATE"], args[0])
            deadline = time.time() + 120
            while not os.path.exists(path):
                if time.time() > deadline:
                    log("end", outcome="wait-file timed out")
                    return 1
                time.sleep(0.05)
        elif verb == "show-tasks":
            with open(os.environ["FAKE_TASKS_MD"], encoding="utf-8", newline="") as f:
                log("tasks-md", text=f.read())
        elif verb == "usage-limit-epoch":
            at = int(time.time() + float(args[0]))
            emit(result(True, text=f"Claude AI usage limit reached|{at}", turns=1, cost=0))
            log("end", outcome="usage-limit")
            return 1
        elif verb == "usage-limit":
            emit(result(True, text="You've hit your session limit · resets 12:50am "
                        "(America/Los_Angeles)", turns=1, cost=0))
            log("end", outcome="usage-limit")
            return 1
        elif verb == "alloc":
            held = b"\x01" * (int(args[0]) * 1024 * 1024)   # written: all of it resident
            log("alloc", mb=len(held) >> 20)
            time.sleep(float(args[1]) if len(args) > 1 else 1.0)
            del held
        elif verb == "log-prompt":
            log("prompt", text=prompt)
        elif verb == "max-turns":
            emit(result(True, subtype="error_max_turns", text="max turns", turns=5))
            log("end", outcome="max-turns")
            return 1
        elif verb in EXTRA_DIRECTIVES:   # the separate block below main()
            code = EXTRA_DIRECTIVES[verb](args)
            if code is not None:
                return code
    emit({"type": "assistant", "message": {"content": [{"type": "text", "text": "Done."}],
                                           "usage": {"input_tokens": 10, "output_tokens": 5}}})
    emit(result())
    log("end", outcome="ok")
    return 0


# ----- fault-injection directives (tests/test_faults.py)
#
#     FAKE: log-signals          a SIGINT, SIGTERM or SIGHUP is logged as an `end` line
#                                (outcome "signal NAME") before it ends the process as it
#                                would have: a killed attempt's end is in the log too
#
#     FAKE: forget-session       delete this session's saved prompts: a later `--resume`
#                                of it fails like the CLI's ("No conversation found")
#
# Each takes the directive's words and returns None to go on, or an exit code.


def _log_signals(args):
    def on_signal(signum, frame):
        log("end", outcome="signal " + signal.Signals(signum).name)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)
    return None


def _forget_session(args):
    state = os.environ.get("FAKE_CLAUDE_STATE")
    if state:
        path = os.path.join(state, "session-%s.txt" % SESSION["id"])
        if os.path.exists(path):
            os.remove(path)
    return None


EXTRA_DIRECTIVES = {"log-signals": _log_signals, "forget-session": _forget_session}


if __name__ == "__main__":
    sys.exit(main())
