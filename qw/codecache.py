"""qw's per-user cache folder, and the compiled copy of qw.pyz's code kept in it (DESIGN §7).

    activate(archive, read)       qw.pyz's __main__, before `qw` is imported: put this
                                  interpreter's compiled copy of the archive's qw/ first on
                                  sys.path (made on the first run); the entry, or None
    archive_behind(package_root)  the archive a cache entry serves, found on sys.path
    cache_root(environ, sys_platform, home)
    install_directory(target, fill), move_aside(target), sweep_stale(root, prefix)

zipimport never caches bytecode: every process started from qw.pyz (the command, the state
owner, each worker, each guard) would compile every qw module it imports, ~0.1 s of CPU
each. So the archive's qw/ files are extracted once to <cache>/code-<key>-<cache tag>/ and
compiled there for this interpreter, as unchecked-hash .pyc files (the entry never changes,
and PYTHONDONTWRITEBYTECODE does not apply to an explicit compile). <key> is the hash of
the archive's qw/ files, which build_zipapp.py stores in the archive (CODE_KEY): another
build gets another entry, and identical archives at different paths share one. Spawn
children inherit sys.path, and qw.guardlink hands a guard the folder its qw came from, so
every process of a run imports from the entry.

Entries follow the rules qw.vendor's psutil entries do, so that twenty cron jobs starting
at once are safe: each process fills its own temporary directory beside the entry, writes a
marker (the key and each file's size) last, and renames the directory into place; whoever
loses the race throws its copy away and uses the winner's. An entry without the right
marker, or with a file missing or of the wrong size, is moved aside and made again. When
anything fails (a read-only cache, a full disk), qw runs from the archive as before.

This module imports nothing from qw: qw.pyz's __main__ runs it from the archive before qw
is imported, and qw.vendor imports it as qw.codecache.
"""

from __future__ import annotations

import os
import sys

# The archive entry holding the key (written by build_zipapp.py from the same constant).
CODE_KEY = "qw-code.key"
CODE_MARKER = "qw-code-complete.txt"
# Temporary or thrown-away directories older than this were left by a process that died
# while filling them; younger ones may belong to a process filling one right now.
STALE_AFTER_S = 3600.0
ATTEMPTS = 3  # make, find broken, make again: a third failure is not a race any more


def activate(archive: str, read) -> object:
    """Put the code cache entry for archive (an absolute path) first on sys.path, making it
    first if needed; return its directory, or None (nothing changed) when it cannot be
    used here. The archive stays on sys.path: its absolute path is also added last.

    read(name) returns the bytes of an archive entry. Never raises: qw then runs from the
    archive, only slower."""
    try:
        key = read(CODE_KEY).decode("ascii").strip()
        tag = _tag()
        if not key or tag is None:
            return None
        root = os.path.abspath(cache_root(os.environ, sys.platform, os.path.expanduser("~")))
        target = os.path.join(root, "code-%s-%s" % (key[:16], tag))
        if not is_complete(target, key):
            target = _ensure(archive, key, tag, target)
    except Exception:  # whatever went wrong, the archive still runs qw
        return None
    if target is None:
        return None
    sys.path.insert(0, target)
    # archive_behind() looks for it there, in this process and in spawn children. Appended
    # even when the path is there already: runpy.run_path() takes its own entry back out.
    sys.path.append(archive)
    return target


def is_complete(directory: str, key: str) -> bool:
    """True when directory holds a whole entry for key: its marker names the key and every
    file the marker lists is there with the listed size."""
    try:
        with open(os.path.join(directory, CODE_MARKER), encoding="utf-8") as f:
            lines = f.read().splitlines()
        if not lines or lines[0] != "qw-code " + key or len(lines) < 2:
            return False
        for line in lines[1:]:
            size, name = line.split(" ", 1)
            if os.stat(os.path.join(directory, name)).st_size != int(size):
                return False
        return True
    except (OSError, ValueError):
        return False


def archive_behind(package_root: str):
    """The archive that the code cache entry package_root was made from, when it is on
    sys.path (where spawn children find it too); None when package_root is no entry."""
    try:
        with open(os.path.join(package_root, CODE_MARKER), encoding="utf-8") as f:
            first = f.readline().split()
    except OSError:
        return None
    if len(first) != 2:
        return None
    import zipfile
    for entry in sys.path:
        path = os.path.abspath(entry or ".")
        if not os.path.isfile(path):
            continue
        try:
            with zipfile.ZipFile(path) as zf:
                if zf.read(CODE_KEY).decode("ascii").strip() == first[1]:
                    return path
        except (OSError, KeyError, ValueError, zipfile.BadZipFile):
            continue
    return None


