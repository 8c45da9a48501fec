"""qw.pyz as a user gets it: built by build_zipapp.py, run by real interpreters (DESIGN §7).

The builds run on a snapshot of the sources (the working tree may change while tests run)
with a wheelhouse prepared once per session, and offline: pip is pointed at nothing, so a
build that tried to download would fail.

Interpreters: python2.7, python3.9 and python3.13 from PATH (pyenv shims) or from a pyenv
install. A missing one skips its tests, unless QW_REQUIRE_PYTHONS=1 (CI): then they fail.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Dict, List

import pytest

from runhelpers import python_or_skip

REPO_ROOT = Path(__file__).resolve().parent.parent
PROCESS_DEADLINE_S = 180  # generous: two cores shared with other test runs


# --- interpreters ---------------------------------------------------------------------

def python(version: str) -> str:
    """A working `python<version>`, else skip the test (fail under QW_REQUIRE_PYTHONS=1)."""
    return python_or_skip(version)


def run(command: List[str], **kwargs) -> subprocess.CompletedProcess:
    """Run command to completion within the deadline, capturing text output."""
    try:
        return subprocess.run([str(part) for part in command], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, universal_newlines=True,
                              timeout=PROCESS_DEADLINE_S, **kwargs)
    except subprocess.TimeoutExpired as expired:
        pytest.fail(f"{command} did not finish within {PROCESS_DEADLINE_S}s: {expired.output!r}")


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """The archives' compiled code and psutil go to a cache of this session's own."""
    monkeypatch.setenv("QW_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "qw-cache"))


# --- building -------------------------------------------------------------------------

@pytest.fixture(scope="session")
def source_tree(tmp_path_factory) -> Path:
    """A snapshot of build_zipapp.py and qw/, with stray bytecode that must stay out."""
    tree = tmp_path_factory.mktemp("source")
    shutil.copy2(REPO_ROOT / "build_zipapp.py", tree / "build_zipapp.py")
    shutil.copy2(REPO_ROOT / "config.example.toml", tree / "config.example.toml")
    shutil.copytree(REPO_ROOT / "qw", tree / "qw", ignore=shutil.ignore_patterns("__pycache__"))
    stray = tree / "qw" / "__pycache__"
    stray.mkdir()
    (stray / "cli.cpython-311.pyc").write_bytes(b"\0" * 16)
    (stray / "leftover.py").write_text("raise SystemExit('packed by mistake')\n")
    return tree


@pytest.fixture(scope="session")
def builder(source_tree):
    """build_zipapp.py as a module, for its pins and its pure functions."""
    spec = importlib.util.spec_from_file_location("build_zipapp", source_tree / "build_zipapp.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory, builder) -> Path:
    """A directory holding every pinned wheel (tomli, psutil for each platform), downloaded
    once (pip's cache helps)."""
    directory = tmp_path_factory.mktemp("wheelhouse")
    for wheel in [builder.TOMLI, *builder.PSUTIL_WHEELS.values()]:
        builder.download_wheel(wheel, directory)
    return directory


@pytest.fixture(scope="session")
def offline_env(tmp_path_factory) -> Dict[str, str]:
    """An environment in which pip can download nothing, and no SOURCE_DATE_EPOCH."""
    env = {key: value for key, value in os.environ.items() if key != "SOURCE_DATE_EPOCH"}
    env["PIP_NO_INDEX"] = "1"
    env["PIP_FIND_LINKS"] = str(tmp_path_factory.mktemp("no-links"))
    return env


def build(source_tree: Path, output: Path, *extra, env: Dict[str, str]):
    return run([sys.executable, source_tree / "build_zipapp.py", "-o", output, *extra], env=env)


@pytest.fixture(scope="session")
def pyz(tmp_path_factory, source_tree, wheelhouse, offline_env) -> Path:
    output = tmp_path_factory.mktemp("dist") / "qw.pyz"
    done = build(source_tree, output, "--wheelhouse", wheelhouse, env=offline_env)
    assert done.returncode == 0, done.stderr
    return output


@pytest.fixture(scope="session")
def qw_version(source_tree) -> str:
    text = (source_tree / "qw" / "__init__.py").read_text()
    return re.search(r'^__version__ = "([^"]+)"', text, re.M).group(1)


def test_two_builds_give_the_same_bytes(tmp_path, source_tree, wheelhouse, offline_env, pyz):
    second = tmp_path / "again.pyz"
    done = build(source_tree, second, "--wheelhouse", wheelhouse, env=offline_env)
    assert done.returncode == 0, done.stderr
    assert second.read_bytes() == pyz.read_bytes()
    digest = hashlib.sha256(second.read_bytes()).hexdigest()
    assert done.stdout.strip().endswith(f"sha256 {digest})")


def test_build_without_wheelhouse_downloads_the_same_wheel(tmp_path, source_tree, pyz):
    env = {key: value for key, value in os.environ.items() if key != "SOURCE_DATE_EPOCH"}
    done = build(source_tree, tmp_path / "qw.pyz", env=env)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "qw.pyz").read_bytes() == pyz.read_bytes()


