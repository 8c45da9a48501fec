"""What bench/run is made of: building qw.pyz, generated specs, timed processes, /proc
sampling, the run journal's figures, and the machine's description.

Linux only (it reads /proc). Standard library only. Every process it starts runs in a
session of its own and carries BENCH_MARK=<this bench's id> in its environment, so that
whatever is left of a case (a timed-out qw, its workers, their children) is found and
stopped by that mark, never by name.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
INSTANT_CLAUDE = os.path.join(BENCH_DIR, "instant_claude")
MARK = "BENCH_MARK=qw-bench-" + uuid.uuid4().hex[:12]
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


# ----- numbers


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def secs(seconds: float) -> str:
    return f"{seconds:.2f} s"


# ----- the machine


def machine(python: str = sys.executable) -> Dict[str, object]:
    """nproc, CPU model, the Python that runs qw, OS and the load average now."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        version = subprocess.run([python, "-c", "import platform; print(platform.python_version())"],
                                 stdout=subprocess.PIPE, universal_newlines=True, timeout=60,
                                 check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise SystemExit(f"bench: cannot run {python}: {exc}") from None
    return {"nproc": os.cpu_count(), "cpu": model, "python": version, "python_path": python,
            "os": f"{platform.system()} {platform.release()}", "load": load()}


def fresh_venv(path: str) -> str:
    """The python of a new venv at `path` made from this interpreter: the standard library
    and nothing else, so no site-packages `.pth` file (an editable install's finder, a
    certificate hook) adds its import time to every process qw starts."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", path], check=True,
                   timeout=120)
    return os.path.join(path, "bin", "python")


def load() -> List[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ----- qw.pyz


def build_pyz(out_dir: str) -> str:
    """qw.pyz built by build_zipapp.py from this checkout (psutil for this platform only,
    which keeps the build quick and offline once pip's cache holds the wheel)."""
    output = os.path.join(out_dir, "qw.pyz")
    sys.path.insert(0, REPO_ROOT)
    try:
        from qw.vendor import this_platform
        key = this_platform()
    finally:
        sys.path.remove(REPO_ROOT)
    argv = [sys.executable, os.path.join(REPO_ROOT, "build_zipapp.py"), "-o", output]
    if key:
        argv += ["--platform", key]
    done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=300)
    if done.returncode != 0:
        raise SystemExit(f"bench: build_zipapp.py failed:\n{done.stdout}")
    return output


# ----- generated repositories


def make_repo(root: str, spec: str, tasks_md: str, claude: str = INSTANT_CLAUDE,
              jobs: int = 8, extra_toml: str = "", files: Optional[Dict[str, str]] = None) -> str:
    """A repository (a `.claude/` dir marks the root) with one spec and a qw.toml that never
    retries and runs tasks that declare nothing in parallel."""
    spec_dir = os.path.join(root, ".claude", "specs", spec)
    os.makedirs(spec_dir, exist_ok=True)
    with open(os.path.join(spec_dir, "tasks.md"), "w") as f:
        f.write(tasks_md)
    for rel, text in (files or {}).items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    with open(os.path.join(root, "qw.toml"), "w") as f:
        f.write(f"[run]\nmax_concurrent = {jobs}\nmax_retries = 0\n\n"
                f'[plan]\nundeclared = "parallel"\n\n'
                # Dispatch is measured, not admission on a machine the bench itself loads.
                f"[resources]\ncpu_limit_percent = 100\nmemory_limit_percent = 100\n"
                f"memory_reserve_mb = 0\nper_task_memory_mb = 0\n\n"
                f"[claude]\ncommand = {json.dumps(claude)}\n{extra_toml}")
    return root


def independent_tasks(n: int) -> str:
    """n tasks that declare nothing: with undeclared = "parallel", no edges at all."""
    return "# Tasks\n\n" + "".join(f"- [ ] {i}. Instant unit {i}\n  - Does its part\n"
                                   for i in range(1, n + 1))


def layered_tasks(levels: int, width: int) -> str:
    """levels x width tasks; each task below the first level needs two of the level above
    (the same column and the next one), so every level waits for the one before it."""
    out = ["# Tasks\n\n"]
    for level in range(levels):
        for col in range(width):
            tid = level * width + col + 1
            out.append(f"- [ ] {tid}. Level {level + 1} unit {col + 1}\n  - Sleeps\n")
            if level:
                a = (level - 1) * width + col + 1
                b = (level - 1) * width + (col + 1) % width + 1
                out.append(f"  - _Depends: {a}, {b}_\n")
    return "".join(out)