def cache_root(environ, sys_platform: str, home: str) -> str:
    """qw's per-user cache folder: $QW_CACHE_DIR, else the platform's cache folder + qw."""
    explicit = environ.get("QW_CACHE_DIR", "")
    if explicit:
        return explicit
    if sys_platform == "win32":
        base = environ.get("LOCALAPPDATA") or os.path.join(home, "AppData", "Local")
    elif sys_platform == "darwin":
        base = os.path.join(home, "Library", "Caches")
    else:
        xdg = environ.get("XDG_CACHE_HOME", "")
        # The XDG spec: a relative value is invalid and must be ignored.
        base = xdg if os.path.isabs(xdg) else os.path.join(home, ".cache")
    return os.path.join(base, "qw")


def install_directory(target: str, fill) -> None:
    """Make target in one step: fill(temp) writes a fresh directory beside it (its marker
    last), which is then renamed into place. If another process got there first, theirs
    is kept (the caller checks it). Raises OSError when the cache is not writable."""
    import shutil
    import tempfile
    root = os.path.dirname(target)
    os.makedirs(root, exist_ok=True)
    sweep_stale(root, "." + os.path.basename(target).split("-", 1)[0] + "-")
    temp = tempfile.mkdtemp(prefix="." + os.path.basename(target) + ".tmp-", dir=root)
    try:
        fill(temp)
        os.chmod(temp, 0o755)  # mkdtemp makes it 0700; a cache folder is normally 0755
        try:
            os.rename(temp, target)
        except OSError:
            if not os.path.isdir(target):
                raise
            # Another process renamed its copy into place between our check and now.
    finally:
        if os.path.isdir(temp):
            shutil.rmtree(temp, ignore_errors=True)


def move_aside(target: str) -> None:
    """Rename a broken entry out of the way (atomic for readers), then delete it."""
    import shutil
    import tempfile
    trash = tempfile.mkdtemp(prefix="." + os.path.basename(target) + ".trash-",
                             dir=os.path.dirname(target))
    try:
        os.rename(target, os.path.join(trash, "entry"))
    except FileNotFoundError:
        pass  # another process moved it first
    # On Windows a file still loaded by another process cannot go: the sweep retries later.
    shutil.rmtree(trash, ignore_errors=True)


def sweep_stale(root: str, prefix: str) -> None:
    """Delete the temporary and thrown-away directories under root whose names start with
    prefix (e.g. ".code-") and that nobody has touched for STALE_AFTER_S."""
    import shutil
    import time
    cutoff = time.time() - STALE_AFTER_S
    for name in os.listdir(root):
        if name.startswith(prefix) and (".tmp-" in name or ".trash-" in name):
            path = os.path.join(root, name)
            try:
                if os.lstat(path).st_mtime < cutoff:
                    shutil.rmtree(path, ignore_errors=True)
            except OSError:
                continue  # removed by another process meanwhile


def _tag():
    """The name of this interpreter's bytecode (cpython-311, cpython-311.opt-1 under -O),
    or None when it writes none."""
    tag = sys.implementation.cache_tag
    if tag is None:
        return None
    return tag + (".opt-%d" % sys.flags.optimize if sys.flags.optimize else "")


def _ensure(archive: str, key: str, tag: str, target: str):
    """target made (or repaired) and complete, or None when that keeps failing."""
    for _attempt in range(ATTEMPTS):
        if is_complete(target, key):
            return target
        if os.path.lexists(target):
            move_aside(target)
        install_directory(target, lambda temp: _fill(archive, key, tag, temp, target))
    return None


def _fill(archive: str, key: str, tag: str, directory: str, final: str) -> None:
    """Extract the archive's qw/ into directory, compile each module for this interpreter
    (naming its source as it will be once directory is renamed to final), and write the
    marker last."""
    import py_compile
    import zipfile
    files = {}
    sources = []
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            name = info.filename
            if not name.startswith("qw/") or info.is_dir():
                continue
            if name.startswith("/") or ".." in name.split("/"):
                continue  # never write outside the entry
            path = os.path.join(directory, *name.split("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as out:
                out.write(zf.read(info))
            files[name] = info.file_size
            if name.endswith(".py"):
                sources.append(name)
    for name in sources:
        folder, _, filename = name.rpartition("/")
        compiled = "%s/__pycache__/%s.%s.pyc" % (folder, filename[:-len(".py")], tag)
        path = os.path.join(directory, *compiled.split("/"))
        py_compile.compile(os.path.join(directory, *name.split("/")), cfile=path,
                           dfile=os.path.join(final, *name.split("/")), doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        files[compiled] = os.stat(path).st_size
    lines = ["qw-code " + key] + ["%d %s" % (files[name], name) for name in sorted(files)]
    # Written last: its presence says every file before it was written whole.
    with open(os.path.join(directory, CODE_MARKER), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
