"""psutil carried inside qw.pyz (qw.vendor, DESIGN §7), through a real archive and real venvs.

The archive is built once per session for this machine's platform only, from a snapshot of
the sources and a wheelhouse filled once (pip's cache makes that quick). The processes that
use it run in a venv made without pip, so no psutil but the archive's can be imported.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Dict, List

import pytest

from qw import vendor

REPO_ROOT = Path(__file__).resolve().parent.parent
DEADLINE_S = 180  # generous: two cores shared with other test runs
CROWD = 24

# What a qw process does on the way to `qw resources`: load the probe, report what it got.
# With "barrier" it first waits for EOF on stdin, so that a crowd starts at the same moment.
REPORT = """\
import json, sys
sys.path.insert(0, sys.argv[1])
if sys.argv[2:] == ["barrier"]:
    sys.stdin.read()
from qw.probe import get_probe
snapshot = get_probe().snapshot()
psutil = sys.modules.get("psutil")
print(json.dumps({"backend": snapshot.backend, "note": snapshot.note,
                  "total_mb": snapshot.memory_total_mb,
                  "psutil": psutil.__file__ if psutil else None}))
"""


def run(command: List, **kwargs) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([str(c) for c in command], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, universal_newlines=True,
                              timeout=DEADLINE_S, **kwargs)
    except subprocess.TimeoutExpired as expired:
        pytest.fail(f"{command} did not finish within {DEADLINE_S}s: {expired.output!r}")


# --- the archive and the bare interpreter ----------------------------------------------

@pytest.fixture(scope="session")
def host_key() -> str:
    key = vendor.this_platform()
    if key is None:
        pytest.skip(f"no bundled psutil serves {vendor.describe_platform()}")
    return key


@pytest.fixture(scope="session")
def builder(tmp_path_factory):
    """build_zipapp.py, from a snapshot of the sources (the working tree may change)."""
    tree = tmp_path_factory.mktemp("source")
    shutil.copy2(REPO_ROOT / "build_zipapp.py", tree / "build_zipapp.py")
    shutil.copy2(REPO_ROOT / "config.example.toml", tree / "config.example.toml")
    shutil.copytree(REPO_ROOT / "qw", tree / "qw", ignore=shutil.ignore_patterns("__pycache__"))
    spec = importlib.util.spec_from_file_location("build_zipapp_v", tree / "build_zipapp.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def pyz(tmp_path_factory, builder, host_key) -> Path:
    """qw.pyz carrying psutil for this platform only, built offline from a wheelhouse."""
    house = tmp_path_factory.mktemp("wheelhouse")
    builder.download_wheel(builder.TOMLI, house)
    builder.download_wheel(builder.PSUTIL_WHEELS[host_key], house)
    output = tmp_path_factory.mktemp("dist") / "qw.pyz"
    env = dict(os.environ, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(tmp_path_factory.mktemp("none")))
    done = run([sys.executable, Path(builder.__file__), "-o", output, "--wheelhouse", house,
                "--platform", host_key], env=env)
    assert done.returncode == 0, done.stderr
    return output


@pytest.fixture(scope="session")
def bare_python(tmp_path_factory) -> str:
    """This Python's version in a venv made without pip: psutil cannot be imported."""
    venv = tmp_path_factory.mktemp("venv")
    done = run([sys.executable, "-m", "venv", "--without-pip", venv])
    assert done.returncode == 0, done.stderr
    executable = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    assert run([executable, "-I", "-c", "import psutil"]).returncode != 0, "venv has psutil"
    return str(executable)


@pytest.fixture(scope="session")
def wheel(pyz, host_key) -> vendor.BundledWheel:
    return vendor.bundled_wheel(str(pyz), host_key)


def env_with(**changes: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("QW_CACHE_DIR", "XDG_CACHE_HOME")}
    env.update(changes)
    return env


