"""`qw dashboard`: a read-only web view of a repository's runs, live and past.

    browser ─GET─► DashboardHandler ─► DashboardData ─┬─ connect_live(): a live run's view
                   (token, method,       (no HTTP)     ├─ History: .qw/runs/*/events.jsonl
                    path checks)                       └─ probe: the machine's load, memory

The API (JSON unless said):

    /                                      the page (qw.dashboard_page)
    /health                                {"ok": true, ...}
    /api/specs                             every spec: live?, last run, totals
    /api/specs/<spec>                      its status view (tasks, totals, phase) and its runs
    /api/runs                              every run, newest first
    /api/runs/<run>                        attempts (start, end, outcome, worker), tasks, totals
    /api/runs/<run>/timeline.svg           the Gantt chart (image/svg+xml)
    /api/runs/<run>/transcripts/<task>/<n> the n-th transcript of the task in the run, as
                                           `qw logs` shows it (text/plain; ?raw=1: the JSONL)
    /api/metrics                           machine resources, pool use and queue of live runs
    /api/stats[?spec=<spec>]               `qw stats --json`

Safety: the server answers GET and HEAD only (anything else is 405); its handlers read
journals, transcripts and the live owners' views, and change nothing: no request can start
a run or a task or touch qw's state. On a loopback address it needs no token but refuses a
Host header naming another host (a web page cannot reach it through DNS rebinding); on
any other address every request needs the token (`?token=` or `Authorization: Bearer`),
else 401. A path is taken apart segment by segment and each name must be a plain name
of something that exists (400 for a malformed one, 404 for an unknown one), so no request
can name a file outside `.qw/`. Errors are JSON, never a traceback.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import re
import secrets
import socket
import threading
import time
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

from qw import __version__
from qw.errors import QwError, UsageError
from qw.history import History, RunHistory, safe_name

LIVE_VIEW_TTL_S = 1.0    # the page asks for several things at once: one owner call serves all
MAX_URL = 2048
_TRANSCRIPT_NUMBER = re.compile(r"\A[1-9][0-9]{0,5}\Z")
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")


class ApiError(Exception):
    """An answer other than 200: the status and one line saying why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# ----- what the API answers


