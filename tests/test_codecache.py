"""qw.pyz's compiled code in the per-user cache (qw.codecache), through real archives run by
real interpreters. The archives are built from this checkout by build_zipapp.py's own
functions, without the wheels (they play no part here), so no network is needed.

`python -v` names the file each module's code object comes from: that is how these tests
see which copy of qw a process imported.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, List

import pytest

import build_zipapp
from qw import codecache
from runhelpers import python_or_skip

REPO_ROOT = Path(__file__).resolve().parent.parent
PROCESS_DEADLINE_S = 120  # generous: two cores shared with other test runs
TAG = sys.implementation.cache_tag


def make_pyz(path: Path, extra: bytes = b"") -> Path:
    """A qw.pyz of this checkout's qw/ (extra appended to qw/durations.py), without wheels."""
    entries = [("__main__.py", build_zipapp.MAIN_PY.encode("utf-8"))]
    entries += [(name, data + extra if name == "qw/durations.py" else data)
                for name, data in build_zipapp.package_entries(REPO_ROOT)]
    entries.append(build_zipapp.code_key_entry(entries))
    path.write_bytes(build_zipapp.archive_bytes(entries))
    return path


def run(command: List[str], cache: Path, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, QW_CACHE_DIR=str(cache))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    try:
        done = subprocess.run([str(part) for part in command], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, universal_newlines=True, env=env,
                              timeout=PROCESS_DEADLINE_S, **kwargs)
    except subprocess.TimeoutExpired as expired:
        pytest.fail(f"{command} did not finish within {PROCESS_DEADLINE_S}s: {expired.output!r}")
    assert done.returncode == 0, done.stderr
    return done


def version_run(pyz: Path, cache: Path, python: str = sys.executable) -> str:
    """Run `python -v qw.pyz --version`; return where qw.cli's code came from."""
    done = run([python, "-v", pyz, "--version"], cache)
    assert done.stdout.startswith("qw ")
    lines = [line for line in done.stderr.splitlines()
             if "code object from" in line and f"qw{os.sep}__pycache__{os.sep}cli." in line]
    if lines:
        return lines[0].split("'")[1]
    # 3.9 says "loaded from Zip <path>", 3.10+ names the zipimporter.
    assert re.search(r"import '?qw\.cli'? # (<zipimporter|loaded from Zip)", done.stderr), \
        done.stderr[-2000:]
    return "archive"


def entries(cache: Path) -> List[str]:
    return sorted(name for name in os.listdir(cache) if name.startswith("code-"))


@pytest.fixture
def pyz(tmp_path) -> Path:
    return make_pyz(tmp_path / "qw.pyz")


def test_first_run_makes_the_entry_and_every_run_imports_from_it(pyz, tmp_path):
    cache = tmp_path / "cache"
    first = version_run(pyz, cache)
    [entry] = entries(cache)
    assert entry.endswith("-" + TAG)
    assert first == str(cache / entry / "qw" / "__pycache__" / f"cli.{TAG}.pyc")
    marker = os.stat(cache / entry / codecache.CODE_MARKER)
    assert version_run(pyz, cache) == first
    again = os.stat(cache / entry / codecache.CODE_MARKER)
    assert (again.st_ino, again.st_mtime_ns) == (marker.st_ino, marker.st_mtime_ns)
    # Package data comes along: `qw init` copies the example config from beside qw.
    assert (cache / entry / "qw" / "config.example.toml").is_file()


# Runs the archive's __main__ as `python qw.pyz --version` does, then reports where qw
# comes from in this process and in a spawn child (qw's workers and state owner).
_PROBE = textwrap.dedent("""\
    import json, multiprocessing, runpy, sys
    sys.argv = [sys.argv[1], "--version"]
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit:
        pass
    WHERE = ("{'qw': __import__('qw').__file__, "
             "'archive': __import__('qw.vendor').vendor.archive_path(), "
             "'guard_root': __import__('qw').PACKAGE_ROOT}")
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        print(json.dumps({"self": eval(WHERE), "child": pool.apply(eval, (WHERE,))}))
""")


def test_spawn_children_import_from_the_entry_and_still_find_the_archive(pyz, tmp_path):
    cache = tmp_path / "cache"
    done = run([sys.executable, "-c", _PROBE, pyz], cache, cwd=tmp_path)
    report = json.loads(done.stdout.splitlines()[-1])
    [entry] = entries(cache)
    for side in ("self", "child"):
        assert report[side] == {"qw": str(cache / entry / "qw" / "__init__.py"),
                                "archive": str(pyz),  # for the bundled psutil and tomli
                                "guard_root": str(cache / entry)}


def test_a_damaged_entry_is_made_again_and_never_used(pyz, tmp_path):
    cache = tmp_path / "cache"
    good = version_run(pyz, cache)
    [entry] = entries(cache)
    compiled = Path(good)
    original = compiled.read_bytes()
    compiled.write_bytes(original[:20])  # truncated, as by a full disk
    assert version_run(pyz, cache) == good
    assert compiled.read_bytes() == original
    (cache / entry / codecache.CODE_MARKER).unlink()  # an extraction that died midway
    assert version_run(pyz, cache) == good
    assert codecache.is_complete(str(cache / entry),
                                 (cache / entry / codecache.CODE_MARKER).read_text().split()[1])
    assert entries(cache) == [entry]
    assert [name for name in os.listdir(cache) if ".trash-" in name or ".tmp-" in name] == []


def test_an_unwritable_cache_runs_from_the_archive(pyz, tmp_path):
    # A cache folder under a regular file cannot be made, even by root.
    (tmp_path / "file").write_text("")
    assert version_run(pyz, tmp_path / "file" / "cache") == "archive"


def test_other_contents_get_their_own_entry(pyz, tmp_path):
    cache = tmp_path / "cache"
    other = make_pyz(tmp_path / "other.pyz", extra=b"# another build\n")
    first, second = version_run(pyz, cache), version_run(other, cache)
    assert len(entries(cache)) == 2 and first != second
    # The same contents at another path share the entry.
    copy = make_pyz(tmp_path / "copy.pyz")
    assert version_run(copy, cache) == first


def test_39_and_313_each_get_their_own_entry(pyz, tmp_path):
    cache = tmp_path / "cache"
    found = {}
    for version in ("3.9", "3.13"):
        tag = "cpython-" + version.replace(".", "")
        found[version] = version_run(pyz, cache, python_or_skip(version))
        assert f"-{tag}{os.sep}qw{os.sep}__pycache__{os.sep}cli.{tag}.pyc" in found[version]
    assert len(entries(cache)) == 2
    assert version_run(pyz, cache, python_or_skip("3.9")) == found["3.9"]


def test_code_key_depends_on_qw_files_only():
    base = [("qw/a.py", b"x = 1\n"), ("__main__.py", b"")]
    key = build_zipapp.code_key_entry(base)
    assert key[0] == "qw-code.key" == codecache.CODE_KEY
    assert build_zipapp.code_key_entry(base + [("_vendor/t.py", b"")]) == key
    assert build_zipapp.code_key_entry(list(reversed(base))) == key
    assert build_zipapp.code_key_entry([("qw/a.py", b"x = 2\n")]) != key


def test_cache_root_follows_qw_cache_dir_and_the_platform():
    home = "/home/u"
    assert codecache.cache_root({"QW_CACHE_DIR": "/c"}, "linux", home) == "/c"
    assert codecache.cache_root({}, "linux", home) == "/home/u/.cache/qw"
    assert codecache.cache_root({}, "darwin", home) == "/home/u/Library/Caches/qw"
