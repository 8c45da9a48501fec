"""The state owner: one manager process that owns a run's state (DESIGN §1, §6).

    runner ─── StateServerProxy: record, progress, view, close ──┐
    workers ── StateServerProxy (pickled to them at start) ──────┤   manager process
    qw status ─ connect_live() -> StateViewProxy: view only ─────┘   └ StateServer
                                                                         └ StateStore ─► .qw/

This module is what runs in the manager process. It is started with the spawn method, or
forked by a run's fork server on Linux (qw.pool.process_context), so everything it runs is
registered here at module level, never in __main__.
While it serves, it advertises itself in .qw/runs/<run-id>/owner.json (mode 0600: address,
authkey, pid), found through the pointer .qw/state/<spec>.live; it withdraws both when it
stops. It stops when shut down, or when its parent dies: it watches the parent's sentinel,
writes the snapshot and shuts its own server down, so it never outlives the run.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import tempfile
import threading
from multiprocessing.connection import Client, wait
from multiprocessing.managers import BaseManager, BaseProxy, Server, dispatch
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from qw.errors import LockHeld, StateError
from qw.journal import atomic_write
from qw.statestore import REPAIR, StateStore, live_pointer_path
from qw.lock import pid_alive


def owner_path(qw_dir: str, run_id: str) -> str:
    return os.path.join(qw_dir, "runs", run_id, "owner.json")


class StateServer:
    """A run's state, served to every process of the run. The manager serves each
    connection in a thread of its own; one lock puts the calls in one order."""

    def __init__(self, qw_dir: str, spec: str, run_id: str, initial_events: Iterable[dict],
                 tasks_path: Optional[str] = None):
        self._lock = threading.Lock()
        self._closed = False
        # REPAIR: the run holds the spec's lock, so damaged state is set aside and rebuilt
        # here (with one warning line) instead of stopping the run.
        self._store = StateStore(qw_dir, spec, recover=REPAIR, tasks_path=tasks_path)
        self._store.load()
        self._warnings = list(self._store.warnings)
        for event in initial_events:
            self._store.record(event)
        started = self._store.state.run_id if self._store.state else None
        if started != run_id:
            raise ValueError(f"the initial events leave run {started!r}, not run {run_id!r}")

    def record(self, event: Dict[str, Any]) -> None:
        """Apply and persist one event (ValueError if the transition is illegal)."""
        with self._lock:
            self._check_open()
            self._store.record(event)

    def record_many(self, events: List[Dict[str, Any]],
                    progress: Sequence[Tuple[str, Dict[str, Any]]] = ()) -> None:
        """One call for what the runner gathered in one loop iteration: each (task_id,
        info) of `progress` as progress() would, then each event as record() would, in
        order. An illegal or unwritable event raises as record() does; the events after it
        are not applied."""
        with self._lock:
            self._check_open()
            for task_id, info in progress:
                self._store.progress(task_id, info)
            for event in events:
                self._store.record(event)

    def progress(self, task_id: str, info: Dict[str, Any]) -> None:
        """Live progress of a running attempt; kept in memory only."""
        with self._lock:
            self._check_open()
            self._store.progress(task_id, info)

    def view(self) -> Dict[str, Any]:
        """The `qw status --json` view, live."""
        with self._lock:
            assert self._store.state is not None
            return self._store.state.view(live=True)

    def warnings(self) -> List[str]:
        """What loading the stored state had to repair: at most one line."""
        return list(self._warnings)

    def close(self, final_event: Optional[Dict[str, Any]] = None) -> None:
        """Record `final_event` if given, then fsync the journal and write the snapshot.
        Closing again without an event does nothing."""
        with self._lock:
            try:
                if final_event is not None:
                    self._check_open()
                    self._store.record(final_event)
            finally:
                if not self._closed:
                    self._closed = True
                    self._store.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("the run's state is closed")


class _FailedStart:
    """Stands in for a StateServer that could not start: every call raises why, so the
    starter sees the error itself (a StateError the user can act on) on its first call."""

    def __init__(self, error: BaseException):
        self.error = error

    def _raise(self, *args: Any) -> None:
        raise self.error

    record = record_many = progress = view = warnings = close = _raise


class _ReadOnlyView:
    """What connect_live's proxies reach: view() and nothing else. (A separate object: the
    manager keys exposed methods by object, so two typeids cannot share one.)"""

    def __init__(self, owner: Any):
        self._owner = owner

    def view(self) -> Dict[str, Any]:
        return self._owner.view()


# ----- inside the manager process

_OWNER: Any = None                  # this process's StateServer (or _FailedStart)
_RUN: Optional[tuple] = None        # (qw_dir, spec, run_id) it serves


def _open_owner(qw_dir: str, spec: str, run_id: str, initial_events: List[dict],
                tasks_path: Optional[str] = None) -> None:
    """The manager process's initializer: load the store and record the initial events."""
    global _OWNER, _RUN
    # A SIGTERM or SIGHUP sent to the whole process group (a service stopping, a terminal
    # closing) must not take the state away while the runner winds down and records the
    # end; multiprocessing already ignores SIGINT here. The owner ends with its parent.
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    _RUN = (qw_dir, spec, run_id)
    try:
        _OWNER = StateServer(qw_dir, spec, run_id, initial_events, tasks_path)
    except OSError as exc:
        _OWNER = _FailedStart(_unwritable(exc, qw_dir))
    except Exception as exc:   # handed to the starter by its first call
        _OWNER = _FailedStart(exc)