def report(python: str, pyz, env: Dict[str, str], *extra: str) -> dict:
    done = run([python, "-I", "-c", REPORT, pyz, *extra], env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def entry_name(wheel: vendor.BundledWheel) -> str:
    return "psutil-" + wheel.sha256[:16]


# --- through the archive, in a venv without psutil ----------------------------------------

def test_fresh_venv_gets_psutil_from_the_cache_once(bare_python, pyz, wheel, tmp_path):
    cache = tmp_path / "cache"
    first = report(bare_python, pyz, env_with(QW_CACHE_DIR=str(cache)))
    assert first["backend"] == "psutil"
    entry = cache / entry_name(wheel)
    assert first["psutil"] == str(entry / "psutil" / "__init__.py")
    assert first["note"] == f"psutil 7.2.2 bundled, cached in {entry}"
    assert first["total_mb"] > 0
    assert sorted(os.listdir(cache)) == [entry.name]
    # The second run uses the entry as it is.
    marker = os.stat(entry / vendor.MARKER)
    second = report(bare_python, pyz, env_with(QW_CACHE_DIR=str(cache)))
    assert second["backend"] == "psutil"
    again = os.stat(entry / vendor.MARKER)
    assert (again.st_ino, again.st_mtime_ns) == (marker.st_ino, marker.st_mtime_ns)


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="XDG is the Linux default")
def test_default_cache_is_the_xdg_cache_folder(bare_python, pyz, wheel, tmp_path):
    got = report(bare_python, pyz, env_with(XDG_CACHE_HOME=str(tmp_path / "xdg")))
    assert got["backend"] == "psutil"
    assert got["psutil"].startswith(str(tmp_path / "xdg" / "qw" / entry_name(wheel)))


def test_version_extracts_nothing(bare_python, pyz, tmp_path):
    cache = tmp_path / "cache"
    done = run([bare_python, pyz, "--version"], env=env_with(QW_CACHE_DIR=str(cache)))
    assert done.returncode == 0, done.stderr
    # Only qw's own compiled code (qw.codecache) is cached: psutil waits for a probe.
    assert [name for name in os.listdir(cache) if not name.startswith("code-")] == []


def test_unwritable_cache_falls_back_to_stdlib_with_a_note(bare_python, pyz, tmp_path):
    # Root ignores permission bits: a file where the cache's parent should be stops anyone.
    (tmp_path / "file").write_text("not a folder")
    got = report(bare_python, pyz, env_with(QW_CACHE_DIR=str(tmp_path / "file" / "qw")))
    assert got["backend"] == "stdlib"
    assert got["note"].startswith("psutil cache not writable: ")
    assert got["psutil"] is None
    assert got["total_mb"] > 0  # the stdlib probes still answer


def _in_mount(options: str, mountpoint: Path, command: List) -> List:
    """command run in a private mount namespace with a tmpfs mounted at mountpoint."""
    if sys.platform != "linux" or shutil.which("unshare") is None:
        pytest.skip("needs Linux mount namespaces (unshare)")
    probe = run(["unshare", "-m", "--propagation", "private", "mount", "-t", "tmpfs",
                 "-o", options, "tmpfs", mountpoint])
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {probe.stderr.strip()}")
    script = 'mount -t tmpfs -o "$0" tmpfs "$1" && shift && exec "$@"'
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, options,
            mountpoint, *command]


def test_read_only_cache_falls_back_to_stdlib(bare_python, pyz, tmp_path):
    cache = tmp_path / "ro"
    cache.mkdir()
    done = run(_in_mount("ro", cache, [bare_python, "-I", "-c", REPORT, pyz]),
               env=env_with(QW_CACHE_DIR=str(cache)))
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["backend"] == "stdlib"
    assert got["note"].startswith("psutil cache not writable: ")
    assert "Read-only file system" in got["note"]


def test_noexec_cache_falls_back_to_stdlib(bare_python, pyz, tmp_path):
    cache = tmp_path / "noexec"
    cache.mkdir()
    done = run(_in_mount("noexec", cache, [bare_python, "-I", "-c", REPORT, pyz]),
               env=env_with(QW_CACHE_DIR=str(cache)))
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["backend"] == "stdlib"
    assert "cannot be loaded" in got["note"] and "noexec" in got["note"]
    assert got["psutil"] is None


def test_a_crowd_on_an_empty_cache_leaves_one_clean_entry(bare_python, pyz, wheel, tmp_path):
    cache = tmp_path / "cache"
    env = env_with(QW_CACHE_DIR=str(cache))
    # One pipe for all: closing its write end once everyone has started releases them all.
    barrier_r, barrier_w = os.pipe()
    try:
        crowd = [subprocess.Popen([bare_python, "-I", "-c", REPORT, str(pyz), "barrier"],
                                  env=env, stdin=barrier_r, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, universal_newlines=True)
                 for _ in range(CROWD)]
    finally:
        os.close(barrier_r)
        os.close(barrier_w)
    try:
        results = []
        for process in crowd:
            out, err = process.communicate(timeout=DEADLINE_S)
            assert process.returncode == 0, err
            results.append(json.loads(out))
    finally:
        for process in crowd:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert [r["backend"] for r in results] == ["psutil"] * CROWD, \
        [r["note"] for r in results if r["backend"] != "psutil"]
    assert sorted(os.listdir(cache)) == [entry_name(wheel)]  # no temporary folders left
    assert vendor.is_complete(str(cache / entry_name(wheel)), wheel.sha256)


