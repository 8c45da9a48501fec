"""End-to-end test kit: qw.pyz run on a scratch git repository, driving the real claude CLI.

    build_pyz(dir)                       qw.pyz built from this checkout, as a user gets it
    make_repo(dir, claude, directives)   a git repository holding the "inventory" spec below,
                                         two agents, and a qw.toml that runs `claude`
    Qw(pyz, repo, env, *args)            one `python qw.pyz ...` process in its own session
    checkboxes(tasks_md)                 task id -> its mark in tasks.md
    processes_with(*markers)             pids whose environment holds each NAME=value (/proc)
    wait_for_no_processes(marker, t)     the ones still alive after a bounded wait

The spec's tasks carry the fake API's script (`- FAKE: write ...` detail lines, see
fakeapi.py), so the fake model does exactly what each task asks; `directives` adds lines to
chosen tasks (a failure, a hang) without changing the rest.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent
SPEC = "inventory"

# What the spec's tasks leave in the repository when every one of them ran, in order.
EXPECTED_FILES = {
    "src/inventory/__init__.py": 'VERSION = "1.0"\nfrom .pricing import price\n',
    "src/inventory/stock.py": "class Stock: pass",
    "src/inventory/pricing.py": "def price(n): return n * 2",
    "tests/test_stock.py": "from inventory.stock import Stock",
    "docs/guide.md": "# Guide\n## Pricing\n",
    "config/settings.toml": "[inventory]",
    "CHANGELOG.md": "## 1.0",
}
AGENT_TASKS = {"3": "backend-dev", "6": "docs-writer"}

# Nine tasks. Edges: explicit (_Depends:) and inferred from a shared file: 5 appends to the
# file 1 writes, 8 to the file 6 writes; the appends would be lost if they ran first.
# Ready at the start: 1, 3, 6 and 7; three of them spend a second in Bash, so at -j 3 they
# overlap. {n} marks where a test's extra directives for task n go.
TASKS_MD = """\
# Tasks: inventory service

- [ ] 1. Create the package in src/inventory/__init__.py
  - File: src/inventory/__init__.py
  - Expose the version number
  - _Requirements: 1.1_
  - FAKE: write src/inventory/__init__.py <<VERSION = "1.0">>
  - FAKE: bash sleep 1
{1}
- [ ] 2. Stock model
  - File: src/inventory/stock.py
  - _Depends: 1_
  - _Requirements: 1.2_
  - FAKE: write src/inventory/stock.py <<class Stock: pass>>
{2}
- [ ] 3. Pricing rules
  - File: src/inventory/pricing.py
  - _Agent: backend-dev_
  - _Requirements: 2.1_
  - FAKE: write src/inventory/pricing.py <<def price(n): return n * 2>>
  - FAKE: bash sleep 1
{3}
- [ ] 4. Tests for the stock model
  - File: tests/test_stock.py
  - _Depends: 2_
  - FAKE: write tests/test_stock.py <<from inventory.stock import Stock>>
{4}
- [ ] 5. Export the pricing function from the package
  - File: src/inventory/__init__.py
  - _Depends: 3_
  - FAKE: bash <<printf '\\nfrom .pricing import price\\n' >> src/inventory/__init__.py>>
{5}
- [ ] 6. User guide
  - File: docs/guide.md
  - _Agent: docs-writer_
  - FAKE: write docs/guide.md <<# Guide>>
{6}
- [ ] 7. Default settings
  - File: config/settings.toml
  - _Requirements: 3.1_
  - FAKE: write config/settings.toml <<[inventory]>>
  - FAKE: bash sleep 1
{7}
- [ ] 8. Pricing section of the user guide
  - File: docs/guide.md
  - FAKE: bash <<printf '\\n## Pricing\\n' >> docs/guide.md>>
{8}
- [ ] 9. Changelog for the release
  - File: CHANGELOG.md
  - _Depends: 5, 8_
  - FAKE: write CHANGELOG.md <<## 1.0>>
{9}"""

REQUIREMENTS_MD = """\
# Requirements Document

## Requirements

### Requirement 1: The package

**User Story:** As a developer, I want one importable package, so that code can use it.

#### Acceptance Criteria

1. WHEN the package is imported THEN it SHALL expose its version
2. WHEN stock is recorded THEN the system SHALL keep it in a stock model

### Requirement 2: Pricing

#### Acceptance Criteria

1. WHEN a quantity is priced THEN the system SHALL return twice the quantity

### Requirement 3: Configuration

#### Acceptance Criteria

1. WHEN the service starts THEN it SHALL read defaults from config/settings.toml
"""

DESIGN_MD = """\
# Design: inventory service

## Package layout

src/inventory/__init__.py re-exports the public functions; pricing lives in
src/inventory/pricing.py and the stock model in src/inventory/stock.py.
"""

AGENTS = {
    "backend-dev": ("haiku", ("Read", "Write", "Edit", "Bash"),
                    "You are BACKEND-DEV-7F3A, a careful Python developer.\n"
                    "Keep modules small and typed."),
    "docs-writer": ("sonnet", ("Read", "Write"),
                    "You are DOCS-WRITER-19C2. Write plain, short documentation."),
}


def build_pyz(directory: Path) -> Path:
    """qw.pyz built by build_zipapp.py from this checkout into `directory`."""
    output = directory / "qw.pyz"
    done = subprocess.run([sys.executable, str(REPO_ROOT / "build_zipapp.py"), "-o",
                           str(output)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError("build_zipapp.py failed: " + done.stdout)
    return output


def tasks_md(directives: Optional[Dict[str, Sequence[str]]] = None) -> str:
    """The spec's tasks.md, with `directives` (task id -> FAKE: lines) added to tasks."""
    text = TASKS_MD
    for n in range(1, 10):
        lines = (directives or {}).get(str(n), ())
        text = text.replace("{%d}" % n, "".join(f"  - FAKE: {line}\n" for line in lines))
    return text