def _state_server() -> Any:
    return _OWNER


def _state_view() -> _ReadOnlyView:
    return _ReadOnlyView(_OWNER)


class _OwnerServer(Server):
    """The manager's server, advertising itself and watching its parent while it serves."""

    def serve_forever(self) -> None:
        global _OWNER
        if isinstance(_OWNER, StateServer):
            try:
                _advertise(self.address, bytes(self.authkey))
            except OSError as exc:
                _OWNER = _FailedStart(_unwritable(exc, _RUN[0] if _RUN else ""))
        threading.Thread(target=_watch_parent, args=(self.address, self.authkey),
                         name="qw-parent-watch", daemon=True).start()
        try:
            super().serve_forever()   # ends in sys.exit(0) once shut down
        finally:
            if _RUN is not None:
                _withdraw(*_RUN)


def _advertise(address: Any, authkey: bytes) -> None:
    assert _RUN is not None
    qw_dir, spec, run_id = _RUN
    info = {"run_id": run_id, "spec": spec, "address": address, "authkey": authkey.hex(),
            "pid": os.getpid(), "parent_pid": os.getppid()}
    os.makedirs(os.path.dirname(owner_path(qw_dir, run_id)), exist_ok=True)
    atomic_write(owner_path(qw_dir, run_id), json.dumps(info).encode("utf-8"), mode=0o600)
    atomic_write(live_pointer_path(qw_dir, spec), json.dumps({"run_id": run_id}).encode("utf-8"))


def _watch_parent(address: Any, authkey: bytes) -> None:
    """When the parent dies (even by SIGKILL), write the snapshot and stop serving."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return   # not started by multiprocessing: no parent to outlive
    wait([parent.sentinel])
    if isinstance(_OWNER, StateServer):
        try:
            _OWNER.close()
        except Exception:
            pass   # the journal already holds every event; the snapshot only speeds loading
    try:
        # Stop the server the way BaseManager.shutdown does: a "shutdown" request.
        conn = Client(address, authkey=authkey)
        try:
            dispatch(conn, None, "shutdown")
        finally:
            conn.close()
    except Exception:
        os._exit(0)   # the server cannot be asked; leave anyway rather than linger


def _withdraw(qw_dir: str, spec: str, run_id: str) -> None:
    """Remove the run's owner.json, and the live pointer if it still names this run (a new
    run may already have replaced it)."""
    pointer = live_pointer_path(qw_dir, spec)
    if (_read_json(pointer) or {}).get("run_id") == run_id:
        _remove(pointer)
    _remove(owner_path(qw_dir, run_id))


def withdraw_stale(qw_dir: str, spec: str) -> bool:
    """For a caller holding the spec's lock: remove the live pointer and owner.json left by
    a run that died (True if there were some). LockHeld if that run's state owner is still
    alive: it writes the final snapshot as it goes, so wait for it rather than race it."""
    pointer = live_pointer_path(qw_dir, spec)
    run_id = (_read_json(pointer) or {}).get("run_id")
    if not isinstance(run_id, str):
        existed = os.path.exists(pointer)
        _remove(pointer)
        return existed
    owner = owner_path(qw_dir, run_id)
    pid = (_read_json(owner) or {}).get("pid")
    # (Windows cannot probe a pid here; there the owner's last moments go unchecked.)
    if isinstance(pid, int) and os.name == "posix" and pid_alive(pid):
        raise LockHeld(f"the state owner (pid {pid}) of spec {spec}'s last run {run_id} is "
                       "still writing its state", owner,
                       "wait a moment and try again (remove that file if no qw is running)")
    _withdraw(qw_dir, spec, run_id)
    _remove(pointer)
    return True


def _unwritable(exc: OSError, qw_dir: str) -> StateError:
    return StateError(f"cannot write qw's state ({exc.strerror or exc})",
                      exc.filename or qw_dir, "check that .qw/ is writable")


# ----- the proxies and the manager


class StateServerProxy(BaseProxy):
    """The run's state for the runner and its workers (picklable to spawn children)."""

    _exposed_ = ("record", "record_many", "progress", "view", "warnings", "close")

    def record(self, event: Dict[str, Any]) -> None:
        self._callmethod("record", (event,))

    def record_many(self, events: List[Dict[str, Any]],
                    progress: Sequence[Tuple[str, Dict[str, Any]]] = ()) -> None:
        self._callmethod("record_many", (events, progress))

    def progress(self, task_id: str, info: Dict[str, Any]) -> None:
        self._callmethod("progress", (task_id, info))

    def view(self) -> Dict[str, Any]:
        return self._callmethod("view")

    def warnings(self) -> List[str]:
        return self._callmethod("warnings")

    def close(self, final_event: Optional[Dict[str, Any]] = None) -> None:
        self._callmethod("close", (final_event,))