class DashboardData:
    """The API's answers for one repository, from its journals and live state owners.
    Thread-safe; reads only."""

    def __init__(self, repo: str, config_file: Optional[str] = None):
        self.repo = os.path.abspath(repo)
        self.qw_dir = os.path.join(self.repo, ".qw")
        self.history = History(self.qw_dir)
        self._config_file = config_file
        self._lock = threading.Lock()
        self._live: Dict[str, Tuple[float, Optional[Dict[str, Any]]]] = {}
        self._probe: Any = None

    def health(self) -> Dict[str, Any]:
        return {"ok": True, "qw": __version__, "repo": self.repo}

    def specs(self) -> Dict[str, Any]:
        from qw.specdir import list_specs

        specs = []
        for name in list_specs(self.repo):
            view = self._status(name)
            specs.append({"spec": name, "live": bool(view.get("live")),
                          "run_id": view.get("run_id"), "run_status": view.get("run_status"),
                          "phase": view.get("phase"), "totals": view.get("totals"),
                          "error": view.get("error")})
        return {"specs": specs}

    def spec(self, name: str) -> Dict[str, Any]:
        """The spec's `qw status --json` view (live, else its last run, else tasks.md),
        its phase (null until a workflow gives it one) and its runs, newest first."""
        from qw.specdir import list_specs

        _check_name(name, "spec")
        if name not in list_specs(self.repo):
            raise ApiError(404, f"no spec {name!r} in {os.path.join('.claude', 'specs')}")
        view = self._status(name)
        live_run = view.get("run_id") if view.get("live") else None
        runs = [_run_summary(run, run.run_id == live_run)
                for run in reversed(self._runs_of(name, live_run))]
        return dict(view, phase=view.get("phase"), runs=runs)

    def runs(self) -> Dict[str, Any]:
        found = []
        for run_id in reversed(self.history.run_ids()):
            run = self._run(run_id)
            if run is not None:
                found.append(dict(_run_summary(run, run.live), spec=run.spec))
        return {"runs": found}

    def run(self, run_id: str) -> Dict[str, Any]:
        """The run's attempts and tasks; while it is live, its tasks and counts as its owner
        sees them (with each running attempt's progress). Tokens are the transcripts' (a
        running attempt's so far)."""
        run, view = self._run_and_view(run_id)
        data = run.to_json()
        data["now"] = time.time()   # the page measures running time by this clock, not its own
        if view is not None:
            data["tasks"] = view["tasks"]
            data["totals"] = dict(view["totals"], input_tokens=data["totals"]["input_tokens"],
                                  output_tokens=data["totals"]["output_tokens"])
        return data

    def timeline(self, run_id: str) -> str:
        from qw.htmlreport import timeline_svg

        run, _ = self._run_and_view(run_id)
        return timeline_svg(run, now=time.time() if run.live else None)

    def transcript(self, run_id: str, task: str, number: str, raw: bool) -> bytes:
        _check_name(run_id, "run id")
        _check_name(task, "task id")
        if not _TRANSCRIPT_NUMBER.match(number):
            raise ApiError(400, f"bad transcript number {number!r}: a whole number from 1")
        if not self.history.has_run(run_id):
            raise ApiError(404, f"no run {run_id!r}")
        path = self.history.transcript_path(run_id, task, int(number))
        if path is None:
            raise ApiError(404, f"no transcript {number} of task {task!r} in run {run_id}")
        with open(path, "rb") as f:
            data = f.read()
        if raw:
            return data
        from qw.status import render_event

        shown = "".join(render_event(line) for line in data.splitlines(keepends=True))
        head = f"# run {run_id}, task {task}, transcript {number}\n"
        return (head + shown).encode("utf-8")

    def metrics(self) -> Dict[str, Any]:
        """The machine now, and the pool use, queue and totals of every live run."""
        from qw.specdir import list_specs

        live_runs = []
        for name in list_specs(self.repo):
            view = self._live_view(name)
            if view is None:
                continue
            counts = view.get("totals") or {}
            run = self._run(str(view.get("run_id")))
            size, size_from = (run.max_concurrent, "run") if run and run.max_concurrent \
                else (self._configured_pool(), "config")
            live_runs.append({"spec": name, "run_id": view.get("run_id"),
                              "running": counts.get("running", 0),
                              "queued": counts.get("pending", 0) + counts.get("ready", 0),
                              "size": size, "size_from": size_from, "totals": counts})
        pool = {"running": sum(r["running"] for r in live_runs),
                "queued": sum(r["queued"] for r in live_runs),
                "size": sum(r["size"] or 0 for r in live_runs) or None}
        totals: Dict[str, float] = {}
        for r in live_runs:
            for key, value in r["totals"].items():
                if isinstance(value, (int, float)):
                    totals[key] = round(totals.get(key, 0) + value, 6)
        return {"resources": asdict(self._snapshot()), "live_runs": live_runs, "pool": pool,
                "totals": totals}

    def stats(self, spec: Optional[str]) -> Dict[str, Any]:
        from qw.stats import compute_stats

        if spec is not None:
            _check_name(spec, "spec")
        try:
            return compute_stats(self.repo, spec, history=self.history)
        except UsageError as exc:
            raise ApiError(404, exc.what) from None

    # ----- helpers

    def _status(self, name: str) -> Dict[str, Any]:
        """The spec's status view, as `qw status --json` gives it (an unreadable tasks.md
        gives an empty view saying why)."""
        live = self._live_view(name)
        if live is not None:
            return live
        from qw.status import gather_status

        try:
            return dict(gather_status(self.repo, name)[0], live=False)
        except QwError as exc:
            return {"spec": name, "run_id": None, "live": False, "tasks": [], "totals": {},
                    "error": str(exc)}

    def _live_view(self, spec: str) -> Optional[Dict[str, Any]]:
        """The live run's view of `spec`, or None; asked of its owner at most once per
        LIVE_VIEW_TTL_S."""
        from qw.stateowner import connect_live

        now = time.monotonic()
        with self._lock:
            cached = self._live.get(spec)
        if cached is not None and now - cached[0] < LIVE_VIEW_TTL_S:
            return cached[1]
        view = None
        proxy = connect_live(self.qw_dir, spec)
        if proxy is not None:
            try:
                view = dict(proxy.view(), live=True)
            except Exception:
                view = None   # the owner went away between connecting and asking: not live
        with self._lock:
            self._live[spec] = (now, view)
        return view

    def _run_and_view(self, run_id: str) -> Tuple[RunHistory, Optional[Dict[str, Any]]]:
        _check_name(run_id, "run id")
        spec = self.history.spec_of(run_id)
        view = self._live_view(spec) if spec else None
        if view is not None and view.get("run_id") != run_id:
            view = None
        run = self.history.run(run_id, live=view is not None)
        if run is None:
            raise ApiError(404, f"no run {run_id!r} in .qw/runs")
        return run, view

    def _run(self, run_id: str) -> Optional[RunHistory]:
        try:
            return self._run_and_view(run_id)[0]
        except ApiError:
            return None

    def _runs_of(self, spec: str, live_run: Optional[str]) -> List[RunHistory]:
        runs = []
        for run_id in self.history.run_ids():
            if self.history.spec_of(run_id) == spec:
                run = self.history.run(run_id, live=run_id == live_run)
                if run is not None:
                    runs.append(run)
        return runs

    def _configured_pool(self) -> Optional[int]:
        from qw.config import load_config

        try:
            return load_config(self.repo, self._config_file).run.max_concurrent
        except QwError:
            return None

    def _snapshot(self) -> Any:
        from qw.probe import get_probe

        with self._lock:
            if self._probe is None:
                self._probe = get_probe()
            probe = self._probe
        return probe.snapshot()