def test_archive_is_a_runnable_file_with_sorted_fixed_entries(pyz, source_tree, builder):
    data = pyz.read_bytes()
    assert data.startswith(b"#!/usr/bin/env python3\n")
    if os.name == "posix":
        assert pyz.stat().st_mode & 0o777 == 0o755
    with zipfile.ZipFile(pyz) as archive:
        infos = archive.infolist()
    names = [info.filename for info in infos]
    assert names == sorted(names)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or n.startswith("tests/")]
    sources = {p.relative_to(source_tree).as_posix() for p in (source_tree / "qw").rglob("*.py")
               if "__pycache__" not in p.parts}
    assert {n for n in names if n.startswith("qw/")} == sources | {"qw/config.example.toml"}
    assert "__main__.py" in names
    assert "_vendor/tomli/__init__.py" in names
    assert {info.date_time for info in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert {info.external_attr >> 16 for info in infos} == {0o100644}
    wheels = {"_vendor/wheels/" + w.filename for w in builder.PSUTIL_WHEELS.values()}
    assert {n for n in names if n.startswith("_vendor/wheels/")} == \
        wheels | {"_vendor/wheels/index.json"}
    assert {info.filename for info in infos if info.compress_type == zipfile.ZIP_STORED} == wheels
    assert {info.compress_type for info in infos} == {zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED}


def test_source_date_epoch_sets_every_entry_time(tmp_path, source_tree, wheelhouse, offline_env):
    env = dict(offline_env, SOURCE_DATE_EPOCH="1700000000")  # 2023-11-14 22:13:20 UTC
    done = build(source_tree, tmp_path / "qw.pyz", "--wheelhouse", wheelhouse, env=env)
    assert done.returncode == 0, done.stderr
    with zipfile.ZipFile(tmp_path / "qw.pyz") as archive:
        assert {info.date_time for info in archive.infolist()} == {(2023, 11, 14, 22, 13, 20)}


def test_tampered_wheel_fails_the_build_and_writes_nothing(tmp_path, source_tree, builder,
                                                           offline_env):
    house = tmp_path / "house"
    house.mkdir()
    (house / builder.TOMLI.filename).write_bytes(b"PK\5\6" + b"\0" * 18)  # an empty zip
    out = tmp_path / "out"
    done = build(source_tree, out / "qw.pyz", "--wheelhouse", house, env=offline_env)
    assert done.returncode == 2
    assert done.stderr.startswith("build_zipapp: error: ")
    assert builder.TOMLI.sha256 in done.stderr
    assert not out.exists() or list(out.iterdir()) == []


def test_archive_bytes_ignore_entry_order_and_store_wheels(builder):
    entries = [("b.py", b"print('b')\n"), ("a.whl", b"PK already compressed"), ("__main__.py", b"")]
    data = builder.archive_bytes(entries)
    assert builder.archive_bytes(list(reversed(entries))) == data
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        kinds = {info.filename: info.compress_type for info in archive.infolist()}
    assert kinds == {"__main__.py": zipfile.ZIP_DEFLATED, "a.whl": zipfile.ZIP_STORED,
                     "b.py": zipfile.ZIP_DEFLATED}
    with pytest.raises(builder.BuildError, match="a.whl"):
        builder.archive_bytes(entries + [("a.whl", b"again")])


# --- running --------------------------------------------------------------------------

def test_python27_is_told_to_use_39_in_one_line(pyz, tmp_path):
    done = run([python("2.7"), pyz, "--version"], cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == ("qw: error: Python 3.9 or newer is required (this is Python 2.7); "
                           "run it with python3.9+\n")


@pytest.mark.parametrize("version", ["3.9", "3.13"])
def test_version_runs_from_another_directory(version, pyz, tmp_path, qw_version):
    done = run([python(version), pyz, "--version"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"qw {qw_version}")


PLAN_SPEC = """\
- [ ] 1. Models in src/models.py
  - File: src/models.py
- [ ] 2. API in src/api.py
  - File: src/api.py
  - _Leverage: src/models.py_
- [ ] 3. Docs
  - File: README.md
"""


@pytest.mark.parametrize("version", ["3.9", "3.13"])
def test_plan_runs_from_any_directory(version, pyz, tmp_path):
    repo = tmp_path / "repo"
    (repo / ".claude" / "specs" / "shop").mkdir(parents=True)
    (repo / ".claude" / "specs" / "shop" / "tasks.md").write_text(PLAN_SPEC)
    (repo / "qw.toml").write_text('[plan]\nundeclared = "parallel"\n')
    (repo / "src" / "deep").mkdir(parents=True)
    # From a subdirectory the repository is found; from elsewhere --repo names it.
    for cwd, extra in ((repo / "src" / "deep", []), (tmp_path, ["--repo", str(repo)])):
        done = run([python(version), pyz, "plan", "shop", "--json", *extra], cwd=cwd)
        assert done.returncode == 0, done.stderr
        plan = json.loads(done.stdout)
        assert plan["batches"] == [["1", "3"], ["2"]]
        assert plan["critical_path"] == ["1", "2"]


@pytest.fixture(scope="session")
def bare_python39(tmp_path_factory) -> str:
    """A Python 3.9 venv with nothing installed: no tomli but the vendored one."""
    venv = tmp_path_factory.mktemp("venv39")
    done = run([python("3.9"), "-m", "venv", "--without-pip", venv])
    assert done.returncode == 0, done.stderr
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    executable = bin_dir / ("python.exe" if os.name == "nt" else "python")
    assert run([executable, "-c", "import tomli"]).returncode != 0, "the venv already has tomli"
    return str(executable)


def test_version_runs_on_39_without_tomli_installed(bare_python39, pyz, tmp_path, qw_version):
    done = run([bare_python39, pyz, "--version"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"qw {qw_version}")


# Runs the archive's __main__ the way `python qw.pyz --version` does, then reports what the
# process (and a spawn child, as qw's worker pool starts them) can import.
_PROBE = textwrap.dedent("""\
    import json, multiprocessing, os, runpy, sys
    pyz = sys.argv[1]
    sys.argv = [pyz, "--version"]
    try:
        runpy.run_path(pyz, run_name="__main__")
    except SystemExit as stop:
        exit_code = stop.code
    vendor = [p for p in sys.path if p.startswith(os.path.join(pyz, ""))]
    report = {"exit": exit_code, "vendor": vendor}
    if vendor:
        import tomli
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            report["child"] = pool.apply(tomli.loads, ("a = 1",))
        report["tomli"] = tomli.__file__
    print(json.dumps(report))
""")


def test_vendored_tomli_serves_39_and_its_spawn_children(bare_python39, pyz, tmp_path):
    done = run([bare_python39, "-c", _PROBE, pyz], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["exit"] == 0
    assert report["vendor"] == [os.path.join(str(pyz), "_vendor")]
    assert report["tomli"].startswith(os.path.join(str(pyz), "_vendor", "tomli"))
    assert report["child"] == {"a": 1}


def test_vendored_tomli_stays_off_the_path_on_313(pyz, tmp_path):
    done = run([python("3.13"), "-c", _PROBE, pyz], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"exit": 0, "vendor": []}


def _imported_modules(command: List[str]) -> List[str]:
    done = run([sys.executable, "-X", "importtime", *command])
    assert done.returncode == 0, done.stderr
    return [line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines()
            if line.startswith("import time:") and "|" in line]


def test_version_imports_nothing_heavy(pyz):
    # DESIGN §8: `python qw.pyz --version` stays close to the bare interpreter. Modules the
    # interpreter imports anyway (site, sitecustomize) are not qw's doing.
    baseline = set(_imported_modules(["-c", "pass"]))
    added = [m for m in _imported_modules([pyz, "--version"]) if m not in baseline]
    heavy = {"asyncio", "concurrent", "multiprocessing", "psutil", "subprocess", "tomli",
             "tomllib"}
    assert [m for m in added if m.split(".")[0] in heavy] == [], \
        "qw --version imported these; import them lazily, where they are used"


# --- psutil's wheels (qw.vendor extracts the one for its platform at run time) ---------

def test_index_lists_each_stored_wheel_with_its_hash_and_platform(pyz, builder):
    with zipfile.ZipFile(pyz) as archive:
        index = json.loads(archive.read("_vendor/wheels/index.json"))
        digests = {name: hashlib.sha256(archive.read(name)).hexdigest()
                   for name in archive.namelist() if name.endswith(".whl")}
    assert sorted(w["platform"] for w in index["wheels"]) == sorted(builder.PSUTIL_WHEELS)
    for entry in index["wheels"]:
        pinned = builder.PSUTIL_WHEELS[entry["platform"]]
        assert (entry["project"], entry["version"], entry["filename"], entry["sha256"]) == \
            ("psutil", pinned.version, pinned.filename, pinned.sha256)
        assert digests["_vendor/wheels/" + entry["filename"]] == entry["sha256"]
        assert all(tag.startswith(("cp36-abi3-", "cp37-abi3-")) for tag in entry["tags"])


def test_platform_option_picks_the_wheels(tmp_path, source_tree, wheelhouse, offline_env):
    output = tmp_path / "qw.pyz"
    done = build(source_tree, output, "--wheelhouse", wheelhouse, "--platform", "win_arm64",
                 "--platform", "musllinux_aarch64", env=offline_env)
    assert done.returncode == 0, done.stderr
    with zipfile.ZipFile(output) as archive:
        index = json.loads(archive.read("_vendor/wheels/index.json"))
        wheels = [n for n in archive.namelist() if n.endswith(".whl")]
    assert [w["platform"] for w in index["wheels"]] == ["musllinux_aarch64", "win_arm64"]
    assert sorted(wheels) == sorted("_vendor/wheels/" + w["filename"] for w in index["wheels"])


def test_unknown_platform_is_refused_with_the_choices(tmp_path, source_tree, offline_env):
    done = build(source_tree, tmp_path / "qw.pyz", "--platform", "linux_riscv64",
                 env=offline_env)
    assert done.returncode == 2
    assert "invalid choice: 'linux_riscv64'" in done.stderr
    assert "manylinux_x86_64" in done.stderr
    assert not (tmp_path / "qw.pyz").exists()
