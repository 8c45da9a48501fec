"""Helpers for tests that drive `qw run` as a user does: a real process, real workers.

    repo = QwRepo(tmp_path, qw)        a git repository with one spec, `s`, and a qw.toml
    repo.write_tasks(text)             whose [claude] command is tests/fakeclaude.py
    done = repo.run("run", "s", "-j", "2")        bounded; output dumped on a timeout
    proc = repo.start("run", "s")                 the same, in the background
    repo.events()                      what the fake claude children logged
    repo.leftovers()                   processes of this test still alive

Every process a test starts carries FAKE_CLAUDE_LOG=<its tmp dir>/log.jsonl in its
environment (qw passes its environment down to workers, guards, children and whatever
they start), which is how leftovers are found; QW_RUN_ID alone would miss qw's own
processes.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
FAKE_CLAUDE = Path(__file__).resolve().parent / "fakeclaude.py"
RUN_BOUND = 60.0     # seconds any one `qw` command may take before the test fails
# [resources] that never hold a task back (qw.admission counts the load as at most 100%).
NO_LIMITS = ("cpu_limit_percent = 100\nmemory_limit_percent = 100\nmemory_reserve_mb = 0\n"
             "per_task_memory_mb = 0\n")
LEFTOVER_BOUND = 15.0


# ----- how to start qw


class Qw:
    """One way of running qw: `python -m qw` from the checkout, or qw.pyz on a Python."""

    def __init__(self, name: str, argv: List[str], pythonpath: Optional[str] = None):
        self.name = name
        self.argv = argv
        self.pythonpath = pythonpath

    def __repr__(self) -> str:
        return self.name


MODULE = Qw("module", [sys.executable, "-m", "qw"], pythonpath=str(REPO_ROOT))


def _reports_version(executable: str, version: str) -> bool:
    # A pyenv shim exists for every installed version but fails unless that version is
    # enabled, so finding the file proves nothing: ask it.
    probe = "import sys; sys.stdout.write('%d.%d' % tuple(sys.version_info[:2]))"
    try:
        done = subprocess.run([executable, "-c", probe], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and done.stdout.decode() == version


@functools.lru_cache(maxsize=None)
def find_python(version: str) -> Optional[str]:
    """A working python<version>: on PATH, or a pyenv install (a shim alone may not work)."""
    candidates = [shutil.which(f"python{version}")]
    pyenv_root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates += sorted(glob.glob(os.path.join(
        pyenv_root, "versions", f"{version}.*", "bin", f"python{version}")), reverse=True)
    return next((c for c in candidates if c and _reports_version(c, version)), None)


def python_or_skip(version: str) -> str:
    found = find_python(version)
    if found is None:
        reason = f"python{version} not found (neither a working one on PATH nor under pyenv)"
        if os.environ.get("QW_REQUIRE_PYTHONS") == "1":
            pytest.fail(f"{reason}; QW_REQUIRE_PYTHONS=1 requires it")
        pytest.skip(reason)
    return found


def build_pyz(output: Path) -> Path:
    done = subprocess.run([sys.executable, str(REPO_ROOT / "build_zipapp.py"), "-o", str(output)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=300)
    if done.returncode != 0:
        pytest.fail(f"build_zipapp.py failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return output


# ----- processes


def alive(pid: int) -> bool:
    """Whether `pid` is a living process (a zombie is not)."""
    return bool(_environ(pid))


def _environ(pid: int) -> List[bytes]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []   # gone, or a zombie (its environ reads empty)


def processes_with(entry: str) -> List[int]:
    """Living processes (not this one) whose environment holds `entry` ("NAME=value")."""
    wanted = entry.encode()
    return [int(name) for name in os.listdir("/proc")
            if name.isdigit() and int(name) != os.getpid() and wanted in _environ(int(name))]


def describe(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        cmd = "?"
    return f"{pid} {cmd[:160]}"


def wait_until(predicate: Callable[[], object], timeout: float, what: str,
               on_timeout: Callable[[], str] = lambda: ""):
    """Poll `predicate` until it returns something truthy; fail naming `what` after
    `timeout` seconds. (For events without a handle to block on: a line in a log file, a
    process gone from /proc.)"""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{on_timeout()}")
        time.sleep(0.02)


class Result:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    @property
    def text(self) -> str:
        return self.out + self.err

    def __repr__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


# ----- the repository


class QwRepo:
    """A tmp git repository with spec `s`, a qw.toml, and the fake claude's files."""

    def __init__(self, root: Path, qw: Qw = MODULE, spec: str = "s"):
        self.root = root
        self.qw = qw
        self.spec = spec
        self.spec_dir = root / ".claude" / "specs" / spec
        self.spec_dir.mkdir(parents=True)
        self.tasks_md = self.spec_dir / "tasks.md"
        self.log = root / "log.jsonl"
        self.state = root / "fake-state"
        self.state.mkdir()
        subprocess.run(["git", "init", "-q", str(root)], check=True, timeout=30)
        self.claude = root / "claude"
        self.claude.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_CLAUDE}" "$@"\n')
        self.claude.chmod(0o755)
        self.marker = f"FAKE_CLAUDE_LOG={self.log}"
        self.started: List[subprocess.Popen] = []
        self.configure()

    # files

    def configure(self, run: str = "", claude: str = "", spec: str = "",
                  resources: str = NO_LIMITS) -> None:
        """Write qw.toml: fast retries, the fake claude, plus the given section bodies.
        [resources] holds nothing unless a test says otherwise: the machines tests run on
        are often busier than qw's default limits allow, and would run one task at a time."""
        text = (f'[run]\nretry_backoff = "0.1s"\nmax_concurrent = 2\n{run}\n'
                f'[claude]\ncommand = "{self.claude}"\n{claude}\n'
                f'[resources]\n{resources}\n')
        if spec:
            text += f"[spec]\n{spec}\n"
        (self.root / "qw.toml").write_text(text)

    def write_tasks(self, text: str, newline: str = "\n", final_newline: bool = True) -> bytes:
        """Write tasks.md from `text` (a dedented string), with `newline` line endings."""
        lines = text.strip("\n").split("\n")
        data = newline.join(lines) + (newline if final_newline else "")
        self.tasks_md.write_bytes(data.encode("utf-8"))
        return data.encode("utf-8")

    def release(self, name: str) -> None:
        """Let the fake's `wait-file NAME` go on."""
        (self.state / name).write_text("go")

    # qw

    def env(self) -> Dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("QW_") and k not in ("PYTHONPATH", "CLAUDECODE")}
        env.update(FAKE_CLAUDE_LOG=str(self.log), FAKE_CLAUDE_STATE=str(self.state),
                   FAKE_TASKS_MD=str(self.tasks_md), PYTHONUNBUFFERED="1",
                   QW_CACHE_DIR=str(self.root / "qw-cache"))
        if self.qw.pythonpath:
            env["PYTHONPATH"] = self.qw.pythonpath
        return env

    def start(self, *args: str) -> subprocess.Popen:
        """`qw ARGS` in the background, in a session of its own (so that a signal to its
        group reaches what a terminal's Ctrl-C would, and never pytest). Its output goes
        to files, readable while it runs: `output(proc)`."""
        n = len(self.started)
        out_path, err_path = self.root / f"qw-{n}.out", self.root / f"qw-{n}.err"
        with open(out_path, "w") as out, open(err_path, "w") as err:
            proc = subprocess.Popen(self.qw.argv + list(args), cwd=str(self.root),
                                    env=self.env(), stdout=out, stderr=err,
                                    start_new_session=True)
        proc.out_path, proc.err_path = out_path, err_path
        self.started.append(proc)
        return proc

    def start_on_tty(self, *args: str, tty: int) -> subprocess.Popen:
        """`qw ARGS` with stdout and stderr on the terminal `tty` (a pty's slave end)."""
        n = len(self.started)
        proc = subprocess.Popen(self.qw.argv + list(args), cwd=str(self.root), env=self.env(),
                                stdout=tty, stderr=tty, start_new_session=True)
        proc.out_path = proc.err_path = self.root / f"qw-{n}.none"
        proc.out_path.write_text("")
        self.started.append(proc)
        return proc

    @staticmethod
    def output(proc: subprocess.Popen) -> str:
        """What a started qw wrote so far (stdout, then stderr)."""
        return proc.out_path.read_text() + proc.err_path.read_text()

    def wait_output(self, proc: subprocess.Popen, text: str, timeout: float = 30.0) -> None:
        wait_until(lambda: text in self.output(proc) or proc.poll() is not None, timeout,
                   f"{text!r} in qw's output", lambda: self.output(proc))
        if text not in self.output(proc):
            pytest.fail(f"qw exited ({proc.returncode}) without printing {text!r}:\n"
                        f"{self.output(proc)}")

    def finish(self, proc: subprocess.Popen, timeout: float = RUN_BOUND) -> Result:
        """Wait for a started qw; on timeout kill it and fail with everything it said."""
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _killpg(proc.pid)
            proc.wait(timeout=30)
            pytest.fail(f"`qw {' '.join(proc.args[len(self.qw.argv):])}` did not finish "
                        f"within {timeout:.0f}s\n{self.output(proc)}\n"
                        f"--- fake log\n{self.log_tail()}")
        return Result(proc.returncode, proc.out_path.read_text(), proc.err_path.read_text())

    def run(self, *args: str, timeout: float = RUN_BOUND) -> Result:
        return self.finish(self.start(*args), timeout)

    def status(self) -> dict:
        done = self.run("status", self.spec, "--json")
        assert done.code == 0, done
        return json.loads(done.out)

    def plan(self) -> dict:
        done = self.run("plan", self.spec, "--json")
        assert done.code == 0, done
        return json.loads(done.out)

    # what happened

    def events(self, event: Optional[str] = None) -> List[dict]:
        """The fake children's log lines (optionally only those of one kind)."""
        if not self.log.exists():
            return []
        out = []
        text = self.log.read_text()
        # A child may be appending right now: a last line without its newline is not whole
        # yet, so it is left for the next read.
        for line in text[:text.rfind("\n") + 1].splitlines():
            if line.strip():
                record = json.loads(line)
                if event is None or record["event"] == event:
                    out.append(record)
        return out

    def wait_event(self, predicate: Callable[[dict], bool], what: str,
                   timeout: float = 30.0) -> dict:
        def found():
            return next((e for e in self.events() if predicate(e)), None)

        return wait_until(found, timeout, what, self.log_tail)

    def log_tail(self) -> str:
        return self.log.read_text()[-3000:] if self.log.exists() else "(no fake log)"

    def runs(self) -> List[str]:
        runs = self.root / ".qw" / "runs"
        return sorted(p.name for p in runs.iterdir()) if runs.exists() else []

    def journal(self, run_id: Optional[str] = None) -> List[dict]:
        run_id = run_id or self.runs()[-1]
        path = self.root / ".qw" / "runs" / run_id / "events.jsonl"
        if not path.exists():   # killed after making its folder, before journaling a line
            return []
        text = path.read_text()
        whole = text[:text.rfind("\n") + 1]   # a line being appended now is not whole yet
        events = [json.loads(line) for line in whole.splitlines() if line.strip()]
        return [e for e in events if "type" in e]   # not the header line

    def leftovers(self) -> List[int]:
        return processes_with(self.marker)

    def check_no_leftovers(self) -> None:
        """Every process of this test is gone within a bound; else kill them and fail."""
        for proc in self.started:
            if proc.poll() is None:
                _killpg(proc.pid)
                proc.wait(timeout=30)
        deadline = time.monotonic() + LEFTOVER_BOUND
        while self.leftovers() and time.monotonic() < deadline:
            time.sleep(0.05)
        left = self.leftovers()
        if left:
            described = [describe(pid) for pid in left]
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            pytest.fail("processes left behind:\n" + "\n".join(described))


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def overlap(events: List[dict]) -> int:
    """The most children running at once, from the fake's start/end lines."""
    points = []
    for e in events:
        if e["event"] == "start":
            points.append((e["t"], 1))
        elif e["event"] == "end":
            points.append((e["t"], -1))
    most = now = 0
    for _, step in sorted(points, key=lambda p: (p[0], p[1])):
        now += step
        most = max(most, now)
    return most