def agent_file(name: str) -> str:
    model, tools, prompt = AGENTS[name]
    return (f"---\nname: {name}\ndescription: The {name} of the inventory team\n"
            f"model: {model}\ntools: {', '.join(tools)}\n---\n{prompt}\n")


def make_repo(root: Path, claude: str, directives: Optional[Dict[str, Sequence[str]]] = None,
              config: str = "") -> Path:
    """A committed git repository with the spec, the agents and a qw.toml; its path.

    `config` is more qw.toml text (e.g. a [run] table); [claude] is always set: the CLI
    found for the tests, acceptEdits (qw's default) and Bash allowed.
    """
    root.mkdir(parents=True, exist_ok=True)
    files = {
        f".claude/specs/{SPEC}/tasks.md": tasks_md(directives),
        f".claude/specs/{SPEC}/requirements.md": REQUIREMENTS_MD,
        f".claude/specs/{SPEC}/design.md": DESIGN_MD,
        # [resources]: the tests measure qw's concurrency, not this machine's load (other
        # suites run beside them); cpu_limit_percent = 100 never holds a task.
        "qw.toml": (f"[claude]\ncommand = {json.dumps(claude)}\n"
                    'allowed_tools = ["Bash"]\n\n'
                    "[resources]\ncpu_limit_percent = 100\nmemory_limit_percent = 100\n"
                    "memory_reserve_mb = 0\nper_task_memory_mb = 0\n\n" + config),
        ".gitignore": ".qw/\n",
    }
    files.update({f".claude/agents/{name}.md": agent_file(name) for name in AGENTS})
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    git = ["git", "-c", "user.name=qw tests", "-c", "user.email=qw@example.invalid",
           "-c", "commit.gpgsign=false"]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "the spec"]):
        subprocess.run(git + command, cwd=str(root), check=True, timeout=60,
                       stdout=subprocess.DEVNULL)
    return root


class Qw:
    """One `python qw.pyz ARGS` process in `repo`, in its own session (so that a test can
    signal qw alone, as a Ctrl-C aimed at it would, and clean up its group)."""

    def __init__(self, pyz: Path, repo: Path, env: Dict[str, str], *args: str) -> None:
        self.args = args
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, str(pyz), *args], cwd=str(repo),
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     universal_newlines=True, start_new_session=True)
        self.out = self.err = ""
        self.seconds = 0.0

    def finish(self, timeout: float) -> int:
        """Wait for qw to exit (killing it and raising AssertionError past `timeout`)."""
        try:
            self.out, self.err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"qw {' '.join(self.args)} did not exit within {timeout:.0f}s"
                                 f"\nstdout: {self.out}\nstderr: {self.err}") from None
        self.seconds = time.monotonic() - self.started
        return self.proc.returncode

    def interrupt(self, group: bool = False) -> None:
        """SIGINT to qw alone, or to its whole process group as a terminal's Ctrl-C does
        (qw's own processes; the children run in sessions of their own)."""
        if group:
            os.killpg(self.proc.pid, signal.SIGINT)
        else:
            self.proc.send_signal(signal.SIGINT)

    def kill(self) -> None:
        """SIGKILL qw's process group (a failing test's way out), and collect its output."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.out, self.err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # a grandchild still holds the pipes
            pass

    def json(self) -> dict:
        """The JSON document `run --json` printed on stdout."""
        try:
            return json.loads(self.out)
        except ValueError:
            raise AssertionError(f"qw printed no JSON document\nstdout: {self.out}\n"
                                 f"stderr: {self.err}") from None

    def explain(self) -> str:
        """The exit code and output, for assertion messages."""
        return f"exit {self.proc.returncode}\nstdout: {self.out}\nstderr: {self.err}"


_CHECKBOX = re.compile(r"^\s*[-*+] \[(.)\] (\d+(?:\.\d+)*)\.?\s", re.M)


def checkboxes(path: Path) -> Dict[str, str]:
    """Task id -> the mark between its brackets in tasks.md (" ", "x", "-", "~")."""
    return {m.group(2): m.group(1) for m in _CHECKBOX.finditer(path.read_text())}


def processes_with(*markers: str) -> List[int]:
    """Live processes whose environment holds every one of `markers` ("NAME=value").

    Read from /proc; a process that ends while being read, or is not ours, is left out.
    """
    wanted = {marker.encode() for marker in markers}
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as environ:
                variables = environ.read().split(b"\0")
            with open(f"/proc/{entry}/stat", "rb") as stat:
                if stat.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    continue  # a zombie has exited; only its parent's wait() is missing
        except (OSError, IndexError):
            continue
        if wanted <= set(variables):
            found.append(int(entry))
    return found


def wait_for_no_processes(marker: str, timeout: float) -> List[int]:
    """Poll until no live process holds `marker`; the ones still there at `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        left = processes_with(marker)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


def describe_processes(pids: Iterable[int]) -> str:
    """pid and command line of each, for assertion messages."""
    lines = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                command = cmdline.read().replace(b"\0", b" ").decode(errors="replace")
            lines.append(f"{pid}: {command}")
        except OSError:
            lines.append(f"{pid}: (gone)")
    return "\n".join(lines)


def kill_processes(pids: Iterable[int]) -> None:
    """SIGKILL each pid (a test's own strays, found by its marker)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