def _run_summary(run: RunHistory, live: bool) -> Dict[str, Any]:
    totals = run.view.get("totals") or {}
    return {"run_id": run.run_id, "live": live, "status": "running" if live else run.status,
            "started_at": run.started_at, "ended_at": run.ended_at,
            "tasks": totals.get("tasks", 0), "done": totals.get("done", 0),
            "failed": totals.get("failed", 0), "attempts": len(run.attempts),
            "cost_usd": totals.get("cost_usd", 0.0)}


def _check_name(name: str, what: str) -> None:
    if not safe_name(name):
        raise ApiError(400, f"bad {what} {name!r}: letters, digits, '.', '_', '-' only")


# ----- HTTP


class DashboardHandler(BaseHTTPRequestHandler):
    """One request: check the token and the Host, take the path apart, answer."""

    server: "DashboardServer"
    server_version = "qw-dashboard/" + __version__
    protocol_version = "HTTP/1.1"
    timeout = 60   # seconds an idle kept-alive connection holds its thread

    def do_GET(self) -> None:
        self._answer(head=False)

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def __getattr__(self, name: str) -> Any:
        # BaseHTTPRequestHandler looks up do_<METHOD> for any method a client names; every
        # method but GET and HEAD gets 405 (not the stdlib's 501), whatever its name.
        if name.startswith("do_"):
            return self._not_allowed
        raise AttributeError(name)

    def _not_allowed(self) -> None:
        self._send_json(405, {"error": f"method {self.command} not allowed: this server "
                                       "is read-only (GET and HEAD)"},
                        extra={"Allow": "GET, HEAD"})

    def send_error(self, code: int, message: Optional[str] = None,
                   explain: Optional[str] = None) -> None:
        """The stdlib's own errors (a malformed request line, a header too long), as JSON."""
        self.close_connection = True
        self._send_json(code, {"error": message or self.responses.get(code, ("error",))[0]})

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.log is not None:
            self.server.log("%s %s" % (self.address_string(), format % args))

    def _answer(self, head: bool) -> None:
        try:
            refusal = self._refusal()
            if refusal is not None:
                status, payload, extra = refusal
                self._send_json(status, payload, extra, head=head)
                return
            status, content_type, body = self._route()
            self._send(status, content_type, body, head=head)
        except ApiError as exc:
            self._send_json(exc.status, {"error": exc.message}, head=head)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True   # the browser went away: nobody to answer
        except Exception as exc:   # a bug or a file gone mid-read: say so, show no traceback
            if self.server.log is not None:
                self.server.log(f"error answering {self.path!r}: {exc!r}")
            self._send_json(500, {"error": f"internal error ({type(exc).__name__})"},
                            head=head)

    def _refusal(self) -> Optional[Tuple[int, Dict[str, Any], Dict[str, str]]]:
        """Why this request is not answered, or None."""
        if len(self.path) > MAX_URL:
            return 414, {"error": "the address is too long"}, {}
        token = self.server.token
        if token is not None:
            query = parse_qs(urlsplit(self.path).query)
            given = (query.get("token") or [""])[0]
            auth = self.headers.get("Authorization", "")
            if auth.lower().startswith("bearer "):
                given = given or auth[7:].strip()
            if not hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8")):
                return 401, {"error": "a token is needed: add ?token=TOKEN (printed when "
                                      "the dashboard started) or Authorization: Bearer TOKEN"}, \
                    {"WWW-Authenticate": "Bearer"}
            return None
        host = (self.headers.get("Host") or "").strip().lower()
        if host and _host_name(host) not in _LOOPBACK_NAMES:
            return 403, {"error": f"this dashboard answers on the loopback address only, "
                                  f"not for Host {host!r}"}, {}
        return None

    def _route(self) -> Tuple[int, str, bytes]:
        data = self.server.data
        parts = urlsplit(self.path)
        segments = _segments(parts.path)
        query = parse_qs(parts.query)
        if segments == [""]:
            from qw.dashboard_page import PAGE

            return 200, "text/html; charset=utf-8", PAGE.encode("utf-8")
        if segments == ["health"]:
            return _json(data.health())
        if not segments or segments[0] != "api":
            raise ApiError(404, f"no such page {parts.path!r}")
        rest = segments[1:]
        if rest == ["specs"]:
            return _json(data.specs())
        if len(rest) == 2 and rest[0] == "specs":
            return _json(data.spec(rest[1]))
        if rest == ["runs"]:
            return _json(data.runs())
        if len(rest) == 2 and rest[0] == "runs":
            return _json(data.run(rest[1]))
        if len(rest) == 3 and rest[0] == "runs" and rest[2] == "timeline.svg":
            return 200, "image/svg+xml; charset=utf-8", data.timeline(rest[1]).encode("utf-8")
        if len(rest) == 5 and rest[0] == "runs" and rest[2] == "transcripts":
            raw = (query.get("raw") or ["0"])[0] not in ("", "0")
            return 200, "text/plain; charset=utf-8", data.transcript(rest[1], rest[3],
                                                                     rest[4], raw)
        if rest == ["metrics"]:
            return _json(data.metrics())
        if rest == ["stats"]:
            return _json(data.stats((query.get("spec") or [None])[0]))
        raise ApiError(404, f"no such API path {parts.path!r}")

    def _send_json(self, status: int, payload: Dict[str, Any],
                   extra: Optional[Dict[str, str]] = None, head: bool = False) -> None:
        body = json.dumps(dict(payload, status=status)).encode("utf-8")
        self._send(status, "application/json", body, extra, head)

    def _send(self, status: int, content_type: str, body: bytes,
              extra: Optional[Dict[str, str]] = None, head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Frame-Options", "DENY")
        # The page's script and style are inline; it may fetch from this server only.
        self.send_header("Content-Security-Policy",
                         "default-src 'none'; script-src 'unsafe-inline'; "
                         "style-src 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; "
                         "frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)


def _segments(path: str) -> List[str]:
    """The path's segments, each %-decoded; ApiError 400 if one decodes to something that
    is not a plain name (a separator, `..`, a control character, bad UTF-8)."""
    if not path.startswith("/"):
        raise ApiError(400, "the path must start with /")
    raw = path[1:].split("/")
    if len(raw) > 1 and raw[-1] == "":
        raw = raw[:-1]   # a trailing slash
    segments = []
    for piece in raw:
        try:
            text = unquote(piece, errors="strict")
        except UnicodeDecodeError:
            raise ApiError(400, f"bad path segment {piece!r}: not UTF-8") from None
        if text in (".", "..") or any(c in "/\\" or ord(c) < 32 for c in text):
            raise ApiError(400, f"bad path segment {piece!r}")
        segments.append(text)
    return segments


def _json(payload: Any) -> Tuple[int, str, bytes]:
    return 200, "application/json", json.dumps(payload, ensure_ascii=False,
                                               default=str).encode("utf-8")


def _host_name(host: str) -> str:
    """The Host header without its port."""
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class DashboardServer(ThreadingHTTPServer):
    """The HTTP server; each request in a thread of its own."""

    daemon_threads = True

    def __init__(self, address: Tuple[str, int], data: DashboardData, token: Optional[str],
                 log: Optional[Callable[[str], None]]):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.data = data
        self.token = token
        self.log = log
        super().__init__(address, DashboardHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-answer is not an error worth a traceback on stderr.
        if self.log is not None:
            self.log(f"connection from {client_address} failed")


class RunningDashboard:
    """A dashboard serving in a background thread: `.url`, `.token` (None on loopback
    without one), `.wait()` until it stops, `.shutdown()`."""

    def __init__(self, server: DashboardServer, host: str):
        self._server = server
        self.host = host
        self.port = server.server_address[1]
        self.token = server.token
        shown = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
        self.url = f"http://{'[' + shown + ']' if ':' in shown else shown}:{self.port}/"
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="qw-dashboard", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            self._server.serve_forever(poll_interval=0.2)
        finally:
            self._stopped.set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the server stops (or `timeout`); True if it has stopped."""
        return self._stopped.wait(timeout)

    def shutdown(self) -> None:
        """Stop serving and close the socket. Doing it twice does nothing."""
        if not self._stopped.is_set():
            self._server.shutdown()
        self._thread.join()
        self._server.server_close()


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(repo: str, host: str = "127.0.0.1", port: int = 8080, token: Optional[str] = None,
          config_file: Optional[str] = None,
          log: Optional[Callable[[str], None]] = None) -> RunningDashboard:
    """Serve the dashboard of `repo` on host:port (port 0: any free port) in a background
    thread. Off loopback a token is required: `token`, or a new random one (the result's
    `.token`, to show the user). `log` receives one line per request. UsageError if the
    address cannot be used (a port in use, a host not of this machine)."""
    host = host.strip("[]")
    if token is None and not is_loopback(host):
        token = secrets.token_urlsafe(24)
    if token is not None and not token:
        raise UsageError("the dashboard token is empty", "--token", "give a non-empty token")
    try:
        server = DashboardServer((host, port), DashboardData(repo, config_file), token, log)
    except OSError as exc:
        raise UsageError(f"cannot serve the dashboard on {host}:{port} "
                         f"({exc.strerror or exc})", "qw dashboard",
                         "choose another port with --port N (0: any free port) or another "
                         "--host") from None
    return RunningDashboard(server, host)


def banner(dashboard: RunningDashboard) -> str:
    """What `qw dashboard` prints when it starts: where to open it, and the token."""
    lines = [f"qw dashboard: {dashboard.url}"
             + (f"?token={dashboard.token}" if dashboard.token else "")]
    if dashboard.token:
        lines.append(f"token: {dashboard.token} (needed by every request: ?token= or "
                     "Authorization: Bearer)")
    lines.append("read-only; Ctrl-C stops it")
    return "\n".join(lines) + "\n"
