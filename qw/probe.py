"""Live machine figures for admission control and `qw resources`: two backends, one interface.

    probe = get_probe()           psutil when it can be imported (qw.vendor), else stdlib
    shared_probe() -> Probe|None  this process's one probe, found on first use (a worker's,
                                  warmed in the fork server it comes from)
    probe.snapshot() -> Snapshot  CPUs, 1-minute load, memory; which backend and why
    probe.tree_usage(pid) -> TreeUsage | None
                                  RSS now and CPU seconds so far of pid and its descendants

The standard-library backend reads os.getloadavg() and /proc on Linux, `sysctl hw.memsize`
and `vm_stat` on macOS, GlobalMemoryStatusEx on Windows (no load average there), and
sysconf elsewhere. Importing this module costs nothing: psutil is imported, and the bundled
one extracted, only when get_probe() is called.

On Linux both backends find a tree through /proc/PID/task/TID/children (CONFIG_PROC_CHILDREN,
in every distribution's kernel), which reads only the tree's own files: a walk of the
process table (psutil's children(), or /proc in full) reads every process's, a few ms a
sample on a quiet machine and tens of ms on a developer's with hundreds of processes, and
a worker samples each child that lives beyond half a second.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

MB = 1024 * 1024


@dataclass(frozen=True)
class Snapshot:
    """The machine right now. A figure the platform cannot give is None (its limit, if
    any, cannot be applied); note says where psutil came from or why it is not used."""

    cpu_count: int
    load1: Optional[float]                  # 1-minute load average; None on Windows/stdlib
    load_per_cpu_percent: Optional[float]   # 100 * load1 / cpu_count
    memory_total_mb: Optional[float]
    memory_available_mb: Optional[float]    # what can be used without swapping
    memory_used_percent: Optional[float]    # 100 * (total - available) / total
    backend: str                            # "psutil" or "stdlib"
    note: str


@dataclass(frozen=True)
class TreeUsage:
    """A process tree right now: resident memory of all its living processes, and the CPU
    time (user + system) they used, with that of children they have already reaped."""

    rss_mb: float
    cpu_s: float


class Probe:
    """What admission control and the worker ask of a backend."""

    backend = ""

    def __init__(self, note: str = "", children_files: Optional[bool] = None):
        self.note = note
        # Whether tree_usage may follow /proc's children files (None: where they exist).
        self._children_files = children_files

    def snapshot(self) -> Snapshot:
        """The machine's CPUs, load and memory right now."""
        raise NotImplementedError

    def tree_usage(self, pid: int) -> Optional[TreeUsage]:
        """RSS and CPU seconds of pid and all its descendants; None when pid is gone or
        this backend cannot see process trees here."""
        if self._children_files is None:
            self._children_files = _has_children_files(self._proc_root())
        if self._children_files:
            return children_files_usage(pid, self._proc_root())
        return self._scanned_tree_usage(pid)

    def _proc_root(self) -> str:
        return "/proc"

    def _scanned_tree_usage(self, pid: int) -> Optional[TreeUsage]:
        """tree_usage from a walk of the whole process table."""
        raise NotImplementedError

    def _snapshot(self, load1: Optional[float], total: Optional[float],
                  available: Optional[float]) -> Snapshot:
        cpus = os.cpu_count() or 1
        used = None
        if total and available is not None:
            used = round(100.0 * (total - available) / total, 1)
        return Snapshot(
            cpu_count=cpus,
            load1=None if load1 is None else round(load1, 2),
            load_per_cpu_percent=None if load1 is None else round(100.0 * load1 / cpus, 1),
            memory_total_mb=None if total is None else round(total / MB, 1),
            memory_available_mb=None if available is None else round(available / MB, 1),
            memory_used_percent=used,
            backend=self.backend,
            note=self.note)


def get_probe() -> Probe:
    """The psutil backend when psutil can be imported (the environment's, else the one
    inside qw.pyz), else the standard-library backend; the note says which and why."""
    from qw import vendor
    psutil = vendor.import_psutil()
    _backend, note = vendor.status()
    if psutil is not None:
        return PsutilProbe(psutil, note)
    return StdlibProbe(note=note)


class PsutilProbe(Probe):
    backend = "psutil"

    def __init__(self, psutil, note: str = "", children_files: Optional[bool] = None):
        super().__init__(note, children_files)
        self._psutil = psutil

    def snapshot(self) -> Snapshot:
        memory = self._psutil.virtual_memory()
        # On Windows psutil emulates the load average from a thread it starts on the first
        # call; it reads 0.0 for the first few seconds.
        load1 = self._psutil.getloadavg()[0]
        return self._snapshot(load1, float(memory.total), float(memory.available))

    def _scanned_tree_usage(self, pid: int) -> Optional[TreeUsage]:
        psutil = self._psutil
        try:
            root = psutil.Process(pid)
            processes = [root] + root.children(recursive=True)
        except psutil.Error:  # gone, or not ours to look at
            return None
        rss = 0
        cpu = 0.0
        for process in processes:
            try:
                with process.oneshot():
                    rss += process.memory_info().rss
                    times = process.cpu_times()
            except psutil.Error:
                continue  # exited while we looked
            cpu += times.user + times.system + times.children_user + times.children_system
        return TreeUsage(rss_mb=round(rss / MB, 1), cpu_s=round(cpu, 2))


