"""psutil for qw: the environment's, else the wheel carried inside qw.pyz (DESIGN §7).

    import_psutil() -> the psutil module, or None (qw then uses its standard-library probes)
    status()        -> ("psutil" | "stdlib", a note: where psutil came from, or why not)

Nothing here runs when qw starts: the first import_psutil() call (qw.probe.get_probe) does
the work, once per process. In order:

1. `import psutil` from the environment;
2. when qw runs from an archive (qw.pyz): the abi3 wheel build_zipapp.py put in for this
   platform (listed in _vendor/wheels/index.json) is checked against its sha256 and extracted
   to <cache>/psutil-<sha256[:16]>/, then put first on sys.path. <cache> is $QW_CACHE_DIR,
   else the platform's cache folder + /qw (~/.cache, ~/Library/Caches, %LOCALAPPDATA%).

A cache entry is made atomically (qw.codecache makes qw's compiled code the same way), so
that twenty cron jobs starting at once are safe: each extracts into its own temporary directory beside the entry, writes a marker (the wheel's
hash and each file's size) last, and renames the directory into place; whoever loses the
race throws its copy away and uses the winner's. An entry without a valid marker, or with a
file missing or of the wrong size, is moved aside and made again. An unwritable cache, or
one on a noexec mount (the extension then fails to load), leaves status() saying so.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import threading
import zipfile
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

# The cache folder and its atomic entries are shared with the compiled code (qw.codecache).
from qw.codecache import ATTEMPTS, archive_behind, cache_root, install_directory, move_aside

# The names build_zipapp.py writes (its WHEELS_DIR and WHEEL_INDEX).
WHEELS_DIR = "_vendor/wheels"
WHEEL_INDEX = WHEELS_DIR + "/index.json"
MARKER = "qw-complete.json"

_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "x64": "x86_64",
         "aarch64": "aarch64", "arm64": "aarch64"}

_lock = threading.Lock()
_loaded: Optional[Tuple[object, str]] = None  # (psutil or None, note), once per process


class Unusable(Exception):
    """The bundled psutil cannot be used here; str() says why, for `qw doctor`."""


@dataclass(frozen=True)
class BundledWheel:
    """One psutil wheel inside the archive, as its index lists it."""

    platform: str
    filename: str
    sha256: str


def import_psutil():
    """The psutil module (environment first, then the archive's), or None when neither can
    be imported here. The first call does the work; later calls return the same answer."""
    global _loaded
    with _lock:
        if _loaded is None:
            _loaded = _load()
        return _loaded[0]


def status() -> Tuple[str, str]:
    """("psutil", where it came from) or ("stdlib", why psutil is not used); loads first."""
    import_psutil()
    module, note = _loaded  # type: ignore[misc]
    return ("psutil" if module is not None else "stdlib"), note


def platform_key(sys_platform: str, machine: str, libc: str, is_64bit: bool) -> Optional[str]:
    """The `build_zipapp.py --platform` key of the wheel that serves this platform, e.g.
    "manylinux_x86_64" or "macosx_arm64"; None when no bundled wheel can.

    libc matters on Linux only: "glibc" picks manylinux, anything else musllinux.
    """
    arch = _ARCH.get(machine.lower())
    if arch is None or not is_64bit:
        return None
    if sys_platform.startswith("linux"):
        return ("manylinux_" if libc == "glibc" else "musllinux_") + arch
    if sys_platform == "darwin":
        return "macosx_" + ("arm64" if arch == "aarch64" else arch)
    if sys_platform == "win32":
        return "win_" + ("amd64" if arch == "x86_64" else "arm64")
    return None


def this_platform() -> Optional[str]:
    """platform_key() for this interpreter; None off CPython (the wheels are abi3)."""
    if sys.implementation.name != "cpython":
        return None
    machine = os.uname().machine if hasattr(os, "uname") else ""
    if sys.platform == "win32":
        # The interpreter's architecture, not the OS's: an x64 Python on ARM64 Windows
        # loads x64 extensions only.
        import sysconfig
        machine = sysconfig.get_platform().rpartition("-")[2]
    return platform_key(sys.platform, machine, _libc(), sys.maxsize > 2 ** 32)


def archive_path() -> Optional[str]:
    """The qw.pyz this qw package comes from, whether imported from it or from its compiled
    copy in the code cache (qw.codecache); None when qw is a plain directory."""
    from qw import PACKAGE_ROOT
    return PACKAGE_ROOT if os.path.isfile(PACKAGE_ROOT) else archive_behind(PACKAGE_ROOT)


def bundled_wheel(archive: str, key: Optional[str]) -> BundledWheel:
    """The archive's psutil wheel for platform key. Raises Unusable when there is none."""
    try:
        with zipfile.ZipFile(archive) as zf:
            index = json.loads(zf.read(WHEEL_INDEX).decode("utf-8"))
    except KeyError:
        raise Unusable(f"{os.path.basename(archive)} carries no psutil wheels") from None
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise Unusable(f"cannot read the wheel index of {archive}: {e}") from None
    wheels = [BundledWheel(w["platform"], w["filename"], w["sha256"])
              for w in index.get("wheels", ()) if w.get("project", "psutil") == "psutil"]
    for wheel in wheels:
        if wheel.platform == key:
            return wheel
    built_for = ", ".join(sorted(w.platform for w in wheels)) or "no platform"
    raise Unusable(f"no bundled psutil for this platform ({key or describe_platform()}); "
                   f"{os.path.basename(archive)} was built for {built_for}")


def ensure_extracted(archive: str, wheel: BundledWheel, root: str) -> str:
    """The directory under root holding `wheel` extracted and complete, made or repaired
    as needed; safe when many processes call it at once. Raises Unusable with the reason
    (an unwritable cache, a damaged archive) when it cannot."""
    target = os.path.join(root, "psutil-" + wheel.sha256[:16])
    for _attempt in range(ATTEMPTS):
        if is_complete(target, wheel.sha256):
            return target
        try:
            if os.path.lexists(target):
                move_aside(target)
            _install(archive, wheel, target)
        except OSError as e:
            raise Unusable(f"psutil cache not writable: {e}") from None
    raise Unusable(f"psutil cache {target} is still incomplete after {ATTEMPTS} attempts; "
                   f"delete it, or set QW_CACHE_DIR to another folder")


def is_complete(directory: str, sha256: str) -> bool:
    """True when directory holds a whole extraction of the wheel with this sha256: its
    marker names that hash and every file it lists is there with the listed size."""
    try:
        with open(os.path.join(directory, MARKER), encoding="utf-8") as f:
            marker = json.load(f)
        if marker.get("sha256") != sha256 or not marker.get("files"):
            return False
        return all(os.stat(os.path.join(directory, name)).st_size == size
                   for name, size in marker["files"].items())
    except (OSError, ValueError, AttributeError, TypeError):
        return False


def describe_platform() -> str:
    """This interpreter and machine in a few words, for messages."""
    machine = os.uname().machine if hasattr(os, "uname") else "?"
    return f"{sys.implementation.name} on {sys.platform} {machine}"


def _load() -> Tuple[object, str]:
    try:
        import psutil
        return psutil, f"psutil {psutil.__version__} from the environment ({psutil.__file__})"
    except (ImportError, OSError):
        _forget_psutil()  # a broken install may leave submodules behind
    archive = archive_path()
    if archive is None:
        return None, "psutil is not installed (pip install psutil for the psutil backend)"
    try:
        wheel = bundled_wheel(archive, this_platform())
        # Absolute: it goes on sys.path, which must not depend on the working directory.
        root = os.path.abspath(cache_root(os.environ, sys.platform, os.path.expanduser("~")))
        directory = ensure_extracted(archive, wheel, root)
    except Unusable as e:
        return None, str(e)
    _compile_once(directory)
    sys.path.insert(0, directory)
    try:
        import psutil
    except (ImportError, OSError) as e:
        sys.path.remove(directory)
        _forget_psutil()
        return None, (f"psutil extracted to {directory} cannot be loaded ({e}); is the "
                      f"cache on a noexec mount? Set QW_CACHE_DIR to another folder")
    return psutil, f"psutil {psutil.__version__} bundled, cached in {directory}"


def _compile_once(directory: str) -> None:
    """Write this Python's bytecode of the extracted package next to it, once (a marker
    file says it is there). Python writes __pycache__ itself where it may, but not under
    PYTHONDONTWRITEBYTECODE (which some images set): then every process compiled psutil's
    sources at import, ~40 ms, in each worker. Best effort: an unwritable cache only
    costs that time."""
    marker = os.path.join(directory, "compiled-" + str(sys.implementation.cache_tag))
    if os.path.exists(marker):
        return
    try:
        import compileall
        if compileall.compile_dir(directory, quiet=1):
            with open(marker, "w"):
                pass
    except OSError:
        pass


def _forget_psutil() -> None:
    for name in [n for n in sys.modules if n == "psutil" or n.startswith("psutil.")]:
        del sys.modules[name]


def _libc() -> str:
    try:
        version = os.confstr("CS_GNU_LIBC_VERSION")  # "glibc 2.36"; musl does not know it
    except (AttributeError, ValueError, OSError):
        version = None
    return "glibc" if version and version.startswith("glibc") else "musl"


def _install(archive: str, wheel: BundledWheel, target: str) -> None:
    """Extract wheel into a fresh directory beside target and rename it into place; if
    another process got there first, keep theirs (the caller checks it)."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    data = _wheel_bytes(archive, wheel)

    def fill(temp: str) -> None:
        files = _extract(data, temp)
        # Written last: its presence says every file before it was written whole.
        with open(os.path.join(temp, MARKER), "w", encoding="utf-8") as f:
            json.dump({"sha256": wheel.sha256, "wheel": wheel.filename, "files": files}, f,
                      indent=0, sort_keys=True)

    install_directory(target, fill)


def _wheel_bytes(archive: str, wheel: BundledWheel) -> bytes:
    try:
        with zipfile.ZipFile(archive) as zf:
            data = zf.read(WHEELS_DIR + "/" + wheel.filename)
    except (KeyError, zipfile.BadZipFile) as e:
        raise Unusable(f"{archive} lacks {wheel.filename}: {e}; rebuild it") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != wheel.sha256:
        raise Unusable(f"{wheel.filename} inside {archive} has sha256 {digest}, not "
                       f"{wheel.sha256}: the archive is damaged; download or rebuild qw.pyz")
    return data


def _extract(wheel_data: bytes, directory: str) -> Dict[str, int]:
    """Write the wheel's files under directory; return {relative name: size}."""
    import io
    files = {}
    with zipfile.ZipFile(io.BytesIO(wheel_data)) as zf:
        for info in zf.infolist():
            name = info.filename
            if info.is_dir():
                continue
            # The hash was checked, but a name escaping the directory is never written.
            if name.startswith("/") or ".." in name.split("/"):
                raise Unusable(f"the psutil wheel holds an unsafe name: {name}")
            path = os.path.join(directory, *name.split("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with zf.open(info) as src, open(path, "wb") as out:
                shutil.copyfileobj(src, out)
            files[name] = info.file_size
    return files