def test_a_damaged_entry_is_repaired_on_next_use(bare_python, pyz, wheel, tmp_path):
    cache = tmp_path / "cache"
    env = env_with(QW_CACHE_DIR=str(cache))
    assert report(bare_python, pyz, env)["backend"] == "psutil"
    entry = cache / entry_name(wheel)
    (entry / "psutil" / "_common.py").unlink()
    got = report(bare_python, pyz, env)
    assert got["backend"] == "psutil", got["note"]
    assert (entry / "psutil" / "_common.py").is_file()
    assert sorted(os.listdir(cache)) == [entry.name]


# --- the cache, in this process, with the real archive ------------------------------------

def _break_marker(entry: Path) -> None:
    (entry / vendor.MARKER).write_text("{not json")


def _truncate_a_file(entry: Path) -> None:
    (entry / "psutil" / "__init__.py").write_bytes(b"")


def _drop_the_marker(entry: Path) -> None:
    (entry / vendor.MARKER).unlink()


def _file_in_its_place(entry: Path) -> None:
    shutil.rmtree(entry)
    entry.write_text("a file where the folder should be")


@pytest.mark.parametrize("damage", [_break_marker, _truncate_a_file, _drop_the_marker,
                                    _file_in_its_place])
def test_broken_entries_are_made_again(damage, pyz, wheel, tmp_path):
    root = tmp_path / "cache"
    entry = Path(vendor.ensure_extracted(str(pyz), wheel, str(root)))
    assert entry == root / entry_name(wheel)
    damage(entry)
    assert not vendor.is_complete(str(entry), wheel.sha256)
    assert vendor.ensure_extracted(str(pyz), wheel, str(root)) == str(entry)
    assert vendor.is_complete(str(entry), wheel.sha256)
    assert sorted(os.listdir(root)) == [entry.name]


def test_leftovers_of_dead_extractions_are_swept_when_old(pyz, wheel, tmp_path):
    root = tmp_path / "cache"
    old = root / ".psutil-0123.tmp-dead"
    young = root / ".psutil-0123.trash-busy"
    for folder in (old, young):
        (folder / "psutil").mkdir(parents=True)
    two_hours_ago = os.stat(root).st_mtime - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    vendor.ensure_extracted(str(pyz), wheel, str(root))
    assert sorted(os.listdir(root)) == sorted([young.name, entry_name(wheel)])


def test_a_tampered_wheel_is_refused(pyz, wheel, tmp_path):
    bad = tmp_path / "bad.pyz"
    with zipfile.ZipFile(pyz) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith(".whl"):
                data = data[:-1] + bytes([data[-1] ^ 1])
            dst.writestr(info, data)
    with pytest.raises(vendor.Unusable, match="the archive is damaged"):
        vendor.ensure_extracted(str(bad), wheel, str(tmp_path / "cache"))
    assert os.listdir(tmp_path / "cache") == []


def test_an_archive_without_this_platform_says_what_it_has(pyz, host_key):
    other = "win_arm64" if host_key != "win_arm64" else "manylinux_x86_64"
    with pytest.raises(vendor.Unusable) as caught:
        vendor.bundled_wheel(str(pyz), other)
    assert str(caught.value).startswith(f"no bundled psutil for this platform ({other}); ")
    assert str(caught.value).endswith(f"qw.pyz was built for {host_key}")


def test_a_source_checkout_without_psutil_says_how_to_get_it(bare_python, builder):
    source = Path(builder.__file__).parent
    got = report(bare_python, source, env_with())
    assert got["backend"] == "stdlib"
    assert got["note"].startswith("psutil is not installed")


# --- pure parts ----------------------------------------------------------------------------