class StdlibProbe(Probe):
    """The standard-library backend. The seams (platform name, /proc root, a command
    runner for macOS, kernel32 for Windows) let tests play other machines."""

    backend = "stdlib"

    def __init__(self, note: str = "", sys_platform: str = sys.platform, proc: str = "/proc",
                 run: Optional[Callable[[List[str]], str]] = None, kernel32=None,
                 children_files: Optional[bool] = None):
        super().__init__(note, children_files if sys_platform.startswith("linux") else False)
        self._platform = sys_platform
        self._proc = proc
        self._run = run or _run_command
        self._kernel32 = kernel32

    def snapshot(self) -> Snapshot:
        total, available = self._memory()
        return self._snapshot(self._load1(), total, available)

    def _proc_root(self) -> str:
        return self._proc

    def _scanned_tree_usage(self, pid: int) -> Optional[TreeUsage]:
        if self._platform == "win32":
            return None  # a Job object knows its totals, but only proctree holds the handle
        table = self._proc_table() if os.path.isdir(self._proc) else self._ps_table()
        if pid not in table:
            return None
        from qw.guard import descendants  # imported here: it is POSIX-only
        tree = [pid] + descendants(pid, {p: (row[0], row[1]) for p, row in table.items()})
        rss = sum(table[p][2] for p in tree)
        cpu = sum(table[p][3] for p in tree)
        return TreeUsage(rss_mb=round(rss / MB, 1), cpu_s=round(cpu, 2))

    def _load1(self) -> Optional[float]:
        if self._platform == "win32":
            return None  # Windows keeps no load average
        try:
            return os.getloadavg()[0]
        except OSError:  # "load average was unobtainable"
            return None

    def _memory(self) -> Tuple[Optional[float], Optional[float]]:
        """(total, available) in bytes; None for what cannot be read."""
        meminfo = os.path.join(self._proc, "meminfo")
        if self._platform.startswith("linux") and os.path.exists(meminfo):
            with open(meminfo, encoding="ascii", errors="replace") as f:
                return parse_meminfo(f.read())
        if self._platform == "darwin":
            try:
                total = float(self._run(["sysctl", "-n", "hw.memsize"]).strip())
                return total, parse_vm_stat(self._run(["vm_stat"]))
            except (OSError, ValueError):
                return None, None
        if self._platform == "win32":
            return windows_memory(self._kernel32)
        try:
            page = os.sysconf("SC_PAGE_SIZE")
            return (float(os.sysconf("SC_PHYS_PAGES") * page),
                    float(os.sysconf("SC_AVPHYS_PAGES") * page))
        except (AttributeError, ValueError, OSError):
            return None, None

    def _proc_table(self) -> Dict[int, Tuple[int, str, int, float]]:
        """{pid: (ppid, state, rss bytes, cpu seconds)} from /proc/<pid>/stat."""
        ticks = os.sysconf("SC_CLK_TCK")
        page = os.sysconf("SC_PAGE_SIZE")
        table = {}
        for name in os.listdir(self._proc):
            if not name.isdigit():
                continue
            stat = _read_stat(os.path.join(self._proc, name))
            if stat is not None:   # else it exited while we looked
                state, ppid, pages, cpu_ticks = stat
                table[int(name)] = (ppid, state, pages * page, cpu_ticks / ticks)
        return table

    def _ps_table(self) -> Dict[int, Tuple[int, str, int, float]]:
        """The same table from `ps`, where there is no /proc (macOS, BSD)."""
        try:
            out = self._run(["ps", "-A", "-o", "pid=,ppid=,stat=,rss=,time="])
        except OSError:
            return {}
        table = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 5 and parts[0].isdigit() and parts[1].isdigit():
                try:
                    table[int(parts[0])] = (int(parts[1]), parts[2][:1], int(parts[3]) * 1024,
                                            parse_cpu_time(parts[4]))
                except ValueError:
                    continue
        return table


_SHARED: list = []   # [this process's probe, or None], found on first use


def shared_probe() -> Optional[Probe]:
    """This process's probe, found once (get_probe()), or None when none can be had here: a
    broken psutil must not cost a run anything but its figures (`qw doctor` tells why)."""
    if not _SHARED:
        try:
            _SHARED.append(get_probe())
        except Exception:
            _SHARED.append(None)
    return _SHARED[0]


def _has_children_files(proc: str) -> bool:
    pid = os.getpid()
    return os.path.exists("%s/%d/task/%d/children" % (proc, pid, pid))