# ----- fault injection (tests/test_faults.py): file system moments, a small disk


class FileEvents:
    """Linux inotify, through ctypes: the moment a file is created, written or renamed
    into place in a watched directory (so that a kill can land right after a write)."""

    MODIFY, OPEN, MOVED_TO, CREATE, ISDIR = 0x2, 0x20, 0x80, 0x100, 0x40000000

    def __init__(self):
        import ctypes

        self._ctypes = ctypes
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self._dirs: Dict[int, str] = {}

    def watch(self, directory: Path, mask: int) -> None:
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(str(directory)), mask)
        if wd < 0:
            raise OSError(self._ctypes.get_errno(), f"inotify_add_watch {directory} failed")
        self._dirs[wd] = str(directory)

    def read(self, timeout: float) -> List[tuple]:
        """(directory, name, mask) of each event, waiting at most `timeout` for the first."""
        import select
        import struct

        if not select.select([self.fd], [], [], timeout)[0]:
            return []
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return []
        out, at = [], 0
        while at < len(data):   # struct inotify_event: wd, mask, cookie, len, name[len]
            wd, mask, _cookie, size = struct.unpack_from("iIII", data, at)
            name = data[at + 16:at + 16 + size].rstrip(b"\0").decode()
            out.append((self._dirs.get(wd, "?"), name, mask))
            at += 16 + size
        return out

    def close(self) -> None:
        os.close(self.fd)