@pytest.mark.parametrize("platform, machine, libc, is_64bit, key", [
    ("linux", "x86_64", "glibc", True, "manylinux_x86_64"),
    ("linux", "aarch64", "glibc", True, "manylinux_aarch64"),
    ("linux", "x86_64", "musl", True, "musllinux_x86_64"),
    ("linux", "aarch64", "musl", True, "musllinux_aarch64"),
    ("linux", "x86_64", "glibc", False, None),      # a 32-bit Python on a 64-bit kernel
    ("linux", "armv7l", "glibc", False, None),
    ("darwin", "arm64", "", True, "macosx_arm64"),
    ("darwin", "x86_64", "", True, "macosx_x86_64"),
    ("win32", "amd64", "", True, "win_amd64"),
    ("win32", "AMD64", "", True, "win_amd64"),
    ("win32", "arm64", "", True, "win_arm64"),
    ("freebsd14", "amd64", "", True, None),
])
def test_platform_keys_name_the_wheels_build_zipapp_pins(platform, machine, libc, is_64bit,
                                                         key, builder):
    assert vendor.platform_key(platform, machine, libc, is_64bit) == key
    assert key is None or key in builder.PSUTIL_WHEELS


@pytest.mark.parametrize("platform, environ, expected", [
    ("linux", {"QW_CACHE_DIR": "/srv/qw-cache"}, "/srv/qw-cache"),
    ("linux", {}, "/home/u/.cache/qw"),
    ("linux", {"XDG_CACHE_HOME": "/xdg"}, "/xdg/qw"),
    ("linux", {"XDG_CACHE_HOME": "relative"}, "/home/u/.cache/qw"),
    ("darwin", {"XDG_CACHE_HOME": "/xdg"}, "/home/u/Library/Caches/qw"),
    ("win32", {"LOCALAPPDATA": "/appdata"}, "/appdata/qw"),
    ("win32", {}, "/home/u/AppData/Local/qw"),
])
def test_cache_root_per_platform(platform, environ, expected):
    got = vendor.cache_root(environ, platform, "/home/u")
    assert Path(got) == Path(expected)


RUN_SPEC = """\
- [ ] 1. Allocate
  - FAKE: alloc 120
- [ ] 2. After it
  - _Depends: 1_
"""


def test_the_cached_psutil_is_compiled_once_even_where_python_writes_no_bytecode(
        bare_python, pyz, tmp_path):
    # Under PYTHONDONTWRITEBYTECODE (some images set it) Python never writes __pycache__:
    # without qw's own compile, every process would compile psutil's sources at import.
    env = env_with(QW_CACHE_DIR=str(tmp_path / "cache"), PYTHONDONTWRITEBYTECODE="1")
    done = run([bare_python, pyz, "resources", "--json"], cwd=tmp_path, env=env)
    assert json.loads(done.stdout)["backend"] == "psutil", done.stderr
    (entry,) = (tmp_path / "cache").glob("psutil-*")
    tag = sys.implementation.cache_tag
    assert (entry / "psutil" / "__pycache__" / f"__init__.{tag}.pyc").is_file()
    assert (entry / f"compiled-{tag}").is_file()


@pytest.mark.parametrize("cache, backend", [("cache", "psutil"), ("file/qw", "stdlib")])
def test_either_backend_drives_a_full_run(bare_python, pyz, tmp_path, cache, backend):
    """The issue's point: from the bundled psutil, or from the stdlib fallback when the
    cache cannot be written, `qw run` works and measures its children."""
    (tmp_path / "file").write_text("not a folder")       # file/qw: unwritable, even for root
    repo = tmp_path / "repo"
    (repo / ".claude" / "specs" / "s").mkdir(parents=True)
    (repo / ".claude" / "specs" / "s" / "tasks.md").write_text(RUN_SPEC)
    fake = Path(__file__).resolve().parent / "fakeclaude.py"
    (repo / "qw.toml").write_text(
        f'[claude]\ncommand = "{fake}"\n[resources]\ncpu_limit_percent = 100\n')
    env = env_with(QW_CACHE_DIR=str(tmp_path / cache))
    resources = run([bare_python, pyz, "resources", "--json"], cwd=repo, env=env)
    assert json.loads(resources.stdout)["backend"] == backend, resources.stderr
    done = run([bare_python, pyz, "run", "s", "--json"], cwd=repo, env=env)
    assert done.returncode == 0, done.stderr
    view = json.loads(done.stdout)
    assert [t["status"] for t in view["tasks"]] == ["done", "done"]
    assert view["tasks"][0]["peak_rss_mb"] > 100     # the 120 MB child was measured
    assert (repo / ".claude" / "specs" / "s" / "tasks.md").read_text() == \
        RUN_SPEC.replace("[ ]", "[x]")
