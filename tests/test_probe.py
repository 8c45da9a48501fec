"""qw.probe: machine figures and process-tree usage from psutil and from the standard library.

Both backends run against this machine and real processes; the macOS and Windows paths of
the standard-library backend run against recorded command output and a fake kernel32.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import textwrap

import pytest

from qw import probe
from qw.probe import PsutilProbe, Snapshot, StdlibProbe, TreeUsage

DEADLINE_S = 60
ALLOC_MB = 200
linux_only = pytest.mark.skipif(not os.path.exists("/proc/meminfo"), reason="reads /proc")


# "... scan": the walk of the whole process table, which machines without /proc's children
# files (and macOS, through ps) use; the others follow the children files where they exist.
@pytest.fixture(params=["stdlib", "psutil", "stdlib scan", "psutil scan"])
def backend(request) -> probe.Probe:
    scan = False if request.param.endswith(" scan") else None
    if request.param.startswith("stdlib"):
        return StdlibProbe(children_files=scan)
    return PsutilProbe(pytest.importorskip("psutil"), children_files=scan)


def meminfo_kib(key: str) -> int:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


# --- this machine ----------------------------------------------------------------------------

@linux_only
def test_snapshot_figures_are_sane(backend):
    snap = backend.snapshot()
    assert snap.backend == backend.backend
    assert snap.cpu_count == os.cpu_count()
    total_mb = meminfo_kib("MemTotal") / 1024
    assert abs(snap.memory_total_mb - total_mb) <= 0.1 * total_mb
    assert 0 < snap.memory_available_mb <= snap.memory_total_mb
    assert 0 <= snap.memory_used_percent <= 100
    expected_used = 100 * (1 - snap.memory_available_mb / snap.memory_total_mb)
    assert abs(snap.memory_used_percent - expected_used) < 0.2
    assert snap.load1 >= 0
    assert snap.load_per_cpu_percent == pytest.approx(100 * snap.load1 / snap.cpu_count,
                                                      abs=0.5)


def test_get_probe_prefers_the_environments_psutil():
    psutil = pytest.importorskip("psutil")
    got = probe.get_probe()
    assert isinstance(got, PsutilProbe)
    snap = got.snapshot()
    assert snap.backend == "psutil"
    assert snap.note == f"psutil {psutil.__version__} from the environment ({psutil.__file__})"


def test_importing_the_probe_imports_no_psutil():
    code = "import sys, qw.probe; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", "import json; " + code], cwd=str(_repo()),
                          stdout=subprocess.PIPE, universal_newlines=True, timeout=DEADLINE_S)
    modules = json.loads(done.stdout)
    assert [m for m in modules if m.split(".")[0] == "psutil" or m == "qw.vendor"] == []


def _repo():
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- process trees -------------------------------------------------------------------------

# The root starts a child and waits for it. The child burns some CPU, fills ALLOC_MB of
# memory (every page touched), reports its own CPU time, and holds on until stdin closes.
TREE_ROOT = textwrap.dedent("""\
    import subprocess, sys
    subprocess.run([sys.executable, "-c", sys.argv[1], sys.argv[2]])
""")
TREE_CHILD = textwrap.dedent("""\
    import sys, time
    start = time.process_time()
    while time.process_time() - start < 0.3:
        pass
    block = b"\\x01" * (int(sys.argv[1]) << 20)
    print(time.process_time(), flush=True)
    sys.stdin.read()
""")


def read_line_within(stream, seconds: float) -> str:
    ready, _, _ = select.select([stream], [], [], seconds)
    if not ready:
        pytest.fail(f"no line from the process tree within {seconds}s")
    return stream.readline()


@pytest.mark.skipif(os.name == "nt", reason="select() on a pipe")
def test_tree_usage_counts_the_whole_tree(backend):
    root = subprocess.Popen([sys.executable, "-c", TREE_ROOT, TREE_CHILD, str(ALLOC_MB)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            universal_newlines=True)
    try:
        child_cpu = float(read_line_within(root.stdout, DEADLINE_S))
        # What the worker does: sample, keep the peak.
        samples = [backend.tree_usage(root.pid) for _ in range(3)]
        peak = max(sample.rss_mb for sample in samples)
        assert abs(peak - ALLOC_MB) <= 0.2 * ALLOC_MB, samples
        assert samples[-1].cpu_s >= child_cpu - 0.05, (samples, child_cpu)
    finally:
        root.stdin.close()
        root.wait(DEADLINE_S)
    assert backend.tree_usage(root.pid) is None  # gone and reaped


REAPS_A_CHILD = textwrap.dedent("""\
    import subprocess, sys
    burn = "import time\\nt = time.process_time()\\nwhile time.process_time() - t < 0.3: pass"
    subprocess.run([sys.executable, "-c", burn])
    print("reaped", flush=True)
    sys.stdin.read()