class StateViewProxy(BaseProxy):
    """Read-only access to a live run's state, for other processes (`qw status`)."""

    _exposed_ = ("view",)

    def view(self) -> Dict[str, Any]:
        return self._callmethod("view")


class StateOwnerManager(BaseManager):
    """The manager process holding one StateServer."""

    # BaseManager._run_server builds its server from cls._Server (the stdlib's
    # SharedMemoryManager swaps it the same way).
    _Server = _OwnerServer


StateOwnerManager.register("state_server", callable=_state_server, proxytype=StateServerProxy)
StateOwnerManager.register("state_view", callable=_state_view, proxytype=StateViewProxy)


class OwnerHandle:
    """The runner's hold on its state owner: `.proxy` to use, `.shutdown()` at the end;
    `.warnings`: what loading the stored state repaired (at most one line, to show)."""

    def __init__(self, proxy: StateServerProxy, manager: StateOwnerManager, qw_dir: str,
                 spec: str, run_id: str, warnings: Optional[List[str]] = None):
        self.proxy = proxy
        self.warnings = list(warnings or [])
        self.address = manager.address
        self.run_id = run_id
        self._manager = manager
        self._qw_dir, self._spec = qw_dir, spec
        self._stopped = False

    def shutdown(self, final_event: Optional[Dict[str, Any]] = None) -> None:
        """Record `final_event` if given, persist everything, stop the owner process and
        withdraw its live pointer. Doing it twice does nothing."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self.proxy.close(final_event)
        finally:
            self._manager.shutdown()
            _withdraw(self._qw_dir, self._spec, self.run_id)  # in case the owner was killed


def start_owner(qw_dir: str, spec: str, run_id: str,
                initial_events: Iterable[Dict[str, Any]],
                tasks_path: Optional[str] = None, ctx=None) -> OwnerHandle:
    """Start the state owner of a run (a process of multiprocessing context `ctx`, spawn
    by default), load the spec's stored state into it and record `initial_events` (which
    start run `run_id`). Damaged state is set aside and rebuilt (with `tasks_path`'s
    checked tasks), saying so in the handle's `.warnings`. Raises StateError if the
    stored state cannot be used (a newer qw's) or written; no process is left running
    then."""
    qw_dir = os.path.abspath(qw_dir)
    manager = StateOwnerManager(address=_listen_address(), authkey=os.urandom(32),
                                ctx=ctx or multiprocessing.get_context("spawn"))
    manager.start(initializer=_open_owner,
                  initargs=(qw_dir, spec, run_id, [dict(e) for e in initial_events],
                            tasks_path))
    try:
        proxy = manager.state_server()
        warnings = proxy.warnings()   # raises what stopped the owner from starting, if any
    except BaseException:
        manager.shutdown()
        _withdraw(qw_dir, spec, run_id)
        raise
    return OwnerHandle(proxy, manager, qw_dir, spec, run_id, warnings)


def connect_live(qw_dir: str, spec: str, timeout: float = 2.0) -> Optional[StateViewProxy]:
    """A read-only proxy (`.view()`) to the spec's live run, or None when no run is live:
    no pointer, the owner's process is gone, or it does not answer within `timeout`."""
    pointer = _read_json(live_pointer_path(qw_dir, spec))
    run_id = pointer.get("run_id") if pointer else None
    info = _read_json(owner_path(qw_dir, run_id)) if isinstance(run_id, str) else None
    if not info:
        return None
    try:
        address = info["address"]
        address = tuple(address) if isinstance(address, list) else address  # AF_INET
        authkey = bytes.fromhex(info["authkey"])
        pid = int(info["pid"])
    except (KeyError, TypeError, ValueError):
        return None
    if not pid_alive(pid):
        return None
    found: List[StateViewProxy] = []

    def connect() -> None:
        try:
            manager = StateOwnerManager(address=address, authkey=authkey)
            manager.connect()
            found.append(manager.state_view())
        except Exception:
            pass   # refused, reset, wrong key, an owner going away: not live

    # A thread, because a stopped (SIGSTOP) owner accepts and then never answers.
    thread = threading.Thread(target=connect, name="qw-connect-live", daemon=True)
    thread.start()
    thread.join(timeout)
    return found[0] if found else None


# ----- small helpers


def _listen_address() -> Optional[str]:
    """None (multiprocessing's default address) unless that would not fit a Unix socket.

    The default is <tempdir>/pymp-XXXXXXXX/listener-XXXXXXXX, 33 characters more than the
    temp dir; a socket path holds 104 bytes on macOS, 108 on Linux. A long TMPDIR would
    break it, so use a short name in /tmp then.
    """
    if os.name != "posix" or len(tempfile.gettempdir()) + 33 < 100:
        return None
    return os.path.join("/tmp", f"qw-{os.urandom(6).hex()}.sock")


def _read_json(path: str) -> Optional[Dict[str, Any]]:
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
