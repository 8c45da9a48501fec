"""`qw backup create | list | restore | clean`, and the automatic backups (DESIGN §2).

    .qw/backups/<name>/manifest.json            what it holds, a sha256 per file
    .qw/backups/<name>/state/<spec>.json        a spec's snapshot
    .qw/backups/<name>/runs/<run>/events.jsonl  the journal of the snapshot's run
    .qw/backups/<name>/specs/<spec>/tasks.md    the spec's tasks.md
    .qw/backups/corrupt-<utc>-<file>            a damaged state file qw set aside

A backup holds, per spec, exactly what its state loads from: the snapshot, the journal it
names, and tasks.md. Older runs' journals and transcripts stay in .qw/runs: a backup never
needs them, a restore never touches them. Creating a backup needs no lock: every file qw
writes is replaced atomically, a journal is copied up to its last whole line, and a journal
ahead of its snapshot is what loading expects anyway. A backup appears under its name only
once complete. A restore takes the lock of every spec it restores and backs up the current
state first, so it can itself be undone.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Tuple

from qw import __version__
from qw.errors import StateError, UsageError
from qw.journal import atomic_write, fsync_dir, write_error
from qw.lock import SpecLock
from qw.specdir import SPECS_DIR, TASKS_FILE, list_specs
from qw.state import RunState, encode_snapshot, refuse_newer

BACKUP_FORMAT = 1
MANIFEST = "manifest.json"
CORRUPT_PREFIX = "corrupt-"
BACKUP = "backup"      # BackupInfo.kind of a backup
CORRUPT = "corrupt"    # ... of a damaged file set aside
_TMP_PREFIX = ".tmp-"  # a backup being created (or left by one that died)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,99}\Z")
_NAME_FIX = ("use up to 100 letters, digits, '.', '_', '-', '+' or '@', starting with a "
             "letter or digit")
_DAY_S = 86400.0


@dataclass(frozen=True)
class BackupInfo:
    """One entry of .qw/backups/."""

    name: str
    path: str
    created_at: float        # epoch seconds: when it was written (its manifest's mtime)
    kind: str                # BACKUP, or CORRUPT for a damaged file qw set aside
    reason: str              # "manual", "before reset of demo", "before restore of X"...
    specs: Tuple[str, ...]   # the specs it holds
    size_bytes: int


@dataclass(frozen=True)
class RestoreResult:
    """What `restore` did: `backup` restored, after saving the state it replaced as
    `safety_backup` (restore that one to undo)."""

    backup: BackupInfo
    safety_backup: BackupInfo
    specs: Tuple[str, ...]


def backups_dir(repo: str) -> str:
    return os.path.join(repo, ".qw", "backups")


def validate_name(name: str) -> str:
    """`name` if it can name a backup (one plain file name), else UsageError."""
    if not isinstance(name, str) or not _NAME.match(name):
        problem = "contains a path separator" if any(
            sep in str(name) for sep in ("/", "\\", os.sep)) else "is not a valid name"
        raise UsageError(f"backup name {name!r} {problem}", None, _NAME_FIX)
    return name


def create(repo: str, name: Optional[str] = None, *, specs: Optional[Iterable[str]] = None,
           reason: str = "manual", now: Optional[float] = None) -> BackupInfo:
    """Back up the state and tasks.md of every spec (those under .claude/specs/ and those
    with state), or of `specs`, as .qw/backups/<name>/; `name` defaults to the UTC time.
    UsageError for a bad or taken name; StateError if it cannot be written (then nothing
    is left behind)."""
    now = time.time() if now is None else now
    folder = backups_dir(repo)
    if name is None:
        name = _free_name(folder, utc_stamp(now))
    elif os.path.lexists(os.path.join(folder, validate_name(name))):
        raise UsageError(f"backup {name} already exists", os.path.join(folder, name),
                         "choose another name")
    chosen = sorted(set(specs)) if specs is not None else _all_specs(repo)
    final = os.path.join(folder, name)
    tmp = os.path.join(folder, f"{_TMP_PREFIX}{name}-{secrets.token_hex(4)}")
    manifest: Dict[str, Any] = {
        "format": BACKUP_FORMAT, "name": name, "qw": __version__, "reason": reason,
        "created_at": now, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "specs": {}, "sha256": {}}
    try:
        os.makedirs(tmp)
        for spec in chosen:
            manifest["specs"][spec] = _copy_spec(repo, spec, tmp, manifest["sha256"])
        atomic_write(os.path.join(tmp, MANIFEST),
                     json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8"))
        if os.path.lexists(final):   # taken meanwhile by another qw
            raise UsageError(f"backup {name} already exists", final, "choose another name")
        os.rename(tmp, final)
        fsync_dir(folder)
    except OSError as exc:
        raise write_error(exc, exc.filename or folder) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)   # gone already once renamed
    info = _info(folder, name)
    assert info is not None
    return info


def auto_backup(repo: str, why: str, specs: Iterable[str],
                now: Optional[float] = None) -> BackupInfo:
    """The backup qw takes by itself before changing state (`why`: "reset demo"), named
    auto-<utc>-<why>."""
    now = time.time() if now is None else now
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", why).strip("-.")
    name = _free_name(backups_dir(repo), f"auto-{utc_stamp(now)}-{slug}"[:90])
    return create(repo, name, specs=specs, reason=f"before {why}", now=now)


def list_backups(repo: str) -> List[BackupInfo]:
    """The backups, and the damaged files qw set aside, in .qw/backups/, oldest first."""
    folder = backups_dir(repo)
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    infos = [_info(folder, name) for name in names if not name.startswith(".")]
    return sorted((i for i in infos if i is not None), key=lambda i: (i.created_at, i.name))


def restore(repo: str, name: str, *, now: Optional[float] = None) -> RestoreResult:
    """Put back the state and tasks.md of every spec backup `name` holds, after backing up
    what they are now. LockHeld (nothing changed) while a run holds one of their locks;
    UsageError for an unknown name; StateError for a damaged or newer-format backup."""
    from qw.stateowner import withdraw_stale   # starts no process: only file helpers

    folder = backups_dir(repo)
    path = os.path.join(folder, validate_name(name))
    if not os.path.isdir(path):
        if os.path.isfile(path) and name.startswith(CORRUPT_PREFIX):
            raise UsageError(f"{name} is a damaged file qw set aside, not a backup", path,
                             "look into it by hand; `qw backup list` shows the backups")
        raise UsageError(f"no backup named {name}", folder, "see `qw backup list`")
    manifest = _verified_manifest(path)
    specs = tuple(sorted(manifest["specs"]))
    qw_dir = os.path.join(repo, ".qw")
    locks = _lock_all(qw_dir, specs, f"qw backup restore {name}")
    try:
        for spec in specs:
            withdraw_stale(qw_dir, spec)
        safety = auto_backup(repo, f"restore {name}", specs, now)
        for spec in specs:
            _restore_spec(repo, path, spec, manifest["specs"][spec])
    finally:
        for lock in locks:
            lock.release()
    info = _info(folder, name)
    assert info is not None
    return RestoreResult(info, safety, specs)


def clean(repo: str, days: float, *, now: Optional[float] = None) -> List[str]:
    """Remove the backups and set-aside damaged files last written more than `days` days
    ago; their names, oldest first. UsageError for a negative or non-numeric `days`."""
    if isinstance(days, bool) or not isinstance(days, (int, float)) or not days >= 0:
        raise UsageError(f"days must be a number >= 0, not {days!r}", "--days",
                         "e.g. `qw backup clean --days 30`")
    cutoff = (time.time() if now is None else now) - days * _DAY_S
    removed = []
    for info in list_backups(repo):
        if info.created_at < cutoff:
            _remove(info.path)
            removed.append(info.name)
    folder = backups_dir(repo)
    leftovers = os.listdir(folder) if os.path.isdir(folder) else []
    for name in leftovers:   # left by a create that died midway
        path = os.path.join(folder, name)
        if name.startswith(_TMP_PREFIX) and os.stat(path).st_mtime < cutoff:
            _remove(path)
    return removed


def utc_stamp(now: float) -> str:
    """20261121T071800Z: a UTC time for file names, sorting as time does."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))