""")


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="children's times from /proc")
def test_tree_cpu_includes_children_already_reaped(backend):
    root = subprocess.Popen([sys.executable, "-c", REAPS_A_CHILD], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, universal_newlines=True)
    try:
        assert read_line_within(root.stdout, DEADLINE_S) == "reaped\n"
        usage = backend.tree_usage(root.pid)
        assert usage.cpu_s >= 0.25, usage
    finally:
        root.stdin.close()
        root.wait(DEADLINE_S)


def test_tree_usage_of_a_pid_that_never_was_is_none(backend):
    assert backend.tree_usage(2 ** 22 + 12345) is None  # above Linux's pid_max


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="compares ps with /proc")
def test_ps_table_agrees_with_proc():
    with_ps = StdlibProbe(proc="/nonexistent")
    usage = with_ps.tree_usage(os.getpid())
    direct = StdlibProbe().tree_usage(os.getpid())
    assert usage is not None
    assert abs(usage.rss_mb - direct.rss_mb) <= 0.2 * direct.rss_mb
    assert usage.cpu_s <= direct.cpu_s + 1  # ps shows whole seconds on Linux


# A child started from a thread other than the main one: /proc lists it under that thread
# for as long as the thread lives (then under another of its process's threads).
FROM_A_THREAD = textwrap.dedent("""\
    import subprocess, sys, threading
    done = threading.Event()
    code = "import os, sys; print(os.getpid(), flush=True); sys.stdin.read()"
    def starter():
        child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE)
        done.wait()
        child.stdin.close()
        child.wait()
    thread = threading.Thread(target=starter)
    thread.start()
    sys.stdin.read()
    done.set()
    thread.join()
