"""qw.stateowner: the state owner process, under spawn, with real proxies and processes."""

from __future__ import annotations

import json
import multiprocessing
import os
import select
import selectors
import signal
import stat
import subprocess
import sys
import time
from multiprocessing.managers import RemoteError

import pytest

from qw.errors import StateError
from qw.statestore import StateStore
from qw.stateowner import connect_live, live_pointer_path, owner_path, start_owner

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=REPO)
SPAWN = multiprocessing.get_context("spawn")


def run_started(run_id="r1", tasks=(("1", "One"), ("2", "Two"), ("3", "Three"))):
    return {"type": "run_started", "t": time.time(), "run_id": run_id, "spec": "demo",
            "tasks": [list(t) for t in tasks], "pid": os.getpid()}


def ev(kind, **fields):
    return {"type": kind, "t": time.time(), **fields}


def wait_for_exit(pid, timeout):
    """True once process `pid` (not necessarily our child) has exited, False at timeout."""
    if hasattr(os, "pidfd_open"):
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return True
        try:
            return bool(select.select([fd], [], [], timeout)[0])
        finally:
            os.close(fd)
    deadline = time.monotonic() + timeout   # no pidfd (not Linux): poll, bounded
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def owner_pid(qw, run_id="r1"):
    with open(owner_path(qw, run_id)) as f:
        return json.load(f)["pid"]


@pytest.fixture
def owner(tmp_path):
    qw = str(tmp_path / ".qw")
    handle = start_owner(qw, "demo", "r1", [run_started()])
    yield qw, handle
    handle.shutdown()


def _worker_stand_in(proxy, task_id):
    """Runs in a spawned process, like a pool worker: reports one attempt."""
    proxy.record(ev("attempt_started", task=task_id, attempt=1, worker=7, timeout_s=60))
    proxy.progress(task_id, {"tool": "Bash", "tokens": 321})
    proxy.record(ev("attempt_ended", task=task_id, attempt=1, outcome="ok", message="",
                    cost_usd=0.2, duration_s=1.5, session_id="w", exit_code=0))


def test_the_runner_and_a_spawned_worker_record_through_proxies(owner):
    qw, handle = owner
    handle.proxy.record(ev("attempt_started", task="1", attempt=1, worker=0, timeout_s=60))
    handle.proxy.progress("1", {"last_event": "assistant", "tool": "Edit"})
    worker = SPAWN.Process(target=_worker_stand_in, args=(handle.proxy, "2"))
    worker.start()
    worker.join(60)
    assert worker.exitcode == 0, "the worker stand-in failed or hung"
    handle.proxy.record(ev("task_done", task="2"))
    view = handle.proxy.view()
    assert view["live"] is True and view["run_id"] == "r1"
    rows = {t["id"]: t for t in view["tasks"]}
    assert rows["1"]["status"] == "running"
    assert rows["1"]["progress"] == {"last_event": "assistant", "tool": "Edit"}
    assert (rows["2"]["status"], rows["2"]["cost_usd"]) == ("done", 0.2)


def test_an_illegal_event_raises_in_the_caller_and_changes_nothing(owner):
    _qw, handle = owner
    before = handle.proxy.view()
    with pytest.raises(ValueError, match="illegal transition"):
        handle.proxy.record(ev("attempt_ended", task="1", attempt=1, outcome="ok"))
    assert handle.proxy.view() == before


def test_it_advertises_itself_privately_and_a_fresh_process_sees_the_live_view(owner):
    qw, handle = owner
    info_path = owner_path(qw, "r1")
    if os.name == "posix":
        assert stat.S_IMODE(os.stat(info_path).st_mode) == 0o600
    with open(info_path) as f:
        assert {"address", "authkey", "pid"} <= set(json.load(f))
    handle.proxy.record(ev("task_done", task="3"))
    code = ("import json, sys\n"
            "from qw.stateowner import connect_live\n"
            "proxy = connect_live(sys.argv[1], 'demo')\n"
            "print(json.dumps(proxy.view() if proxy else None))\n")
    out = subprocess.run([sys.executable, "-c", code, qw], env=ENV, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    view = json.loads(out.stdout)
    assert view["live"] is True
    assert [t["status"] for t in view["tasks"]] == ["pending", "pending", "done"]


def test_the_live_connection_is_read_only(owner):
    qw, _handle = owner
    proxy = connect_live(qw, "demo")
    assert proxy is not None and proxy.view()["live"] is True
    assert not hasattr(proxy, "record")
    with pytest.raises(RemoteError, match="not in exposed"):   # the owner refuses it too
        proxy._callmethod("record", (ev("task_done", task="1"),))


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_a_group_sigterm_leaves_the_owner_serving_the_runner_winding_down(owner):
    qw, handle = owner
    os.kill(owner_pid(qw), signal.SIGTERM)
    handle.proxy.record(ev("run_ended", status="interrupted", exit_code=130))
    assert handle.proxy.view()["run_status"] == "interrupted"


def test_clean_shutdown_persists_and_withdraws_the_live_pointer(tmp_path):
    qw = str(tmp_path / ".qw")
    handle = start_owner(qw, "demo", "r1", [run_started()])
    pid = owner_pid(qw)
    handle.proxy.record(ev("task_done", task="1"))
    handle.shutdown(ev("run_ended", status="done", exit_code=0))
    handle.shutdown()   # again: nothing
    assert wait_for_exit(pid, 30), "the owner process did not exit"
    assert not os.path.exists(live_pointer_path(qw, "demo"))
    assert not os.path.exists(owner_path(qw, "r1"))
    assert connect_live(qw, "demo") is None
    state = StateStore(qw, "demo").load()
    assert state.run_status == "done" and state.tasks["1"].status == "done"


def test_no_live_run_means_none(tmp_path):
    qw = str(tmp_path / ".qw")
    assert connect_live(qw, "demo") is None                  # nothing at all
    os.makedirs(os.path.join(qw, "state"))
    with open(live_pointer_path(qw, "demo"), "w") as f:
        f.write("{garbage")
    assert connect_live(qw, "demo") is None                  # unreadable pointer
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=30)
    with open(live_pointer_path(qw, "demo"), "w") as f:
        json.dump({"run_id": "r0"}, f)
    os.makedirs(os.path.dirname(owner_path(qw, "r0")))
    with open(owner_path(qw, "r0"), "w") as f:
        json.dump({"address": str(os.path.join(qw, "no.sock")), "authkey": "00" * 32,
                   "pid": gone.pid}, f)
    assert connect_live(qw, "demo") is None                  # stale pid, no socket