def set_aside(qw_dir: str, path: str, name: str, now: float, copy: bool = False) -> str:
    """Move (or copy) a damaged file to .qw/backups/corrupt-<utc>-<name>, never over
    another one; returns where it went."""
    folder = os.path.join(qw_dir, "backups")
    os.makedirs(folder, exist_ok=True)
    base = os.path.join(folder, f"{CORRUPT_PREFIX}{utc_stamp(now)}-{name}")
    target, n = base, 1
    while os.path.lexists(target):
        n += 1
        target = f"{base}.{n}"
    if copy:
        shutil.copyfile(path, target)
    else:
        os.replace(path, target)
    return target


# ----- creating


def _all_specs(repo: str) -> List[str]:
    names = set(list_specs(repo))
    try:
        names.update(n[:-5] for n in os.listdir(os.path.join(repo, ".qw", "state"))
                     if n.endswith(".json") and not n.startswith("."))
    except FileNotFoundError:
        pass
    return sorted(names)


def _copy_spec(repo: str, spec: str, into: str, digests: Dict[str, str]) -> Dict[str, Any]:
    """Copy what `spec`'s state loads from into the backup folder `into`; its manifest entry."""
    qw_dir = os.path.join(repo, ".qw")
    entry: Dict[str, Any] = {"snapshot": None, "journal": None, "tasks": None,
                             "tasks_path": None}
    snapshot = _read(os.path.join(qw_dir, "state", spec + ".json"))
    if snapshot is not None:
        entry["snapshot"] = _put(into, f"state/{spec}.json", snapshot, digests)
        run_id = _run_of(snapshot)
        journal = _read(os.path.join(qw_dir, "runs", run_id, "events.jsonl")) \
            if run_id else None
        if journal is not None:
            # Whole lines only: a run may be appending right now.
            whole = journal[:journal.rfind(b"\n") + 1]
            entry["journal"] = _put(into, f"runs/{run_id}/events.jsonl", whole, digests)
    tasks_path = os.path.join(repo, SPECS_DIR, spec, TASKS_FILE)
    tasks = _read(tasks_path)
    if tasks is not None:
        entry["tasks"] = _put(into, f"specs/{spec}/{TASKS_FILE}", tasks, digests)
        entry["tasks_path"] = os.path.relpath(tasks_path, repo).replace(os.sep, "/")
    return entry


