"""The guard process over its socket, as qw.guardlink speaks to it: real guards, real children.

Each guard here carries the test's QW_RUN_ID marker (and so does everything it starts); the
`marker` fixture fails the test if any such process outlives it. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from qw import PACKAGE_ROOT, guard, guardlink

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="real process trees are checked through /proc")

CHILD = [sys.executable, str(Path(__file__).parent / "fakes" / "child.py")]
BOUND = 20.0  # seconds: a generous ceiling for anything a loaded 2-core machine must do


class RawGuard:
    """A guard started the way qw.guardlink starts one, spoken to line by line."""

    def __init__(self, env: dict):
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", guardlink._GUARD_CODE, PACKAGE_ROOT,
             "--sock", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),), env=env, start_new_session=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        theirs.close()
        self.sock.settimeout(BOUND)
        self.replies = self.sock.makefile("rb")

    def send(self, line: bytes, fds=()) -> None:
        if fds:
            socket.send_fds(self.sock, [line], list(fds))
        else:
            self.sock.sendall(line)

    def reply(self) -> bytes:
        try:
            return self.replies.readline().rstrip(b"\n")
        except socket.timeout:
            pytest.fail("no reply from the guard within %.0f s" % BOUND)

    def exited(self):
        """The next reply, which must be `exited`: (exit code, (peak RSS MB, CPU s))."""
        word, _, rest = self.reply().decode().partition(" ")
        assert word == "exited", (word, rest)
        return guard.parse_exited(rest)

    def start(self, env: dict, *args: str, grace: float = 0.5):
        """Start the fake child; (the reply, a reader of its stdout and stderr)."""
        out_r, out_w = os.pipe()
        with open(os.devnull, "rb") as devnull:
            request = {"exe": CHILD[0], "argv": CHILD + list(args), "env": env,
                       "cwd": os.getcwd(), "grace": grace}
            self.send(b"start " + json.dumps(request).encode() + b"\n",
                      [devnull.fileno(), out_w, out_w])
        os.close(out_w)
        return self.reply(), open(out_r, "rb")

    def close(self) -> int:
        self.replies.close()
        self.sock.close()
        try:
            return self.proc.wait(BOUND)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(BOUND)
            pytest.fail("the guard did not exit within %.0f s of EOF" % BOUND)


@pytest.fixture
def raw(marker):
    raw = RawGuard(marker.env)
    yield raw
    raw.close()


def test_a_child_starts_prints_and_is_reported_exited(raw, marker):
    reply, out = raw.start(marker.env, "lines", "2", "3")
    with out:
        assert reply.split()[0] == b"started"
        assert out.read() == b"line 0\nline 1\nbye\n"  # stderr went to the same pipe
    assert raw.exited()[0] == 3
    assert raw.close() == 0


def test_exited_carries_what_the_kernel_counted_for_the_whole_tree(raw, marker):
    # The child holds 60 MB and burns 0.3 s of CPU; an orphan it leaves behind (reaped by
    # the guard, its subreaper) burns 0.3 s more. wait4 counts both, without any sampling.
    reply, out = raw.start(marker.env, "burn", "60", "0.3")
    with out:
        assert reply.startswith(b"started ")
        assert out.read() == b"done\n"
    code, (peak_mb, cpu_s) = raw.exited()
    assert code == 0
    assert 60 <= peak_mb <= 120, peak_mb
    assert cpu_s >= 0.55, cpu_s


def test_a_bad_request_is_an_error_and_the_guard_serves_on(raw, marker):
    raw.send(b"start {}\n")  # no fds at all
    assert json.loads(raw.reply().split(b" ", 1)[1])[0] == 22  # EINVAL
    with open(os.devnull, "rb") as devnull:
        raw.send(b"start not json\n", [devnull.fileno()] * 3)
    assert json.loads(raw.reply().split(b" ", 1)[1])[0] == 22
    raw.send(b"stop 1\n")  # nothing runs: nothing to do, no reply
    reply, out = raw.start(marker.env, "lines", "1", "0")
    with out:
        assert reply.startswith(b"started ")
        assert out.read() == b"line 0\nbye\n"
    assert raw.exited()[0] == 0


def test_a_start_while_busy_is_refused_and_the_child_runs_on(raw, marker):
    reply, out = raw.start(marker.env, "sleep")
    with out:
        assert reply.startswith(b"started ")
        assert out.readline() == b"ready\n"
        busy, _ = raw.start(marker.env, "lines", "1", "0")
        assert busy.startswith(b"error ")
        assert json.loads(busy.split(b" ", 1)[1])[0] == 16  # EBUSY
        raw.send(b"stop 1\n")
        assert raw.exited()[0] == (128 + signal.SIGINT)


def test_a_shorter_stop_cuts_a_long_grace_short(raw, marker):
    reply, out = raw.start(marker.env, "ignore", grace=60.0)
    with out:
        assert out.readline() == b"ready\n"
        raw.send(b"stop 60\n")  # SIGINT, ignored: the guard waits out the grace...
        raw.send(b"stop 0.1\n")  # ...unless told otherwise meanwhile
        assert raw.exited()[0] == (128 + signal.SIGKILL)  # well within BOUND


def test_eof_while_stopping_still_ends_the_tree_then_the_guard(marker):
    raw = RawGuard(marker.env)
    reply, out = raw.start(marker.env, "ignore")
    with out:
        assert out.readline() == b"ready\n"
        raw.send(b"stop 0.2\n")
        assert raw.close() == 0
        assert out.read() == b""  # the child's end of the pipe is closed: it is gone


def test_eof_while_running_stops_the_child_with_its_grace(marker):
    raw = RawGuard(marker.env)
    reply, out = raw.start(marker.env, "sleep")
    with out:
        assert out.readline() == b"ready\n"
        assert raw.close() == 0
        assert b"KeyboardInterrupt" in out.read()  # SIGINT came first


def test_a_signal_to_the_guard_stops_the_child_reports_it_and_ends_the_guard(raw, marker):
    reply, out = raw.start(marker.env, "sleep")
    with out:
        assert out.readline() == b"ready\n"
        raw.proc.send_signal(signal.SIGTERM)
        assert raw.exited()[0] == (128 + signal.SIGINT)
        assert raw.proc.wait(BOUND) == 0


def test_a_guard_without_its_socket_says_how_to_call_it():
    done = subprocess.run([sys.executable, "-c", guardlink._GUARD_CODE, PACKAGE_ROOT],
                          stderr=subprocess.PIPE, timeout=BOUND)
    assert done.returncode == 2
    assert b"usage: --sock FD" in done.stderr


def test_descendants_lists_parents_before_children():
    table = {10: (1, "S"), 11: (10, "S"), 12: (11, "S"), 13: (10, "Z"), 14: (2, "S")}
    assert guard.descendants(10, table) == [11, 12]


def test_process_table_from_ps_agrees_with_proc():
    if not os.path.exists("/usr/bin/ps") and not os.path.exists("/bin/ps"):
        pytest.skip("no ps here")
    assert guard._ps_table()[os.getpid()][0] == guard._proc_table()[os.getpid()][0]


def test_a_start_posix_spawn_refuses_is_einval_and_the_guard_serves_on(raw, marker):
    # An environment name holding "=", a NUL in an argument: posix_spawn raises ValueError.
    for env, args in ((dict(marker.env, **{"A=B": "1"}), ("lines", "1", "0")),
                      (marker.env, ("lines", "1\0", "0"))):
        reply, out = raw.start(env, *args)
        out.close()
        assert reply.startswith(b"error "), reply
        code, text, _filename = json.loads(reply.split(b" ", 1)[1])
        assert code == 22 and "bad start request" in text  # EINVAL, with the reason
    reply, out = raw.start(marker.env, "lines", "1", "0")
    with out:
        assert reply.startswith(b"started ")
        assert out.read() == b"line 0\nbye\n"
    assert raw.exited()[0] == 0


# ps run by a process that is not a subreaper and has no children: nothing is a stray.
PS_STRAYS = """
import os, socket, sys
sys.path.insert(0, sys.argv[1])
from qw import guard
guard.process_table = guard._ps_table  # what a system without /proc (macOS) uses
ours, theirs = socket.socketpair()
keeper = guard.Guard(theirs)
keeper.subreaper = False
print(guard.descendants(os.getpid(), guard._ps_table()), keeper._strays())
"""


def test_ps_does_not_count_itself_as_a_descendant_or_a_stray():
    if not os.path.exists("/usr/bin/ps") and not os.path.exists("/bin/ps"):
        pytest.skip("no ps here")
    done = subprocess.run([sys.executable, "-c", PS_STRAYS, PACKAGE_ROOT],
                          stdout=subprocess.PIPE, timeout=BOUND, check=True)
    assert done.stdout == b"[] []\n"