def big_spec_files(n: int, chain_every: int = 100) -> Dict[str, str]:
    """A generated n-task spec as a user might write it: each task names its own file and
    a requirement; task i needs task i - chain_every (chain_every chains of n/chain_every)."""
    lines = ["# Tasks: big\n\n"]
    for i in range(1, n + 1):
        path = f"src/m{i % chain_every}/u{i}.py"
        lines.append(f"- [ ] {i}. Implement unit {i} in {path}\n  - File: {path}\n"
                     f"  - Make unit {i} do its part\n  - _Requirements: {1 + i % 5}.1_\n")
        if i > chain_every:
            lines.append(f"  - _Depends: {i - chain_every}_\n")
    requirements = "# Requirements\n\n" + "".join(
        f"### Requirement {k}: Part {k}\n\n#### Acceptance Criteria\n\n"
        f"1. WHEN unit work {k} is asked THEN the system SHALL do it\n\n" for k in range(1, 6))
    design = "# Design\n\n## Layout\n\nsrc/ holds the units, one module each.\n"
    return {".claude/specs/big/tasks.md": "".join(lines),
            ".claude/specs/big/requirements.md": requirements,
            ".claude/specs/big/design.md": design}


# ----- processes


def bench_env(**extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("QW_", "QUANTUMWALA_")) and k not in ("PYTHONPATH", "CLAUDECODE")}
    name, value = MARK.split("=", 1)
    env[name] = value
    env.update(extra)
    return env


@dataclass
class Timed:
    """One finished (or stopped) process: wall seconds, exit code, the CPU seconds of it and
    every descendant it waited for, and its output."""

    wall: float
    code: Optional[int]
    cpu: float
    out: str = ""
    timed_out: bool = False
    peak_rss: Dict[str, int] = field(default_factory=dict)
    cpu_samples: List[Tuple[float, float, float]] = field(default_factory=list)


def run_timed(argv: List[str], cwd: str, env: Dict[str, str], timeout: float,
              sample: bool = False, stop_grace: float = 10.0) -> Timed:
    """Run argv in a session of its own; on timeout SIGINT it, then SIGKILL its group after
    stop_grace. Output goes to a file (not a terminal: qw prints plain lines then)."""
    out_path = os.path.join(cwd, f".bench-out-{uuid.uuid4().hex[:8]}")
    with open(out_path, "w+") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        sampler = ProcessSampler(proc.pid, cwd) if sample else None
        timed_out = False
        status = _wait4(proc.pid, timeout)
        if status is None:
            timed_out = True
            _signal_group(proc.pid, signal.SIGINT)
            status = _wait4(proc.pid, stop_grace)
            if status is None:
                _signal_group(proc.pid, signal.SIGKILL)
                status = _wait4(proc.pid, 60.0)
        wall = time.perf_counter() - started
        proc.returncode = 0   # reaped by _wait4: keep Popen from waiting again
        if sampler is not None:
            sampler.stop()
        out.seek(0)
        text = out.read()
    os.unlink(out_path)
    pid_status, usage = status if status is not None else (None, None)
    code = os.waitstatus_to_exitcode(pid_status) if pid_status is not None else None
    cpu = (usage.ru_utime + usage.ru_stime) if usage is not None else float("nan")
    cpu += _reap_orphans(10.0)
    return Timed(wall, code, cpu, text, timed_out, sampler.peak if sampler else {},
                 sampler.cpu if sampler else [])


def become_subreaper() -> None:
    """Orphans of what this process starts are re-parented to it (Linux prctl 36), so
    that their CPU time is counted too: qw's fork server and its forks are not children
    of the process qw runs in, and outlive it by a moment."""
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)


def _reap_orphans(bound: float) -> float:
    """Wait (at most `bound` seconds) for every child left to this process (orphans it
    took in as a subreaper); the CPU seconds they and what they reaped used."""
    cpu = 0.0
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        try:
            pid, _status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid:
            cpu += usage.ru_utime + usage.ru_stime
        else:
            time.sleep(0.01)
    return cpu


def _wait4(pid: int, timeout: float):
    """(status, rusage) once pid exits within timeout, else None. rusage covers pid and
    every descendant that was waited for (workers, guards, children)."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        got, status, usage = os.wait4(pid, os.WNOHANG)
        if got == pid:
            return status, usage
        if time.monotonic() >= deadline:
            return None
        time.sleep(delay)   # polling: wait4 has no timeout; the delay grows to 20 ms
        delay = min(delay * 2, 0.02)


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except OSError:
        pass


def marked_processes() -> List[int]:
    """Living processes (not this one) whose environment carries this bench's MARK."""
    wanted = MARK.encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if wanted in f.read().split(b"\0"):
                    found.append(int(name))
        except OSError:
            continue
    return found