def test_a_snapshot_from_a_newer_qw_stops_the_start_and_is_kept(tmp_path):
    qw = tmp_path / ".qw"
    (qw / "state").mkdir(parents=True)
    newer = b'{"format": 99}'
    (qw / "state" / "demo.json").write_bytes(newer)
    with pytest.raises(StateError, match="newer qw") as caught:
        start_owner(str(qw), "demo", "r1", [run_started()])
    assert "demo.json" in str(caught.value)
    assert (qw / "state" / "demo.json").read_bytes() == newer
    assert not os.path.exists(live_pointer_path(str(qw), "demo"))


PARENT = r"""
import json, os, sys, time
from qw.stateowner import owner_path, start_owner

def main():
    qw = sys.argv[1]
    start = {"type": "run_started", "t": time.time(), "run_id": "r1", "spec": "demo",
             "tasks": [["1", "One"], ["2", "Two"]], "pid": os.getpid()}
    handle = start_owner(qw, "demo", "r1", [start])
    for task in ("1", "2"):
        handle.proxy.record({"type": "attempt_started", "t": time.time(), "task": task,
                             "attempt": 1, "worker": 0, "timeout_s": 60})
    handle.proxy.record({"type": "attempt_ended", "t": time.time(), "task": "2",
                         "attempt": 1, "outcome": "ok", "cost_usd": 0.1})
    handle.proxy.record({"type": "task_done", "t": time.time(), "task": "2"})
    with open(owner_path(qw, "r1")) as f:
        print(json.load(f)["pid"], flush=True)
    sys.stdin.read()   # wait to be killed

if __name__ == "__main__":
    main()
"""


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_the_owner_exits_when_its_parent_is_killed_and_leaves_a_loadable_state(tmp_path):
    qw = str(tmp_path / ".qw")
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    with open(tmp_path / "stderr.txt", "wb") as err:
        parent = subprocess.Popen([sys.executable, str(script), qw], env=ENV,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(parent.stdout, selectors.EVENT_READ)
            ready = sel.select(timeout=60)
        assert ready, "the parent script did not start its owner within 60 s: " + \
            (tmp_path / "stderr.txt").read_text()
        pid = int(parent.stdout.readline())
        assert connect_live(qw, "demo") is not None
    finally:
        parent.kill()
        parent.wait(timeout=30)
        parent.stdin.close()
        parent.stdout.close()
    assert wait_for_exit(pid, 30), "the owner outlived its parent by 30 s"
    state = StateStore(qw, "demo").load()
    assert state.tasks["1"].status == "running" and state.tasks["2"].status == "done"
    with open(StateStore(qw, "demo").snapshot_path) as f:
        assert json.load(f)["seq"] == state.seq       # the snapshot was written on the way out
    assert not os.path.exists(live_pointer_path(qw, "demo"))
    assert connect_live(qw, "demo") is None


LONG_TMPDIR = r"""
import os, sys, time
from qw.stateowner import connect_live, start_owner

if __name__ == "__main__":
    qw = sys.argv[1]
    start = {"type": "run_started", "t": time.time(), "run_id": "r1", "spec": "demo",
             "tasks": [["1", "One"]], "pid": os.getpid()}
    handle = start_owner(qw, "demo", "r1", [start])
    handle.proxy.record({"type": "task_done", "t": time.time(), "task": "1"})
    print(connect_live(qw, "demo").view()["tasks"][0]["status"])
    handle.shutdown()
"""


@pytest.mark.skipif(os.name != "posix", reason="Unix socket path limit")
def test_a_long_tmpdir_does_not_break_the_socket_address(tmp_path):
    long_tmp = tmp_path / ("t" * 60) / ("m" * 60)
    long_tmp.mkdir(parents=True)
    script = tmp_path / "long.py"
    script.write_text(LONG_TMPDIR)
    out = subprocess.run([sys.executable, str(script), str(tmp_path / ".qw")],
                         env=dict(ENV, TMPDIR=str(long_tmp)), capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "done"