def _put(into: str, rel: str, data: bytes, digests: Dict[str, str]) -> str:
    target = os.path.join(into, *rel.split("/"))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    atomic_write(target, data)
    digests[rel] = hashlib.sha256(data).hexdigest()
    return rel


def _run_of(snapshot: bytes) -> Optional[str]:
    try:
        run_id = json.loads(snapshot).get("run_id")
    except (ValueError, AttributeError):
        return None   # damaged: backed up as it is, without a journal
    return run_id if _plain_name(run_id) else None


def _free_name(folder: str, base: str) -> str:
    name, n = base, 1
    while os.path.lexists(os.path.join(folder, name)):
        n += 1
        name = f"{base}-{n}"
    return validate_name(name)


# ----- reading and restoring


def _info(folder: str, name: str) -> Optional[BackupInfo]:
    path = os.path.join(folder, name)
    try:
        if os.path.isdir(path):
            manifest = _read_manifest(path)
            stamp = os.path.join(path, MANIFEST) if manifest is not None else path
            size = sum(os.path.getsize(os.path.join(d, f))
                       for d, _, files in os.walk(path) for f in files)
            reason = str(manifest.get("reason", "")) if manifest else "(no readable manifest)"
            specs = tuple(sorted(manifest.get("specs") or ())) if manifest else ()
            return BackupInfo(name, path, os.stat(stamp).st_mtime, BACKUP, reason, specs, size)
        if name.startswith(CORRUPT_PREFIX):
            st = os.stat(path)
            return BackupInfo(name, path, st.st_mtime, CORRUPT, "damaged file set aside", (),
                              st.st_size)
    except OSError:
        pass   # removed while we looked
    return None


