"""Supervised child trees with real processes: nothing a test starts may outlive it.

Every test gets its own QW_RUN_ID marker in the environment of what it starts; afterwards the
`marker` fixture checks /proc for any process still carrying it. Every wait is bounded.
"""

from __future__ import annotations

import errno
import hashlib
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from qw import guard, guardlink, proctree, winjob
from runhelpers import processes_with

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="real process trees are checked through /proc")

FAKES = Path(__file__).parent / "fakes"
CHILD = [sys.executable, str(FAKES / "child.py")]
BOUND = 20.0  # seconds: a generous ceiling for anything a loaded 2-core machine must do


def wait_until(predicate, timeout: float, what: str):
    """Poll `predicate` until it returns something truthy; fail with `what` after timeout.
    (For events with no handle to block on, like "no process of this run is left".)"""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(0.02)


def read_line_within(stream, timeout: float) -> bytes:
    ready, _, _ = select.select([stream], [], [], timeout)
    if not ready:
        pytest.fail("no output within %.0f s" % timeout)
    return stream.readline()


def start(marker, *args: str, stdin_data: bytes = b"", grace: float = 0.5):
    return proctree.start_child(CHILD + list(args), env=marker.env, cwd=os.getcwd(),
                                stdin_data=stdin_data, grace=grace)


def read_all(child) -> list:
    lines = []
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline:
        line = child.read_line(deadline - time.monotonic())
        if line == b"":
            return lines
        if line is not None:
            lines.append(line)
    pytest.fail("no EOF within %.0f s; got %r" % (BOUND, lines))


def test_lines_then_eof_then_exit_code(marker):
    with start(marker, "lines", "3", "7") as child:
        assert read_all(child) == [b"line 0\n", b"line 1\n", b"line 2\n"]
        assert child.read_line(1.0) == b""  # EOF stays EOF, at once
        assert child.wait(BOUND) == 7
        assert child.poll() == 7
        assert child.stderr_tail() == "bye\n"
    assert processes_with(marker.entry) == []


def test_stop_ends_a_child_that_would_run_forever(marker):
    child = start(marker, "sleep", grace=2.0)
    assert child.read_line(BOUND) == b"ready\n"
    assert child.read_line(0.05) is None  # nothing more yet: a timeout, not EOF
    assert child.poll() is None
    code = child.stop()
    assert code == 128 + signal.SIGINT  # SIGINT was enough
    assert "KeyboardInterrupt" in child.stderr_tail()
    assert processes_with(marker.entry) == []
    assert child.stop() == code  # idempotent
    child.close()


def test_stop_escalates_to_sigkill_when_signals_are_ignored(marker):
    child = start(marker, "ignore")
    assert child.read_line(BOUND) == b"ready\n"
    began = time.monotonic()
    assert child.stop(grace=0.3) == 128 + signal.SIGKILL
    assert time.monotonic() - began < 0.6 + BOUND / 2
    assert processes_with(marker.entry) == []
    child.close()


def test_orphans_are_killed_when_the_child_exits_normally(marker, tmp_path):
    fifo = tmp_path / "release"
    os.mkfifo(str(fifo))
    child = start(marker, "orphans", str(fifo))
    assert child.read_line(BOUND) == b"ready\n"
    # The child, a sleep in its own session, a background job, a stubborn one in its own
    # session: all under the guard, whatever session they are in.
    assert len(proctree.tree_pids(child.guard_pid)) >= 4
    assert len(proctree.tree_pids(child.pid)) >= 2  # the background job is the guard's
    with open(str(fifo), "wb"):
        pass  # lets the child exit 0, leaving its grandchildren behind
    # The grandchildren hold stdout open: EOF means the guard has killed them.
    assert read_all(child) == []
    assert child.wait(BOUND) == 0
    assert processes_with(marker.entry) == []
    child.close()