def _read_stat(process_dir: str) -> Optional[Tuple[str, int, int, int]]:
    """(state, ppid, RSS in pages, CPU ticks with its reaped children's) from a /proc/PID
    folder's stat file; None when it cannot be read (the process is gone)."""
    try:
        with open(process_dir + "/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: the fields follow the last ')'.
    # fields[0] is field 3 of proc(5): state, ppid, ..., utime (14), stime, cutime,
    # cstime (17), ..., rss in pages (24).
    fields = stat[stat.rfind(b")") + 2:].split()
    if len(fields) < 22:
        return None
    return (fields[0].decode("ascii", "replace"), int(fields[1]), int(fields[21]),
            int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14]))


def children_files_usage(pid: int, proc: str = "/proc") -> Optional[TreeUsage]:
    """tree_usage from /proc/PID/stat and each thread's /proc/PID/task/TID/children (a
    child belongs to the thread that forked it), breadth first; None when pid is gone.

    The kernel lists children as they are at each read: one forked or reaped during the
    walk may be missed, as between two looks at a process table. A zombie counts its CPU
    time and no memory.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    page = os.sysconf("SC_PAGE_SIZE")
    tree = [pid]
    seen = {pid}
    pages = ticks_used = 0
    for member in tree:   # grows while we walk it
        base = "%s/%d" % (proc, member)
        stat = _read_stat(base)
        if stat is None:
            if member == pid:
                return None
            continue   # exited while we looked
        pages += stat[2]
        ticks_used += stat[3]
        try:
            threads = os.listdir(base + "/task")
        except OSError:
            continue
        for tid in threads:
            try:
                with open("%s/task/%s/children" % (base, tid), "rb") as f:
                    children = f.read().split()
            except OSError:
                continue
            for child in children:
                child_pid = int(child)
                if child_pid not in seen:
                    seen.add(child_pid)
                    tree.append(child_pid)
    return TreeUsage(rss_mb=round(pages * page / MB, 1), cpu_s=round(ticks_used / ticks, 2))


def parse_meminfo(text: str) -> Tuple[Optional[float], Optional[float]]:
    """(MemTotal, MemAvailable) in bytes from /proc/meminfo's text. Kernels before 3.14
    lack MemAvailable: free + buffers + page cache stands in."""
    kib = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields = value.split()
        if fields and fields[0].isdigit():
            kib[key.strip()] = int(fields[0]) * 1024.0
    total = kib.get("MemTotal")
    available = kib.get("MemAvailable")
    if available is None and "MemFree" in kib:
        available = kib["MemFree"] + kib.get("Buffers", 0.0) + kib.get("Cached", 0.0)
    return total, available


def parse_vm_stat(text: str) -> float:
    """Available memory in bytes from macOS `vm_stat`: free + speculative + inactive pages
    (vm_stat's "free" excludes speculative pages; psutil's "available" counts all three).
    Raises ValueError when the text is not vm_stat's."""
    size = re.search(r"page size of (\d+) bytes", text)
    pages = {}
    for match in re.finditer(r"^Pages ([a-z ]+):\s+(\d+)\.?\s*$", text, re.M):
        pages[match.group(1)] = int(match.group(2))
    if size is None or "free" not in pages:
        raise ValueError("not vm_stat output")
    count = pages["free"] + pages.get("speculative", 0) + pages.get("inactive", 0)
    return float(count * int(size.group(1)))


def parse_cpu_time(text: str) -> float:
    """Seconds from ps's TIME column: [dd-][hh:]mm:ss[.cc] (Linux and macOS spellings)."""
    days, _, clock = text.rpartition("-")
    seconds = 0.0
    for part in clock.split(":"):
        seconds = seconds * 60 + float(part)
    return seconds + (int(days) * 86400 if days else 0)


def windows_memory(kernel32=None) -> Tuple[Optional[float], Optional[float]]:
    """(total, available) physical memory in bytes from GlobalMemoryStatusEx; kernel32 is
    the seam (default: the real DLL). None, None when the call fails."""
    import ctypes

    class MemoryStatusEx(ctypes.Structure):
        # DWORD and DWORDLONG spelled by size: c_ulong is 8 bytes on Linux, 4 on Windows.
        _fields_ = [("dwLength", ctypes.c_uint32), ("dwMemoryLoad", ctypes.c_uint32)] + [
            (name, ctypes.c_uint64) for name in (
                "ullTotalPhys", "ullAvailPhys", "ullTotalPageFile", "ullAvailPageFile",
                "ullTotalVirtual", "ullAvailVirtual", "ullAvailExtendedVirtual")]

    if kernel32 is None:
        kernel32 = ctypes.WinDLL("kernel32")  # type: ignore[attr-defined]
    status = MemoryStatusEx()
    status.dwLength = ctypes.sizeof(MemoryStatusEx)
    if not kernel32.GlobalMemoryStatusEx(ctypes.pointer(status)):
        return None, None
    return float(status.ullTotalPhys), float(status.ullAvailPhys)


def _run_command(argv: List[str]) -> str:
    import subprocess
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              universal_newlines=True, timeout=10, check=False)
    except subprocess.TimeoutExpired:
        raise OSError(f"{argv[0]} did not answer within 10 s") from None
    if done.returncode != 0:
        raise OSError(f"{argv[0]} exited {done.returncode}")
    return done.stdout