def _read_manifest(path: str) -> Optional[Dict[str, Any]]:
    try:
        with open(os.path.join(path, MANIFEST), "rb") as f:
            data = json.loads(f.read())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _verified_manifest(path: str) -> Dict[str, Any]:
    """The backup's manifest, once every file it lists matches its sha256."""
    where = os.path.join(path, MANIFEST)
    manifest = _read_manifest(path)
    fmt = manifest.get("format") if manifest else None
    if not isinstance(fmt, int) or not isinstance(manifest.get("specs"), dict) \
            or not isinstance(manifest.get("sha256"), dict):
        raise StateError("the backup has no readable manifest", where, "restore another backup")
    refuse_newer("the backup", fmt, BACKUP_FORMAT, where)
    for spec, entry in manifest["specs"].items():
        if not isinstance(entry, dict) or not _plain_name(spec):
            raise StateError(f"the backup's entry for spec {spec!r} is malformed", where,
                             "restore another backup")
        for key in ("snapshot", "journal", "tasks"):
            rel = entry.get(key)
            if rel is not None and (not _safe_rel(rel) or rel not in manifest["sha256"]):
                raise StateError(f"the backup names a file it cannot hold ({rel!r})", where,
                                 "restore another backup")
        if entry.get("tasks") and not _safe_rel(entry.get("tasks_path")):
            raise StateError(f"the backup names a tasks file outside the repository "
                             f"({entry.get('tasks_path')!r})", where, "restore another backup")
    for rel, digest in manifest["sha256"].items():
        data = _read(os.path.join(path, *str(rel).split("/"))) if _safe_rel(rel) else None
        if data is None or hashlib.sha256(data).hexdigest() != digest:
            raise StateError(f"the backup is damaged ({rel}: missing or checksum mismatch)",
                             path, "restore another backup")
    return manifest


def _plain_name(name: Any) -> bool:
    """One file name: no separator, not hidden, not "." or ".."."""
    return isinstance(name, str) and bool(name) and not name.startswith(".") \
        and not any(c in name for c in "/\\:\0")


def _safe_rel(rel: Any) -> bool:
    """A relative path with "/" separators that stays inside its folder."""
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel \
            or ":" in rel:
        return False
    return all(part not in ("", ".", "..") for part in rel.split("/"))


def _lock_all(qw_dir: str, specs: Tuple[str, ...], command: str) -> List[SpecLock]:
    locks: List[SpecLock] = []
    try:
        for spec in specs:
            lock = SpecLock(os.path.join(qw_dir, "locks", spec + ".lock"))
            locks.append(lock.acquire({"command": command}))
    except BaseException:
        for lock in locks:
            lock.release()
        raise
    return locks


def _restore_spec(repo: str, path: str, spec: str, entry: Dict[str, Any]) -> None:
    qw_dir = os.path.join(repo, ".qw")
    snapshot = os.path.join(qw_dir, "state", spec + ".json")
    try:
        os.makedirs(os.path.dirname(snapshot), exist_ok=True)
        if entry.get("snapshot"):
            journal = entry.get("journal")
            if journal:   # first: a snapshot must find its journal there
                _copy_in(path, journal, os.path.join(qw_dir, *journal.split("/")))
            _copy_in(path, entry["snapshot"], snapshot)
        else:
            # Never run when backed up: an empty snapshot, so that a newer run's journal
            # is not taken for state to rebuild (see StateStore.forget).
            atomic_write(snapshot, encode_snapshot(RunState(spec)))
        if entry.get("tasks"):
            _copy_in(path, entry["tasks"], os.path.join(repo, *entry["tasks_path"].split("/")))
    except OSError as exc:
        raise write_error(exc, exc.filename or qw_dir) from None


def _copy_in(backup: str, rel: str, target: str) -> None:
    with open(os.path.join(backup, *rel.split("/")), "rb") as f:
        data = f.read()
    os.makedirs(os.path.dirname(target), exist_ok=True)
    atomic_write(target, data)


def _read(path: str) -> Optional[bytes]:
    try:
        with open(path, "rb") as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)