def test_tree_dies_when_the_worker_is_sigkilled(marker):
    worker = subprocess.Popen([sys.executable, str(FAKES / "worker.py")], env=marker.env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        words = read_line_within(worker.stdout, BOUND).split()
        assert words[0] == b"ready", words
        guard_pid = guard.process_table()[int(words[1])][0]  # the child's parent
        assert guard_pid != worker.pid
        assert len(proctree.tree_pids(guard_pid)) >= 4  # child + 3 grandchildren
        worker.kill()
        assert worker.wait(BOUND) == -signal.SIGKILL
        wait_until(lambda: not processes_with(marker.entry), BOUND,
                   "the guard to kill the tree of a SIGKILLed worker")
    finally:
        worker.kill()
        worker.wait(BOUND)
        worker.stdin.close()
        worker.stdout.close()


def test_large_stdin_passes_through_intact(marker):
    data = bytes(range(256)) * 1016  # 260,096 bytes: far more than a pipe buffer
    with start(marker, "stdin", stdin_data=data) as child:
        expected = "%d %s\n" % (len(data), hashlib.sha256(data).hexdigest())
        assert read_all(child) == [expected.encode()]
        assert child.wait(BOUND) == 0


def test_unread_stdin_does_not_hang(marker):
    with start(marker, "lines", "1", "0", stdin_data=b"x" * 300_000) as child:
        assert read_all(child) == [b"line 0\n"]
        assert child.wait(BOUND) == 0


def test_long_lines_a_last_line_without_newline_and_a_full_stderr(marker):
    # 1 MB on one line, 1 MB of stderr before it (both far beyond a pipe's buffer, so
    # neither can wait for the other), and output that ends without a newline.
    with start(marker, "spew", str(1 << 20), str(1 << 20)) as child:
        assert read_all(child) == [b"x" * (1 << 20) + b"\n", b"end"]
        assert child.wait(BOUND) == 0
        tail = child.stderr_tail()
        assert tail.endswith("e\nlast words\n") and len(tail) == proctree.STDERR_TAIL_BYTES


def test_the_end_of_a_tree_reports_its_peak_memory_and_cpu(marker):
    # From the guard's wait4 figures, so even a child gone before anyone looked is counted.
    with start(marker, "burn", "40", "0.2") as child:
        assert child.usage is None   # not before the tree is gone
        assert read_all(child) == [b"done\n"]
        assert child.wait(BOUND) == 0
        peak_mb, cpu_s = child.usage
        assert 40 <= peak_mb <= 100 and cpu_s >= 0.35, child.usage


def test_a_missing_command_is_file_not_found(marker):
    with pytest.raises(FileNotFoundError):
        proctree.start_child(["no-such-command-qw"], env=marker.env, cwd=os.getcwd(),
                             stdin_data=b"")


def test_a_command_that_vanished_is_file_not_found_and_the_guard_stays(marker, tmp_path):
    # start_child checks the command first; the guard's posix_spawn covers a vanished file.
    with pytest.raises(FileNotFoundError) as raised:
        proctree._start_posix(str(tmp_path / "gone"), ["gone"], marker.env, os.getcwd(),
                              b"", 1.0)
    assert raised.value.filename == str(tmp_path / "gone")
    with start(marker, "lines", "1", "0") as child:
        assert read_all(child) == [b"line 0\n"]
        assert child.wait(BOUND) == 0


def test_a_missing_cwd_is_file_not_found(marker, tmp_path):
    with pytest.raises(FileNotFoundError):
        proctree.start_child(CHILD + ["lines", "1", "0"], env=marker.env,
                             cwd=str(tmp_path / "no-such-dir"), stdin_data=b"")


def test_the_child_runs_in_cwd_with_env_and_only_fds_0_1_2(marker, tmp_path):
    code = ("import os\n"
            "fds = []\n"
            "for fd in range(3, 256):\n"
            "    try:\n"
            "        os.fstat(fd)\n"
            "        fds.append(fd)\n"
            "    except OSError:\n"
            "        pass\n"
            "print(os.getcwd(), os.environ['QW_TASK_ID'], fds, os.getpgid(0) == os.getpid())\n")
    with proctree.start_child([sys.executable, "-c", code], env=marker.env,
                              cwd=str(tmp_path), stdin_data=b"") as child:
        assert read_all(child) == [("%s 1 [] True\n" % tmp_path).encode()]
        assert child.wait(BOUND) == 0


@pytest.mark.parametrize("threads", [0, 1])
def test_a_guard_is_a_fork_if_nothing_else_runs_else_a_new_interpreter(marker, tmp_path,
                                                                        threads):
    # Either way it is in a session of its own and holds nothing of its owner's but its
    # socket: a copy of the owner's pipes would keep them from ever reading EOF.
    held = open(tmp_path / "held", "w")
    stop = threading.Event()
    others = [threading.Thread(target=stop.wait) for _ in range(threads)]
    for thread in others:
        thread.start()
    try:
        link = guardlink.GuardLink()
    finally:
        stop.set()
        for thread in others:
            thread.join(BOUND)
    try:
        with open(f"/proc/{link.pid}/cmdline", "rb") as f:
            assert (b"qw.guard" in f.read()) == bool(threads)
        # (A fork is back here before it has let go of what it copied: it is given time.)
        wait_until(lambda: os.getsid(link.pid) == link.pid, BOUND, "a session of its own")

        def fds():
            found = {}
            for fd in os.listdir(f"/proc/{link.pid}/fd"):
                try:
                    found[fd] = os.readlink(f"/proc/{link.pid}/fd/{fd}")
                except OSError:
                    pass   # closed while we looked
            return found
        wait_until(lambda: str(tmp_path / "held") not in fds().values() and len(fds()) <= 6,
                   BOUND, "only its socket (and its own pipe) beside 0, 1, 2")
        # And it serves: a child runs under it and is reported gone.
        out_r, out_w = os.pipe()
        with open(os.devnull, "rb") as devnull:
            pid = link.start(CHILD[0], CHILD + ["lines", "1", "4"], marker.env, os.getcwd(),
                             0.5, (devnull.fileno(), out_w, out_w))
        os.close(out_w)
        with open(out_r, "rb") as out:
            assert out.read() == b"line 0\nbye\n" and pid > 0
        word, rest = link.read_reply(BOUND)
        assert (word, guard.parse_exited(rest)[0]) == ("exited", 4)
    finally:
        held.close()
        link.close()
        assert link.proc.wait(BOUND) == 0   # EOF: it exits, and is reaped here


def test_one_guard_serves_one_child_after_another(marker):
    guards = set()
    for code in (3, 0, 5):
        with start(marker, "lines", "1", str(code)) as child:
            assert read_all(child) == [b"line 0\n"]
            assert child.wait(BOUND) == code
            guards.add(child.guard_pid)
    assert len(guards) == 1


def test_children_at_the_same_time_get_a_guard_each(marker):
    first, second = start(marker, "sleep"), start(marker, "sleep")
    try:
        assert first.read_line(BOUND) == b"ready\n"
        assert second.read_line(BOUND) == b"ready\n"
        assert first.guard_pid != second.guard_pid
        assert second.stop() == 128 + signal.SIGINT
        assert first.poll() is None  # stopping one leaves the other alone
        assert first.stop() == 128 + signal.SIGINT
    finally:
        first.close()
        second.close()
    assert processes_with(marker.entry) == []


def test_a_guard_that_died_while_idle_is_replaced(marker):
    with start(marker, "lines", "0", "0") as child:
        assert child.wait(BOUND) == 0
    dead = child.guard_pid
    os.kill(dead, signal.SIGKILL)
    wait_until(lambda: guard.process_table().get(dead, (0, "Z"))[1] == "Z", BOUND,
               "the idle guard to die")
    with start(marker, "lines", "1", "0") as child:
        assert read_all(child) == [b"line 0\n"]
        assert child.wait(BOUND) == 0
        assert child.guard_pid != dead


def test_when_the_guard_is_killed_the_tree_dies_from_here(marker):
    child = start(marker, "ignore")
    assert child.read_line(BOUND) == b"ready\n"
    os.kill(child.guard_pid, signal.SIGKILL)
    assert child.wait(BOUND) == 128 + signal.SIGKILL
    assert processes_with(marker.entry) == []
    child.close()


# An owner of guards other than this test process: the tests' child, then a way to exit.
OWNER = """
import os, sys
sys.path.insert(0, sys.argv[1])
from qw import proctree

def start(*args):
    return proctree.start_child([sys.executable, sys.argv[2]] + list(args),
                                env=dict(os.environ), cwd=os.getcwd(), stdin_data=b"",
                                grace=0.5)

def run_one():
    with start("lines", "1", "0") as child:
        assert child.read_line(30) == b"line 0\\n"
        assert child.wait(30) == 0
        return child.guard_pid

mode = sys.argv[3]
if mode == "running":      # exits normally while its child runs, without closing it
    child = start("sleep")
    assert child.read_line(30) == b"ready\\n"
    print(child.pid, child.guard_pid, flush=True)
elif mode == "idle":       # exits normally with its guard idle
    print(run_one(), flush=True)
elif mode == "fork":       # its forked child starts a guard of its own, then waits
    first = run_one()
    if os.fork() == 0:
        print("forked", os.getpid(), run_one(), flush=True)
        os.read(0, 1)
        os._exit(0)
    print("owner", first, flush=True)
elif mode == "prepared":   # a guard started ahead serves the first child
    from qw import guard
    proctree.prepare()
    ahead = guard.descendants(os.getpid())
    print(ahead, [run_one()], flush=True)
elif mode == "manyfds":    # holds over 1024 fds: its guard's socket is numbered above them
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 1200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (
            1200 if hard == resource.RLIM_INFINITY else min(hard, 1200), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    print(run_one(), flush=True)
"""


def start_owner(marker, mode: str):
    root = str(Path(__file__).resolve().parent.parent)
    return subprocess.Popen([sys.executable, "-c", OWNER, root, str(FAKES / "child.py"), mode],
                            env=marker.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def gone(pid: int) -> bool:
    return guard.process_table().get(pid, (0, "Z"))[1] == "Z"


@pytest.mark.parametrize("mode", ["running", "idle"])
def test_the_guard_exits_when_its_owner_exits(marker, mode):
    owner = start_owner(marker, mode)
    try:
        pids = [int(word) for word in read_line_within(owner.stdout, BOUND).split()]
        assert owner.wait(BOUND) == 0
        for pid in pids:  # the running child (stopped), and the guard
            wait_until(lambda: gone(pid), BOUND, "pid %d to exit after its owner" % pid)
    finally:
        owner.kill()
        owner.wait(BOUND)
        owner.stdin.close()
        owner.stdout.close()


def test_a_forked_child_has_guards_of_its_own(marker):
    owner = start_owner(marker, "fork")
    try:
        lines = sorted(read_line_within(owner.stdout, BOUND).split() for _ in range(2))
        (_, forked, forked_guard), (_, owner_guard) = lines
        assert forked_guard != owner_guard
        assert owner.wait(BOUND) == 0
        # The fork still lives, but it closed its copy of the owner's socket at once.
        wait_until(lambda: gone(int(owner_guard)), BOUND, "the owner's guard to exit")
        assert not gone(int(forked)) and not gone(int(forked_guard))
        os.kill(int(forked), signal.SIGKILL)
        wait_until(lambda: gone(int(forked_guard)), BOUND, "the fork's guard to exit")
    finally:
        owner.kill()
        owner.wait(BOUND)
        owner.stdin.close()
        owner.stdout.close()


def test_an_owner_with_over_1024_fds_open_starts_children(marker):
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip("the hard RLIMIT_NOFILE here is %d" % hard)
    owner = start_owner(marker, "manyfds")
    try:
        guard_pid = int(read_line_within(owner.stdout, BOUND))
        assert owner.wait(BOUND) == 0
        wait_until(lambda: gone(guard_pid), BOUND, "the guard to exit after its owner")
    finally:
        owner.kill()
        owner.wait(BOUND)
        owner.stdin.close()
        owner.stdout.close()


def idle_guard(marker) -> int:
    """Run a child to its end; the pid of its guard, now the next one start_child takes."""
    with start(marker, "lines", "0", "0") as child:
        assert child.wait(BOUND) == 0
    return child.guard_pid


def test_a_guard_that_does_not_answer_a_start_is_killed(marker, monkeypatch):
    monkeypatch.setattr(guardlink, "START_REPLY_WAIT", 1.0)
    stuck = idle_guard(marker)
    os.kill(stuck, signal.SIGSTOP)
    outcome = []

    def attempt():
        try:
            outcome.append(start(marker, "lines", "1", "0"))
        except BaseException as e:
            outcome.append(e)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(BOUND)
    if thread.is_alive():
        os.kill(stuck, signal.SIGKILL)  # lets the blocked start see EOF
        pytest.fail("start_child still waits for a guard that cannot answer")
    assert isinstance(outcome[0], ConnectionError), outcome
    assert "did not answer" in str(outcome[0])
    wait_until(lambda: gone(stuck), BOUND, "the stuck guard to be killed")
    with start(marker, "lines", "1", "0") as child:  # another guard serves
        assert read_all(child) == [b"line 0\n"]
        assert child.guard_pid != stuck


def test_a_stuck_guard_is_killed_with_the_orphans_it_took_in(marker, monkeypatch, tmp_path):
    monkeypatch.setattr(proctree, "GUARD_BOUND", 0.5)  # how long stop() trusts the guard
    fifo = tmp_path / "release"
    os.mkfifo(str(fifo))
    child = start(marker, "orphans", str(fifo))
    assert child.read_line(BOUND) == b"ready\n"
    os.kill(child.guard_pid, signal.SIGSTOP)
    with open(str(fifo), "wb"):
        pass  # the child exits: its grandchildren, two in sessions of their own, are orphans
    wait_until(lambda: guard.process_table()[child.pid][1] == "Z", BOUND,
               "the child to exit (its stopped guard cannot reap it)")
    assert len(proctree.tree_pids(child.guard_pid)) >= 3  # all taken in by the guard
    assert child.stop(grace=0.1) == 128 + signal.SIGKILL
    wait_until(lambda: not processes_with(marker.entry), BOUND,
               "the stuck guard's orphans to be killed")
    child.close()


def test_a_bad_fd_is_the_error_it_is_and_the_guard_is_kept(marker):
    kept = idle_guard(marker)
    bad = 1 << 30  # far above any open fd
    with pytest.raises(OSError) as raised:
        guardlink.POOL.start(CHILD[0], CHILD + ["lines", "1", "0"], marker.env, os.getcwd(),
                             1.0, (bad, bad, bad))
    assert raised.value.errno == errno.EBADF
    assert not isinstance(raised.value, ConnectionError)  # not "the guard is gone"
    with start(marker, "lines", "1", "0") as child:
        assert read_all(child) == [b"line 0\n"]
        assert child.guard_pid == kept


def test_at_exit_a_busy_guard_is_left_to_stop_its_tree_gracefully(marker, monkeypatch):
    monkeypatch.setattr(proctree, "GUARD_BOUND", 1.0)  # fail fast if the guard is cut off
    child = start(marker, "sleep")
    assert child.read_line(BOUND) == b"ready\n"
    guardlink.POOL.close_all()  # what the exit handler does; the process lives on here
    assert child.poll() is None
    assert child.stop() == 128 + signal.SIGINT  # the guard still hears us: SIGINT first
    assert "KeyboardInterrupt" in child.stderr_tail()
    child.close()


def test_kill_marked_kills_detached_processes_of_that_task(marker):
    def detached(task_id):
        env = dict(marker.env, QW_TASK_ID=task_id)
        return subprocess.Popen(["sleep", "300"], env=env, start_new_session=True)

    first, second = detached("1"), detached("2")
    wait_until(lambda: len(processes_with(marker.entry)) == 2, BOUND, "both sleeps to exec")
    assert proctree.kill_marked(marker.run_id, "1") == [first.pid]
    assert first.wait(BOUND) == -signal.SIGKILL
    assert second.poll() is None
    assert proctree.kill_marked(marker.run_id) == [second.pid]
    assert second.wait(BOUND) == -signal.SIGKILL
    assert proctree.kill_marked(marker.run_id) == []




# ---------------------------------------------------------------------------------------
# Windows, through a fake kernel32: there is no Windows machine here. The fake acts on real
# Linux processes so that stop() meets a real child: the "job" is the child's process group.

class FakeWin32:
    def __init__(self, terminate_works: bool = True, assign_works: bool = True):
        self.calls = []
        self.terminate_works = terminate_works
        self.assign_works = assign_works
        self.proc = None

    def popen(self, argv, creationflags, **kwargs):
        self.calls.append("popen")
        self.creationflags = creationflags
        self.proc = subprocess.Popen(argv, start_new_session=True, **kwargs)
        return self.proc

    def create_job_object(self):
        self.calls.append("create_job_object")
        return 1234

    def set_kill_on_job_close(self, job):
        self.calls.append("set_kill_on_job_close")
        assert job == 1234

    def assign_process_to_job_object(self, job, proc):
        self.calls.append("assign_process_to_job_object")
        assert (job, proc) == (1234, self.proc)
        if not self.assign_works:
            raise OSError("access denied")

    def terminate_job_object(self, job, exit_code):
        self.calls.append("terminate_job_object")
        if self.terminate_works:
            guard.kill_quietly(-self.proc.pid, signal.SIGKILL)

    def close_handle(self, handle):
        self.calls.append("close_handle")
        assert handle == 1234

    def send_ctrl_break(self, pid):
        self.calls.append("send_ctrl_break")
        os.killpg(pid, signal.SIGINT)  # CTRL_BREAK_EVENT goes to the whole process group

    def taskkill(self, pid):
        self.calls.append("taskkill")
        os.killpg(pid, signal.SIGKILL)


def start_windows(marker, win32, *args: str, grace: float = 0.3):
    return winjob.start_windows(CHILD + list(args), marker.env, os.getcwd(), b"", grace,
                                   win32)


JOB_SETUP = ["create_job_object", "set_kill_on_job_close", "popen",
             "assign_process_to_job_object"]


def test_windows_stop_breaks_then_closes_the_job(marker):
    win32 = FakeWin32()
    child = start_windows(marker, win32, "sleep")
    assert child.read_line(BOUND) == b"ready\n"
    assert child.stop() == -signal.SIGINT  # the break was enough
    assert win32.creationflags == (winjob.CREATE_NEW_PROCESS_GROUP
                                   | winjob.CREATE_NO_WINDOW)
    assert win32.calls == JOB_SETUP + ["send_ctrl_break", "terminate_job_object",
                                       "close_handle"]
    child.close()


def test_windows_stop_terminates_the_job_when_the_break_is_ignored(marker):
    win32 = FakeWin32()
    child = start_windows(marker, win32, "ignore")
    assert child.read_line(BOUND) == b"ready\n"
    assert child.stop() == -signal.SIGKILL
    assert win32.calls == JOB_SETUP + ["send_ctrl_break", "terminate_job_object",
                                       "close_handle"]
    child.close()


def test_windows_stop_falls_back_to_taskkill(marker, monkeypatch):
    monkeypatch.setattr(proctree, "KILL_WAIT", 0.3)
    win32 = FakeWin32(terminate_works=False)
    child = start_windows(marker, win32, "ignore")
    assert child.read_line(BOUND) == b"ready\n"
    assert child.stop() == -signal.SIGKILL
    assert win32.calls == JOB_SETUP + ["send_ctrl_break", "terminate_job_object",
                                       "close_handle", "taskkill"]
    child.close()


def test_windows_without_a_job_uses_taskkill(marker):
    win32 = FakeWin32(assign_works=False)
    child = start_windows(marker, win32, "ignore")
    assert child.read_line(BOUND) == b"ready\n"
    assert child.stop() == -signal.SIGKILL
    assert win32.calls == JOB_SETUP + ["close_handle", "send_ctrl_break", "taskkill"]
    child.close()


def test_windows_normal_exit_closes_the_job_and_its_strays(marker):
    win32 = FakeWin32()
    child = winjob.start_windows(["sh", "-c", "echo hi; sleep 300 &"], marker.env,
                                    os.getcwd(), b"", 0.3, win32)
    # The background sleep holds stdout: EOF comes only once the job is closed.
    assert read_all(child) == [b"hi\n"]
    assert child.wait(BOUND) == 0
    assert win32.calls == JOB_SETUP + ["terminate_job_object", "close_handle"]
    child.close()


def test_windows_job_limit_structure_has_the_documented_size():
    import ctypes
    if ctypes.sizeof(ctypes.c_void_p) != 8:
        pytest.skip("the documented size is for 64-bit")
    assert ctypes.sizeof(winjob.job_limit_struct(ctypes)) == 144


def test_a_guard_prepared_ahead_serves_the_first_child(marker):
    owner = start_owner(marker, "prepared")
    try:
        line = read_line_within(owner.stdout, BOUND).decode()
        assert owner.wait(BOUND) == 0
    finally:
        owner.kill()
        owner.wait()
    ahead, used = line.split("] [")
    assert ahead.strip("[ ") and ahead.strip("[ ") == used.strip("]\n "), line