class MountNamespace:
    """A tmpfs of `size` at `mountpoint`, mounted in a private mount namespace (unshare -m)
    so that no mount is left on the machine whatever happens: a `cat` reading a pipe from
    this process holds the namespace, and ends with it. Commands run inside through
    nsenter (`qw_in`); this process sees the files through /proc/<pid>/root (`path`).
    Skips the test, saying why, where no namespace or tmpfs can be had."""

    def __init__(self, mountpoint: Path, size: str):
        script = 'mount -t tmpfs -o "size=$1" tmpfs "$0" && echo mounted && exec cat >/dev/null'
        try:
            self.proc = subprocess.Popen(
                ["unshare", "-m", "--propagation", "private", "sh", "-c", script,
                 str(mountpoint), size], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE)
        except OSError as error:
            pytest.skip(f"cannot start unshare: {error}")
        if self.proc.stdout.readline().strip() != b"mounted":   # or EOF: sh gave up
            reason = self.proc.stderr.read().decode(errors="replace").strip()
            self.proc.wait(timeout=30)
            pytest.skip(f"cannot mount a tmpfs in a private mount namespace: {reason}")

    def qw_in(self, cwd: Path) -> Qw:
        """`python -m qw` inside the namespace, started in `cwd` (nsenter leaves it at /)."""
        return Qw("module in a mount namespace",
                  ["nsenter", "-t", str(self.proc.pid), "-m", "--", "sh", "-c",
                   'cd "$0" && exec "$@"', str(cwd), sys.executable, "-m", "qw"],
                  pythonpath=str(REPO_ROOT))

    def path(self, path: Path) -> Path:
        """`path` as this process sees it inside the namespace."""
        return Path(f"/proc/{self.proc.pid}/root{path}")

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@contextlib.contextmanager
def held_lock(path: str, run_id: str, bound: float = 30.0):
    """Another process holding the lock at `path`, as a run would; yields the process
    (closing its stdin releases the lock; it is killed at the end in any case)."""
    if os.name == "nt":
        pytest.skip("waits on the holder's pipe with select()")
    holder = Path(__file__).resolve().parent / "fakes" / "lock_holder.py"
    proc = subprocess.Popen([sys.executable, str(holder), path, run_id],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], bound)
        assert ready and proc.stdout.readline() == b"locked\n", "the holder did not lock in time"
        yield proc
    finally:
        proc.kill()
        proc.wait(bound)
        proc.stdin.close()
        proc.stdout.close()