def stop_leftovers(bound: float = 20.0) -> List[int]:
    """Wait up to bound for this bench's processes to go (a stopped run's guards sweep their
    trees), then SIGKILL those left, by pid. Returns the pids that had to be killed."""
    deadline = time.monotonic() + bound
    while True:
        left = marked_processes()
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return left


# ----- memory of qw's own processes


def _proc_table() -> Dict[int, int]:
    """{pid: ppid} of every process."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        table[int(name)] = int(stat[stat.rfind(b")") + 2:].split()[1])
    return table


def _role(pid: int, root: int, ppid: Optional[int] = None) -> Optional[str]:
    """"runner", "guard", "helper" (multiprocessing's fork server or resource tracker) or
    "spawned" (the state owner or a worker) for one of qw's own Python processes; None for
    anything else (the claude children and what they start). A guard is started as
    `python -c ... qw.guard` or forked from its worker (then it leads its own session)."""
    if pid == root:
        return "runner"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
    except OSError:
        return None
    if b"qw.guard" in cmd:
        return "guard"
    if b"multiprocessing" not in cmd:
        return None
    # The fork server's forks (workers, the state owner, guards) carry its command line.
    if b"resource_tracker" in cmd or (b"forkserver import main" in cmd and ppid == root):
        return "helper"
    try:
        return "guard" if os.getsid(pid) == pid else "spawned"
    except OSError:
        return None


def _owner_pid(repo: str) -> Optional[int]:
    """The state owner's pid, from the owner.json it advertises while it serves."""
    runs = os.path.join(repo, ".qw", "runs")
    try:
        names = sorted(os.listdir(runs), reverse=True)
    except OSError:
        return None
    for name in names:
        try:
            with open(os.path.join(runs, name, "owner.json")) as f:
                return int(json.load(f)["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def _rss_and_cpu(pid: int) -> Tuple[int, float]:
    """(resident bytes, CPU seconds so far) of one process; (0, 0.0) if it is gone. The
    resident bytes are its proportional share (PSS): qw's workers and guards are forks
    that share their pages, which RSS would count once per process."""
    try:
        rss = _pss(pid)
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (OSError, IndexError, ValueError):
        return 0, 0.0
    fields = stat[stat.rfind(b")") + 2:].split()
    return rss, (int(fields[11]) + int(fields[12])) / TICKS   # utime, stime


def _pss(pid: int) -> int:
    """Bytes: Pss from /proc/PID/smaps_rollup (Linux 4.14+), else RSS from statm."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except FileNotFoundError:
        pass
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


class ProcessSampler:
    """Samples qw's own processes under `root` every `every` seconds, from a thread: the
    runner, the state owner, the workers and the guards (not the claude children).

    `peak`: {"total", "runner", "owner", "workers", "guards", "helpers"} PSS in bytes at the sample
    where the total was highest. `cpu`: [(time.time(), runner CPU s, owner CPU s)] per
    sample, for the CPU each spends per task while the run goes (see cpu_per_task)."""

    def __init__(self, root: int, repo: str, every: float = 0.2):
        self.root = root
        self.repo = repo
        self.owner: Optional[int] = None
        self.every = every
        self.peak: Dict[str, int] = {}
        self.cpu: List[Tuple[float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.every)

    def _sample(self) -> None:
        now = time.time()
        table = _proc_table()
        if self.root not in table:
            return
        children: Dict[int, List[int]] = {}
        for pid, ppid in table.items():
            children.setdefault(ppid, []).append(pid)
        tree, i = [self.root], 0
        while i < len(tree):
            tree.extend(children.get(tree[i], ()))
            i += 1
        sums = {"runner": 0, "owner": 0, "workers": 0, "guards": 0, "helpers": 0}
        cpu = {"runner": 0.0, "owner": 0.0}
        if self.owner is None:
            self.owner = _owner_pid(self.repo)
        for pid in tree:
            role = _role(pid, self.root, table.get(pid))
            if role == "spawned":
                role = "owner" if pid == self.owner else "workers"
            elif role in ("guard", "helper"):
                role += "s"
            if role is None:
                continue
            rss, seconds = _rss_and_cpu(pid)
            sums[role] += rss
            if role in cpu:
                cpu[role] += seconds
        sums["total"] = sum(sums.values())
        if sums["total"] > self.peak.get("total", 0):
            self.peak = sums
        self.cpu.append((now, cpu["runner"], cpu["owner"]))


def cpu_per_task(samples: List[Tuple[float, float, float]],
                 end_times: List[float]) -> Tuple[float, float]:
    """(runner, owner) CPU seconds per finished attempt while the run goes: the CPU between
    the first sample after the first attempt ended and the last sample before the last one
    did, over the attempts that ended in between (startup and shutdown left out)."""
    if not end_times or len(samples) < 2:
        return float("nan"), float("nan")
    first, last = min(end_times), max(end_times)
    inside = [s for s in samples if first <= s[0] <= last and s[1] > 0]
    if len(inside) < 2:
        return float("nan"), float("nan")
    a, b = inside[0], inside[-1]
    ended = sum(1 for t in end_times if a[0] < t <= b[0])
    if not ended:
        return float("nan"), float("nan")
    return (b[1] - a[1]) / ended, (b[2] - a[2]) / ended


# ----- the run journal


def journal(repo: str) -> List[dict]:
    """The newest run's events in repo (the "c" checksums left in)."""
    runs = os.path.join(repo, ".qw", "runs")
    newest = sorted(os.listdir(runs))[-1]
    with open(os.path.join(runs, newest, "events.jsonl"), "rb") as f:
        return [json.loads(line) for line in f if line.strip()]


def journal_size(repo: str) -> Tuple[int, int]:
    """(bytes of the newest run's journal, bytes of its run_started line, which lists every
    task of the spec once)."""
    runs = os.path.join(repo, ".qw", "runs")
    newest = sorted(os.listdir(runs))[-1]
    with open(os.path.join(runs, newest, "events.jsonl"), "rb") as f:
        data = f.read()
    started = next((len(line) + 1 for line in data.split(b"\n")
                    if b'"type":"run_started"' in line), 0)
    return len(data), started


@dataclass
class RunFigures:
    """What one run's journal says about its schedule and its per-task costs."""

    tasks_done: int
    makespan: float            # first attempt_started -> last attempt_ended (runner clock)
    durations: List[float]     # each attempt as its worker timed it (start child -> result)
    messaging: List[float]     # runner dispatch -> runner records the end, minus duration
    turnaround: List[float]    # runner records an end -> next dispatch on that worker
    rate_first: float = 0.0    # tasks/s over the first and the last tenth of the ends
    rate_last: float = 0.0
    end_times: List[float] = field(default_factory=list)   # runner clock (time.time())
    # first child start (an attempt's end as the runner saw it, minus its duration) -> last
    # result: the makespan without the wait for the pool's first worker to come up
    child_span: float = float("nan")


def run_figures(events: List[dict]) -> RunFigures:
    starts = [e for e in events if e.get("type") == "attempt_started"]
    ends = [e for e in events if e.get("type") == "attempt_ended"]
    done = sum(1 for e in events if e.get("type") == "task_done")
    if not starts or not ends:
        return RunFigures(done, float("nan"), [], [], [])
    start_of = {(e["task"], e["attempt"]): e for e in starts}
    durations, messaging = [], []
    for e in ends:
        s = start_of.get((e["task"], e["attempt"]))
        durations.append(e["duration_s"])
        if s is not None:
            messaging.append(e["t"] - s["t"] - e["duration_s"])
    # Turnaround: for each worker, the gap between an end and its next start.
    worker_of = {(e["task"], e["attempt"]): e["worker"] for e in starts}
    timeline = sorted([(e["t"], "start", e["worker"]) for e in starts]
                      + [(e["t"], "end", worker_of.get((e["task"], e["attempt"])))
                         for e in ends])
    last_end: Dict[object, float] = {}
    turnaround = []
    for t, kind, worker in timeline:
        if kind == "end":
            last_end[worker] = t
        elif worker in last_end:
            turnaround.append(t - last_end.pop(worker))
    end_times = sorted(e["t"] for e in ends)
    tenth = max(2, len(end_times) // 10)
    rate = lambda ts: (len(ts) - 1) / (ts[-1] - ts[0]) if len(ts) > 1 and ts[-1] > ts[0] else 0.0
    first_child = min(e["t"] - e["duration_s"] for e in ends)
    return RunFigures(done, max(end_times) - min(e["t"] for e in starts), durations,
                      messaging, turnaround, rate(end_times[:tenth]), rate(end_times[-tenth:]),
                      end_times, max(end_times) - first_child)