""")


@pytest.mark.skipif(os.name == "nt", reason="select() on a pipe")
def test_tree_usage_finds_a_child_started_by_a_thread(backend):
    root = subprocess.Popen([sys.executable, "-c", FROM_A_THREAD], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, universal_newlines=True)
    try:
        child = int(read_line_within(root.stdout, DEADLINE_S))
        usage = backend.tree_usage(root.pid)
        both = rss_mb(root.pid) + rss_mb(child)
        assert abs(usage.rss_mb - both) <= 0.1 * both, (usage, both)
    finally:
        root.stdin.close()
        root.wait(DEADLINE_S)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def fake_proc(root, processes) -> str:
    """A /proc holding only `processes`: {pid: (ppid, state, cpu ticks, rss pages,
    {tid: [children]})}."""
    for pid, (ppid, state, ticks, pages, threads) in processes.items():
        # Fields from 3 on: state ppid, then 9 zeros, utime stime cutime cstime (14-17),
        # then 6 zeros, rss (24); the name holds a space and a parenthesis.
        fields = [state, str(ppid)] + ["0"] * 9 + [str(ticks), "0", "0", "0"] \
            + ["0"] * 6 + [str(pages), "0"]
        os.makedirs(os.path.join(root, str(pid), "task"))
        with open(os.path.join(root, str(pid), "stat"), "w") as f:
            f.write(f"{pid} (a (b) c) " + " ".join(fields) + "\n")
        for tid, children in threads.items():
            os.makedirs(os.path.join(root, str(pid), "task", str(tid)))
            with open(os.path.join(root, str(pid), "task", str(tid), "children"), "w") as f:
                f.write("".join(f"{c} " for c in children))
    return str(root)


def test_children_files_follow_only_the_tree(tmp_path):
    ticks, page = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
    proc = fake_proc(tmp_path, {
        100: (1, "S", ticks, 256, {100: [], 102: [101]}),   # 101 was forked by thread 102
        101: (100, "S", 2 * ticks, 512, {101: [103, 104]}),
        103: (101, "R", ticks, 256, {103: []}),
        104: (101, "Z", ticks, 0, {}),                        # a zombie: CPU, no memory
        # Not in any children file (gone from the tree between the reads): a walk of the
        # table would count it by its ppid; the children files say it is not there.
        999: (100, "S", 100 * ticks, 100000, {999: []}),
    })
    usage = StdlibProbe(proc=proc, children_files=True).tree_usage(100)
    assert usage == TreeUsage(rss_mb=round(1024 * page / (1 << 20), 1), cpu_s=5.0)
    assert StdlibProbe(proc=proc, children_files=True).tree_usage(105) is None
    scanned = StdlibProbe(proc=proc, children_files=False).tree_usage(100)
    assert scanned.cpu_s == 104.0   # the scan finds 999 through its ppid


@linux_only
def test_this_machine_has_children_files_and_they_agree_with_a_scan():
    # Where the kernel has them (CONFIG_PROC_CHILDREN: every distribution's), a worker's
    # samples read only the child's tree.
    me = os.getpid()
    assert os.path.exists(f"/proc/{me}/task/{me}/children")
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        walked = StdlibProbe().tree_usage(me)
        scanned = StdlibProbe(children_files=False).tree_usage(me)
        assert abs(walked.rss_mb - scanned.rss_mb) <= 0.1 * scanned.rss_mb
        assert walked.rss_mb > StdlibProbe().tree_usage(sleeper.pid).rss_mb
    finally:
        sleeper.kill()
        sleeper.wait(DEADLINE_S)


def test_shared_probe_is_found_once():
    assert probe.shared_probe() is probe.shared_probe()
    assert probe.shared_probe() is not None


# --- other platforms, played with their outputs --------------------------------------------

# `vm_stat` on an 8 GB Apple M1 (16 KB pages).
VM_STAT = """\
Mach Virtual Memory Statistics: (page size of 16384 bytes)
Pages free:                                5000.
Pages active:                            200000.
Pages inactive:                          150000.
Pages speculative:                         3000.
Pages throttled:                              0.
Pages wired down:                         90000.
Pages purgeable:                           2000.
"Translation faults":                  99999999.
Pages copy-on-write:                    1234567.
Pages zero filled:                     12345678.
Pages reactivated:                        12345.
Pages purged:                              1234.
File-backed pages:                       100000.
Anonymous pages:                         253000.
Pages stored in compressor:              300000.
Pages occupied by compressor:             60000.
"""


def test_macos_memory_from_sysctl_and_vm_stat():
    answers = {"sysctl -n hw.memsize": "8589934592\n", "vm_stat": VM_STAT}
    mac = StdlibProbe(sys_platform="darwin", run=lambda argv: answers[" ".join(argv)])
    snap = mac.snapshot()
    assert snap.memory_total_mb == 8192.0
    assert snap.memory_available_mb == pytest.approx((5000 + 150000 + 3000) / 64, abs=0.1)
    assert snap.memory_used_percent == pytest.approx(100 * (1 - 2468.75 / 8192), abs=0.1)


def test_macos_memory_unknown_when_the_commands_fail():
    def fail(argv):
        raise OSError(f"{argv[0]}: not found")

    snap = StdlibProbe(sys_platform="darwin", run=fail).snapshot()
    assert (snap.memory_total_mb, snap.memory_available_mb, snap.memory_used_percent) == \
        (None, None, None)


class FakeKernel32:
    """GlobalMemoryStatusEx as Windows answers it: fills the structure it is pointed at."""

    def __init__(self, total: int, available: int, ok: bool = True):
        self.total, self.available, self.ok = total, available, ok
        self.lengths = []

    def GlobalMemoryStatusEx(self, pointer):  # noqa: N802 (the Win32 name)
        status = pointer.contents
        self.lengths.append(status.dwLength)
        status.ullTotalPhys = self.total
        status.ullAvailPhys = self.available
        return 1 if self.ok else 0


def test_windows_memory_from_global_memory_status_and_no_load():
    kernel32 = FakeKernel32(total=16 << 30, available=4 << 30)
    win = StdlibProbe(sys_platform="win32", kernel32=kernel32)
    snap = win.snapshot()
    assert kernel32.lengths == [64]  # dwLength set to sizeof(MEMORYSTATUSEX), as required
    assert (snap.memory_total_mb, snap.memory_available_mb, snap.memory_used_percent) == \
        (16384.0, 4096.0, 75.0)
    assert (snap.load1, snap.load_per_cpu_percent) == (None, None)
    assert win.tree_usage(os.getpid()) is None


def test_windows_memory_unknown_when_the_call_fails():
    assert probe.windows_memory(FakeKernel32(1, 1, ok=False)) == (None, None)


# --- parsers --------------------------------------------------------------------------------

def test_meminfo_without_mem_available_uses_free_buffers_and_cache():
    old_kernel = "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 250 kB\n"
    assert probe.parse_meminfo(old_kernel) == (1024000.0, 409600.0)


@pytest.mark.parametrize("text, seconds", [
    ("00:00:03", 3.0), ("01:02:03", 3723.0), ("2-00:00:01", 172801.0),  # procps
    ("0:00.03", 0.03), ("123:45.67", 7425.67),                          # macOS
])
def test_ps_cpu_time_spellings(text, seconds):
    assert probe.parse_cpu_time(text) == pytest.approx(seconds)


def test_snapshot_and_usage_are_plain_frozen_values():
    snap = Snapshot(2, 1.0, 50.0, 100.0, 50.0, 50.0, "stdlib", "")
    with pytest.raises(AttributeError):
        snap.cpu_count = 4  # type: ignore[misc]
    assert TreeUsage(1.5, 2.0) == TreeUsage(1.5, 2.0)
