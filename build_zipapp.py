"""Build `qw.pyz`: one file that runs qw on any machine with Python 3.9+ (DESIGN §7).

    python build_zipapp.py [-o qw.pyz] [--wheelhouse DIR] [--platform KEY ...]

The archive holds a tiny `__main__.py`, every `.py` of the `qw` package (and the hash of
them that keys their compiled copy in the per-user cache: qw/codecache.py), the contents of
tomli's pure-Python wheel under `_vendor/` (imported only on 3.9/3.10; 3.11+ has tomllib),
and psutil's abi3 wheels, whole and uncompressed, under `_vendor/wheels/` with an index that
qw.vendor reads at run time to extract the one for its platform (one wheel per `--platform`
key; all of them by default). The wheels come from pip at build time, or from
`--wheelhouse DIR` on an offline builder, and must match the sha256 pinned here: no
third-party source lives in this repository.

The same sources and wheel give the same bytes: entries are sorted and carry a fixed
timestamp (1980-01-01, or SOURCE_DATE_EPOCH), fixed permissions and a fixed deflate level.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

REPO_ROOT = Path(__file__).resolve().parent
SHEBANG = b"#!/usr/bin/env python3\n"
VENDOR_DIR = "_vendor"
# The zip epoch: the earliest time a zip entry can carry.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
ZIP_EPOCH_SECONDS = 315532800
# Level 9: the archive is built once and read many times; decompression costs the same.
DEFLATE_LEVEL = 9
FILE_MODE = 0o644
ARCHIVE_MODE = 0o755

Entry = Tuple[str, bytes]  # (name inside the archive, contents)


@dataclass(frozen=True)
class PinnedWheel:
    """One exact wheel file, identified by its name and its sha256."""

    project: str
    version: str
    filename: str
    sha256: str
    # What pip is told so that it picks this file whatever machine builds the archive.
    pip_platform: str = "any"
    implementation: str = "py"
    abi: str = "none"


# tomli's py3-none-any wheel. Its other wheels are mypyc-compiled for one CPython and one
# platform, which is why the download asks pip for platform "any" explicitly.
TOMLI = PinnedWheel(
    project="tomli",
    version="2.5.0",
    filename="tomli-2.5.0-py3-none-any.whl",
    sha256="32a7b79ac57a2e83670ce329ccf675798bc5a2094783a63676866b70503f2e2b",
)

# psutil 7.2.2 is the newest release and ships an abi3 wheel (any CPython 3.6/3.7+) for each
# platform of DESIGN §7; keys are what `--platform` takes and what qw.vendor.platform_key()
# computes at run time. Linux wheels are manylinux (glibc) or musllinux (Alpine).
PSUTIL_VERSION = "7.2.2"


def _psutil(tags: str, pip_platform: str, sha256: str) -> PinnedWheel:
    return PinnedWheel("psutil", PSUTIL_VERSION, f"psutil-{PSUTIL_VERSION}-{tags}.whl", sha256,
                       pip_platform=pip_platform, implementation="cp", abi="abi3")


PSUTIL_WHEELS = {
    "manylinux_x86_64": _psutil(
        "cp36-abi3-manylinux2010_x86_64.manylinux_2_12_x86_64.manylinux_2_28_x86_64",
        "manylinux_2_12_x86_64",
        "076a2d2f923fd4821644f5ba89f059523da90dc9014e85f8e45a5774ca5bc6f9"),
    "manylinux_aarch64": _psutil(
        "cp36-abi3-manylinux2014_aarch64.manylinux_2_17_aarch64.manylinux_2_28_aarch64",
        "manylinux_2_17_aarch64",
        "b0726cecd84f9474419d67252add4ac0cd9811b04d61123054b9fb6f57df6e9e"),
    "musllinux_x86_64": _psutil(
        "cp36-abi3-musllinux_1_2_x86_64", "musllinux_1_2_x86_64",
        "b58fabe35e80b264a4e3bb23e6b96f9e45a3df7fb7eed419ac0e5947c61e47cc"),
    "musllinux_aarch64": _psutil(
        "cp36-abi3-musllinux_1_2_aarch64", "musllinux_1_2_aarch64",
        "fd04ef36b4a6d599bbdb225dd1d3f51e00105f6d48a28f006da7f9822f2606d8"),
    "win_amd64": _psutil(
        "cp37-abi3-win_amd64", "win_amd64",
        "eb7e81434c8d223ec4a219b5fc1c47d0417b12be7ea866e24fb5ad6e84b3d988"),
    "win_arm64": _psutil(
        "cp37-abi3-win_arm64", "win_arm64",
        "8c233660f575a5a89e6d4cb65d9f938126312bca76d8fe087b947b3a1aaac9ee"),
    "macosx_arm64": _psutil(
        "cp36-abi3-macosx_11_0_arm64", "macosx_11_0_arm64",
        "1a7b04c10f32cc88ab39cbf606e117fd74721c831c98a27dc04578deb0c16979"),
    "macosx_x86_64": _psutil(
        "cp36-abi3-macosx_10_9_x86_64", "macosx_10_9_x86_64",
        "ed0cace939114f62738d808fdcecd4c869222507e266e574799e9c0faa17d486"),
}
# Where the wheels and their index live in the archive; qw/vendor.py reads the same names.
WHEELS_DIR = f"{VENDOR_DIR}/wheels"
WHEEL_INDEX = f"{WHEELS_DIR}/index.json"

# The archive entry naming its qw/ files' hash (qw/codecache.py reads the same name): the
# key of their compiled copy in the per-user cache.
CODE_KEY = "qw-code.key"

# Kept parseable by every Python, 2.7 included, so that an old interpreter prints one clear
# line instead of a SyntaxError. It only imports and calls: nothing defined here could be
# unpickled by a spawn child, which never re-runs a zip's __main__.
MAIN_PY = '''\
# qw.pyz entry point, written by build_zipapp.py.
import os
import sys

if sys.version_info < (3, 9):
    sys.stderr.write("qw: error: Python 3.9 or newer is required (this is Python %d.%d); "
                     "run it with python3.9+\\n" % tuple(sys.version_info[:2]))
    sys.exit(2)

if sys.version_info < (3, 11):
    # tomllib arrived in 3.11; before it, the pinned tomli inside this archive stands in.
    # A sys.path entry, not an import hook, so that spawn children inherit it.
    sys.path.insert(1, os.path.join(os.path.dirname(os.path.abspath(__file__)), "{vendor}"))

if __name__ == "__main__":
    # Before qw is imported: put this interpreter's compiled copy of the archive's qw/ (in
    # the per-user cache; made on the first run) first on sys.path. zipimport compiles on
    # every import; qw/codecache.py says more. It runs from here without importing qw.
    archive = os.path.dirname(os.path.abspath(__file__))
    if os.path.isfile(archive):
        try:
            read = __loader__.get_data  # a name inside the archive, e.g. "qw/cli.py"
            boot = {{"__name__": "qw_codecache_boot"}}
            exec(compile(read("qw/codecache.py"), "qw/codecache.py", "exec"), boot)
            boot["activate"](archive, read)
        except Exception:
            pass  # qw runs from the archive, only slower
    from qw.cli import main
    sys.exit(main())
'''.format(vendor=VENDOR_DIR)


class BuildError(Exception):
    """The archive cannot be built; the message says why and what to do."""


def package_entries(root: Path = REPO_ROOT) -> List[Entry]:
    """Every `.py` file of the `qw` package under root, as archive entries (no __pycache__)."""
    package = root / "qw"
    entries = []
    for path in package.rglob("*.py"):
        relative = path.relative_to(root)
        if "__pycache__" in relative.parts:
            continue
        # A Windows checkout (core.autocrlf) must produce the same archive as a POSIX one.
        entries.append((relative.as_posix(), path.read_bytes().replace(b"\r\n", b"\n")))
    if not entries:
        raise BuildError(f"no Python files under {package}; run build_zipapp.py from a qw checkout")
    # `qw init` copies the documented example config; inside the pyz it is package data.
    example = root / "config.example.toml"
    entries.append(("qw/config.example.toml", example.read_bytes().replace(b"\r\n", b"\n")))
    return entries


def code_key_entry(entries: Iterable[Entry]) -> Entry:
    """The CODE_KEY entry: the sha256 of the qw/ files among entries (names and contents)."""
    digest = hashlib.sha256()
    for name, data in sorted(entry for entry in entries if entry[0].startswith("qw/")):
        digest.update(b"%s\0%d\0" % (name.encode("utf-8"), len(data)))
        digest.update(data)
    return CODE_KEY, (digest.hexdigest() + "\n").encode("ascii")


def download_wheel(wheel: PinnedWheel, dest: Path) -> Path:
    """Download the pinned wheel into dest with pip; return its path (sha256 not yet checked)."""
    command = [
        sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps",
        "--only-binary=:all:", "--platform", wheel.pip_platform,
        "--implementation", wheel.implementation, "--abi", wheel.abi, "--python-version", "3.9",
        "--dest", str(dest), f"{wheel.project}=={wheel.version}",
    ]
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True)
    path = dest / wheel.filename
    if done.returncode != 0 or not path.is_file():
        tail = "\n".join(done.stdout.strip().splitlines()[-5:])
        raise BuildError(f"pip could not download {wheel.filename} (exit {done.returncode}):\n"
                         f"{tail}\noffline? pass --wheelhouse DIR holding {wheel.filename}")
    return path


def fetch_wheel(wheel: PinnedWheel, wheelhouse: Optional[Path]) -> bytes:
    """The pinned wheel's bytes, from wheelhouse when it holds the file, else from pip.

    Raises BuildError when the bytes do not match the pinned sha256.
    """
    source = wheelhouse / wheel.filename if wheelhouse is not None else None
    if source is not None and source.is_file():
        data = source.read_bytes()
    else:
        if wheelhouse is not None:
            print(f"build_zipapp: {wheel.filename} is not in {wheelhouse}; downloading it",
                  file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="qw-build-") as tmp:
            source = download_wheel(wheel, Path(tmp))
            data = source.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != wheel.sha256:
        raise BuildError(f"{source} has sha256 {digest}, but build_zipapp.py pins {wheel.sha256}; "
                         f"replace it with the genuine {wheel.filename} from PyPI")
    return data


def wheel_entries(wheel_bytes: bytes, prefix: str = VENDOR_DIR) -> List[Entry]:
    """The files of a pure-Python wheel, as archive entries under prefix/."""
    with zipfile.ZipFile(io.BytesIO(wheel_bytes)) as wheel:
        return [(f"{prefix}/{info.filename}", wheel.read(info))
                for info in wheel.infolist() if not info.is_dir()]


def platform_wheel_entries(wheels: Sequence[Tuple[str, PinnedWheel, bytes]]) -> List[Entry]:
    """Whole wheels under WHEELS_DIR/, plus the index qw.vendor picks one from at run time.

    wheels holds (platform key, pin, the pin's bytes). The index is JSON with sorted keys:
    {"wheels": [{"platform", "project", "version", "filename", "sha256", "tags"}, ...]},
    where tags are the wheel's python-abi-platform tags, for people reading it.
    """
    index = []
    entries = []
    for key, wheel, data in sorted(wheels, key=lambda item: item[0]):
        python_tag, abi_tag, platform_tags = wheel.filename[:-len(".whl")].split("-")[2:5]
        tags = [f"{python_tag}-{abi_tag}-{tag}" for tag in platform_tags.split(".")]
        index.append({"platform": key, "project": wheel.project, "version": wheel.version,
                      "filename": wheel.filename, "sha256": wheel.sha256, "tags": tags})
        entries.append((f"{WHEELS_DIR}/{wheel.filename}", data))
    text = json.dumps({"wheels": index}, indent=1, sort_keys=True) + "\n"
    return entries + [(WHEEL_INDEX, text.encode("utf-8"))]


def entry_timestamp(environ=os.environ) -> Tuple[int, int, int, int, int, int]:
    """The time every entry carries: SOURCE_DATE_EPOCH (UTC) if set, else the zip epoch."""
    raw = environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not raw:
        return ZIP_EPOCH
    try:
        seconds = int(raw)
    except ValueError:
        raise BuildError(f"SOURCE_DATE_EPOCH={raw!r} is not a whole number of seconds; "
                         "unset it or set it to e.g. `git log -1 --format=%ct`") from None
    # Reproducible-builds convention: clamp times the format cannot hold to its epoch.
    stamp = time.gmtime(max(seconds, ZIP_EPOCH_SECONDS))
    if stamp.tm_year > 2107:
        raise BuildError(f"SOURCE_DATE_EPOCH={raw} is after 2107, the last year a zip entry holds")
    return tuple(stamp[:6])  # type: ignore[return-value]


def archive_bytes(entries: Iterable[Entry], date_time=ZIP_EPOCH) -> bytes:
    """The complete `qw.pyz` (shebang + zip) holding entries; equal inputs give equal bytes.

    Entries are written in name order. Wheels (`*.whl`, e.g. platform wheels qw extracts at
    run time) are stored uncompressed: they are zips already, so deflate would only cost time.
    Raises BuildError on a duplicate name.
    """
    ordered = sorted(entries, key=lambda entry: entry[0])
    names = [name for name, _ in ordered]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise BuildError(f"two archive entries share a name: {', '.join(duplicates)}")
    buffer = io.BytesIO()
    buffer.write(SHEBANG)
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in ordered:
            info = zipfile.ZipInfo(name, date_time=date_time)
            info.create_system = 3  # Unix, whichever OS builds: part of the bytes
            info.external_attr = (0o100000 | FILE_MODE) << 16  # regular file, rw-r--r--
            if name.endswith(".whl"):
                archive.writestr(info, data, compress_type=zipfile.ZIP_STORED)
            else:
                archive.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED,
                                 compresslevel=DEFLATE_LEVEL)
    return buffer.getvalue()


def write_atomically(target: Path, data: bytes, mode: int = ARCHIVE_MODE) -> None:
    """Replace target with data in one step: readers see the old file or the new, never half."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=str(target.parent))
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise


def build(output: Path, wheelhouse: Optional[Path] = None, root: Path = REPO_ROOT,
          platforms: Optional[Sequence[str]] = None) -> bytes:
    """Build the archive from the sources under root, write it to output, return its bytes.

    platforms names the psutil wheels to carry (keys of PSUTIL_WHEELS); None means all.
    """
    if wheelhouse is not None and not wheelhouse.is_dir():
        raise BuildError(f"--wheelhouse {wheelhouse} is not a directory")
    keys = sorted(PSUTIL_WHEELS) if platforms is None else sorted(set(platforms))
    unknown = [key for key in keys if key not in PSUTIL_WHEELS]
    if unknown:
        raise BuildError(f"unknown platform {', '.join(unknown)}; "
                         f"choose from {', '.join(sorted(PSUTIL_WHEELS))}")
    entries = [("__main__.py", MAIN_PY.encode("utf-8"))]
    entries += package_entries(root)
    entries.append(code_key_entry(entries))
    entries += wheel_entries(fetch_wheel(TOMLI, wheelhouse))
    entries += platform_wheel_entries(
        [(key, PSUTIL_WHEELS[key], fetch_wheel(PSUTIL_WHEELS[key], wheelhouse)) for key in keys])
    data = archive_bytes(entries, entry_timestamp())
    write_atomically(output, data)
    return data


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="build_zipapp.py", description="Build qw.pyz, the single-file qw (Python 3.9+).")
    parser.add_argument("-o", "--output", type=Path, default=Path("qw.pyz"),
                        help="where to write the archive (default: ./qw.pyz)")
    parser.add_argument("--wheelhouse", type=Path, metavar="DIR",
                        help="take the pinned wheels (tomli, psutil) from DIR when it holds "
                             "them, instead of downloading them")
    parser.add_argument("--platform", action="append", choices=sorted(PSUTIL_WHEELS),
                        metavar="KEY", dest="platforms",
                        help="carry psutil for this platform (repeatable; default: all of "
                             f"{', '.join(sorted(PSUTIL_WHEELS))})")
    args = parser.parse_args(argv)
    try:
        data = build(args.output, args.wheelhouse, platforms=args.platforms)
    except BuildError as error:
        print(f"build_zipapp: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.output} ({len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
