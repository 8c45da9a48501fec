"""The dashboard's API over real runs: one finished (`qw run` with the fake claude), one
live (a task held mid-flight), every endpoint, the token rule, read-only, bad paths."""

from __future__ import annotations

import http.client
import json
import os
import socket
from typing import Dict, List, Optional

import pytest

from qw.dashboard import serve
from qw.errors import UsageError
from qw.stats import compute_stats
from runhelpers import QwRepo, wait_until

# Spec `s`, run to the end: an ok task, one that succeeds on its retry, one that fails
# for good, and one that waits for the first.
FINISHED_TASKS = """
- [ ] 1. Build the base
  - FAKE: sleep 0.3
- [ ] 2. Flaky service
  - FAKE: fail-first 1 529
  - _Depends: none_
- [ ] 3. Broken for good
  - FAKE: no-result
  - _Depends: none_
- [ ] 4. After the base
  - _Depends: 1_
"""
# Spec `live`, held mid-run: task 1 runs until the test writes the file `go`, task 2 has
# already failed (no retry for max-turns), task 3 waits for task 1.
LIVE_TASKS = """
- [ ] 1. Held until released
  - FAKE: wait-file go
- [ ] 2. Gives up at once
  - FAKE: max-turns
  - _Depends: none_
- [ ] 3. After the held one
  - _Depends: 1_
"""


class Response:
    def __init__(self, status: int, headers: Dict[str, str], body: bytes):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def __repr__(self) -> str:
        return f"{self.status} {self.headers.get('Content-Type')} {self.body[:500]!r}"


def fetch(port: int, path: str, method: str = "GET",
          headers: Optional[Dict[str, str]] = None) -> Response:
    """One request to the dashboard on 127.0.0.1, the path sent exactly as given."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = headers or {}
        conn.putrequest(method, path, skip_host="Host" in headers, skip_accept_encoding=True)
        for key, value in headers.items():
            conn.putheader(key, value)
        conn.endheaders()
        response = conn.getresponse()
        return Response(response.status, dict(response.getheaders()), response.read())
    finally:
        conn.close()


def get_json(port: int, path: str) -> dict:
    response = fetch(port, path)
    assert response.status == 200, response
    assert response.headers["Content-Type"] == "application/json"
    return response.json()


def add_spec(repo: QwRepo, name: str, tasks: str) -> None:
    folder = repo.root / ".claude" / "specs" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tasks.md").write_text(tasks.strip("\n") + "\n")


def make_finished_run(repo: QwRepo) -> str:
    """Run spec `s` with FINISHED_TASKS to the end (exit 1: task 3 fails); its run id."""
    repo.configure(run="max_retries = 1")
    repo.write_tasks(FINISHED_TASKS)
    done = repo.run("run", "s", "-j", "2")
    assert done.code == 1, done
    return repo.runs()[-1]


def start_live_run(repo: QwRepo, port: int, spec: str = "live"):
    """Start `qw run SPEC` with LIVE_TASKS and wait until the dashboard shows it live with
    task 1 running and task 2 failed; (process, run id)."""
    add_spec(repo, spec, LIVE_TASKS)
    proc = repo.start("run", spec, "-j", "2")

    def shown():
        if proc.poll() is not None:
            pytest.fail(f"the live run ended early:\n{repo.output(proc)}")
        view = get_json(port, f"/api/specs/{spec}")
        statuses = {t["id"]: t["status"] for t in view["tasks"]}
        ready = view["live"] and statuses.get("1") == "running" and \
            statuses.get("2") == "failed"
        return view if ready else None

    view = wait_until(shown, 45, f"spec {spec} to show live, 1 running and 2 failed",
                      lambda: repo.output(proc))
    return proc, view["run_id"]


class Site:
    def __init__(self, repo: QwRepo, port: int, finished: str, live: str):
        self.repo, self.port, self.finished, self.live = repo, port, finished, live


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A repository with a finished run of spec `s` and a live run of spec `live`, and a
    dashboard over it."""
    repo = QwRepo(tmp_path_factory.mktemp("site"))
    dashboard = None
    proc = None
    try:
        finished = make_finished_run(repo)
        dashboard = serve(str(repo.root), port=0)
        proc, live = start_live_run(repo, dashboard.port)
        yield Site(repo, dashboard.port, finished, live)
    finally:
        if dashboard is not None:
            dashboard.shutdown()
        repo.release("go")
        if proc is not None:
            assert repo.finish(proc).code == 1   # task 2 failed
        repo.check_no_leftovers()


def journal_attempts(repo: QwRepo, run_id: str) -> List[dict]:
    """(task, attempt, worker, start, end, outcome) straight from the run's events.jsonl."""
    found, open_ = [], {}
    for event in repo.journal(run_id):
        if event["type"] == "attempt_started":
            open_[event["task"]] = {"task": event["task"], "attempt": event["attempt"],
                                    "worker": event["worker"], "started_at": event["t"],
                                    "ended_at": None, "outcome": None}
            found.append(open_[event["task"]])
        elif event["type"] == "attempt_ended":
            open_.pop(event["task"]).update(ended_at=event["t"], outcome=event["outcome"])
    return found


# ----- every endpoint over the finished run


def test_the_page_is_one_self_contained_document(site):
    response = fetch(site.port, "/")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    page = response.text
    assert "<script>" in page and "/api/specs" in page and "/api/metrics" in page
    # Offline: nothing is loaded from anywhere else.
    assert "http://" not in page and "https://" not in page
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]


def test_health(site):
    health = get_json(site.port, "/health")
    assert health["ok"] is True and health["repo"] == str(site.repo.root)


def test_specs_lists_every_spec_live_or_with_its_last_run(site):
    specs = {s["spec"]: s for s in get_json(site.port, "/api/specs")["specs"]}
    assert set(specs) == {"s", "live"}
    assert specs["s"]["live"] is False and specs["s"]["run_id"] == site.finished
    assert specs["s"]["run_status"] == "failed"
    assert (specs["s"]["totals"]["done"], specs["s"]["totals"]["failed"]) == (3, 1)
    assert specs["live"]["live"] is True and specs["live"]["run_id"] == site.live


def test_a_finished_spec_shows_its_last_run_as_qw_status_does(site):
    view = get_json(site.port, "/api/specs/s")
    status = site.repo.status()
    assert view["live"] is False and view["phase"] is None
    assert [(t["id"], t["status"], t["attempts"]) for t in view["tasks"]] == \
        [(t["id"], t["status"], t["attempts"]) for t in status["tasks"]] == \
        [("1", "done", 1), ("2", "done", 2), ("3", "failed", 2), ("4", "done", 1)]
    assert [r["run_id"] for r in view["runs"]] == [site.finished]
    assert view["runs"][0]["status"] == "failed"


def test_a_run_lists_its_attempts_as_the_journal_has_them(site):
    run = get_json(site.port, f"/api/runs/{site.finished}")
    assert run["spec"] == "s" and run["live"] is False and run["status"] == "failed"
    shown = [{k: a[k] for k in ("task", "attempt", "worker", "started_at", "ended_at",
                                "outcome")} for a in run["attempts"]]
    assert shown == journal_attempts(site.repo, site.finished)
    assert sorted(run["workers"]) == [1, 2]
    assert run["peak_concurrency"] == 2
    by_task = {(a["task"], a["attempt"]): a for a in run["attempts"]}
    assert by_task[("2", 1)]["outcome"] == "overloaded" and by_task[("2", 1)]["retried"]
    assert by_task[("3", 2)]["outcome"] == "crashed" and not by_task[("3", 2)]["retried"]
    assert run["totals"]["cost_usd"] == pytest.approx(0.03)
    listed = get_json(site.port, "/api/runs")["runs"]
    assert {r["run_id"] for r in listed} == {site.finished, site.live}


def test_the_timeline_has_one_bar_per_attempt_on_its_worker_lane(site):
    response = fetch(site.port, f"/api/runs/{site.finished}/timeline.svg")
    assert response.status == 200
    assert response.headers["Content-Type"] == "image/svg+xml; charset=utf-8"
    svg = response.text
    assert svg.startswith("<svg") and "worker 1" in svg and "worker 2" in svg
    assert svg.count('class="bar"') == len(journal_attempts(site.repo, site.finished))
    assert 'data-task="3" data-attempt="2" data-outcome="crashed"' in svg


def test_a_transcript_is_served_as_text_and_raw(site):
    base = f"/api/runs/{site.finished}/transcripts/1/1"
    shown = fetch(site.port, base)
    assert shown.status == 200 and shown.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert "[init] model fake-model" in shown.text and "[end] success" in shown.text
    raw = fetch(site.port, base + "?raw=1")
    path = site.repo.root / ".qw" / "runs" / site.finished / "1.1.jsonl"
    assert raw.body == path.read_bytes()


def test_stats_endpoint_is_qw_stats(site):
    assert get_json(site.port, "/api/stats?spec=s") == compute_stats(str(site.repo.root), "s")
    assert get_json(site.port, "/api/stats")["runs"] == 2


# ----- the live run


def test_a_live_run_comes_from_its_state_owner(site):
    view = get_json(site.port, "/api/specs/live")
    assert view["live"] is True and view["run_id"] == site.live
    assert view["runs"][0] == dict(view["runs"][0], run_id=site.live, live=True,
                                   status="running")
    run = get_json(site.port, f"/api/runs/{site.live}")
    assert run["live"] is True and run["status"] == "running" and run["ended_at"] is None
    held = [a for a in run["attempts"] if a["task"] == "1"]
    assert len(held) == 1 and held[0]["ended_at"] is None and held[0]["outcome"] is None
    failed = [a for a in run["attempts"] if a["task"] == "2"]
    assert [a["outcome"] for a in failed] == ["max_turns"]
    tasks = {t["id"]: t for t in run["tasks"]}
    assert tasks["1"]["status"] == "running" and "progress" in tasks["1"]
    svg = fetch(site.port, f"/api/runs/{site.live}/timeline.svg").text
    assert 'data-task="1" data-attempt="1" data-outcome="running"' in svg


def test_metrics_show_the_machine_and_the_live_pool(site):
    metrics = get_json(site.port, "/api/metrics")
    resources = metrics["resources"]
    assert resources["cpu_count"] >= 1 and resources["backend"] in ("psutil", "stdlib")
    assert [(r["spec"], r["run_id"], r["running"]) for r in metrics["live_runs"]] == \
        [("live", site.live, 1)]
    assert metrics["pool"] == {"running": 1, "queued": 1, "size": 2}   # qw.toml: 2
    assert metrics["totals"]["failed"] == 1


def test_a_run_that_ends_is_read_from_its_journal(tmp_path):
    repo = QwRepo(tmp_path)
    dashboard = serve(str(repo.root), port=0)
    proc = None
    try:
        proc, run_id = start_live_run(repo, dashboard.port, spec="s")
        repo.release("go")
        assert repo.finish(proc).code == 1
        ended = wait_until(lambda: (lambda v: v if not v["live"] else None)(
            get_json(dashboard.port, "/api/specs/s")), 15, "the run to show as ended")
        assert ended["run_id"] == run_id and ended["run_status"] == "failed"
        run = get_json(dashboard.port, f"/api/runs/{run_id}")
        assert run["live"] is False
        assert [(a["task"], a["outcome"]) for a in run["attempts"]] == \
            [("1", "ok"), ("2", "max_turns"), ("3", "ok")]
        assert get_json(dashboard.port, "/api/metrics")["live_runs"] == []
    finally:
        dashboard.shutdown()
        repo.release("go")
        repo.check_no_leftovers()


# ----- safety


def test_off_loopback_every_request_needs_the_token(tmp_path):
    dashboard = serve(str(tmp_path), host="0.0.0.0", port=0)
    try:
        token = dashboard.token
        assert token and len(token) >= 24
        for path in ("/", "/health", "/api/specs", "/api/metrics", "/nothing"):
            refused = fetch(dashboard.port, path)
            assert refused.status == 401, (path, refused)
            assert "token" in refused.json()["error"]
            assert refused.headers["WWW-Authenticate"] == "Bearer"
        assert fetch(dashboard.port, f"/health?token={token}").status == 200
        assert fetch(dashboard.port, "/api/specs",
                     headers={"Authorization": f"Bearer {token}"}).status == 200
        assert fetch(dashboard.port, "/health?token=" + "x" * len(token)).status == 401
        assert fetch(dashboard.port, "/health",
                     headers={"Authorization": "Bearer wrong"}).status == 401
    finally:
        dashboard.shutdown()


def test_loopback_needs_no_token_but_refuses_other_host_names(tmp_path):
    dashboard = serve(str(tmp_path), port=0)
    try:
        assert dashboard.token is None
        assert fetch(dashboard.port, "/health").status == 200
        ok = fetch(dashboard.port, "/health", headers={"Host": f"localhost:{dashboard.port}"})
        assert ok.status == 200
        # A page on another site whose name resolves to 127.0.0.1 (DNS rebinding).
        rebound = fetch(dashboard.port, "/api/specs",
                        headers={"Host": f"evil.example:{dashboard.port}"})
        assert rebound.status == 403 and "loopback" in rebound.json()["error"]
    finally:
        dashboard.shutdown()


def test_an_explicit_token_is_required_on_loopback_too(tmp_path):
    dashboard = serve(str(tmp_path), port=0, token="s3cret")
    try:
        assert fetch(dashboard.port, "/health").status == 401
        assert fetch(dashboard.port, "/health?token=s3cret").status == 200
    finally:
        dashboard.shutdown()


def files_of_finished_run(site) -> Dict[str, tuple]:
    """Size and mtime of every file the finished run left, and of its spec's state."""
    qw = site.repo.root / ".qw"
    paths = list((qw / "runs" / site.finished).iterdir()) + list((qw / "state").glob("s.*"))
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in paths}


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE",
                                    "CONNECT", "RUN"])
def test_only_get_and_head_are_answered(site, method):
    before = files_of_finished_run(site)
    response = fetch(site.port, "/api/specs/s", method=method,
                     headers={"Content-Length": "0"})
    assert response.status == 405, response
    assert response.headers["Allow"] == "GET, HEAD"
    assert "read-only" in response.json()["error"]
    assert files_of_finished_run(site) == before


def test_head_answers_headers_only(site):
    head = fetch(site.port, "/api/specs", method="HEAD")
    assert head.status == 200 and head.body == b""
    assert int(head.headers["Content-Length"]) == len(fetch(site.port, "/api/specs").body)


@pytest.mark.parametrize("path,status", [
    ("/api/runs/..", 400),
    ("/api/runs/%2e%2e", 400),
    ("/api/runs/..%2fstate", 400),
    ("/api/runs/%2E%2E%2Fstate%2Fs.json", 400),
    ("/api/specs/..%2F..%2F..%2Fetc%2Fpasswd", 400),
    ("/api/specs/%252e%252e", 400),
    ("/api/specs/.hidden", 400),
    ("/api/runs/{run}/transcripts/..%2f..%2fstate%2fs/1", 400),
    ("/api/runs/{run}/transcripts/1/0", 400),
    ("/api/runs/{run}/transcripts/1/-1", 400),
    ("/api/runs/{run}/transcripts/1/1.jsonl", 400),
    ("/api/runs/{run}/transcripts/1/99", 404),
    ("/api/runs/{run}/transcripts/nope/1", 404),
    ("/api/runs/{run}/transcripts/events/1", 404),
    ("/api/runs/{run}/../../state/s.json", 400),
    ("/api/runs/{run}/owner.json", 404),
    ("/api/runs/20990101-000000-dead", 404),
    ("/api/specs/nope", 404),
    ("/api/stats?spec=nope", 404),
    ("/api/stats?spec=..%2F..", 400),
    ("/api/runs/%ff", 400),
    ("/api/runs/a%00b", 400),
    ("/api/runs/a%5cb", 400),
    ("/../../etc/passwd", 400),
    ("/etc/passwd", 404),
    ("/api", 404),
    ("/api/nothing", 404),
    ("/favicon.ico", 404),
    ("/" + "a" * 3000, 414),
])
def test_malformed_and_unknown_paths_get_a_json_error(site, path, status):
    response = fetch(site.port, path.format(run=site.finished))
    assert response.status == status, response
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert body["status"] == status and body["error"]
    assert "Traceback" not in response.text and "root:" not in response.text


def test_links_out_of_qw_are_not_followed(site, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.1.jsonl").write_text('{"type":"secret"}\n')
    (outside / "events.jsonl").write_text("")
    run_dir = site.repo.root / ".qw" / "runs" / site.finished
    link = run_dir / "secret.1.jsonl"
    run_link = site.repo.root / ".qw" / "runs" / "20000101-000000-link"
    os.symlink(outside / "secret.1.jsonl", link)
    os.symlink(outside, run_link)
    try:
        assert fetch(site.port, f"/api/runs/{site.finished}/transcripts/secret/1").status \
            == 404
        assert fetch(site.port, "/api/runs/20000101-000000-link").status == 404
        assert fetch(site.port, "/api/runs/20000101-000000-link/transcripts/secret/1") \
            .status == 404
    finally:
        link.unlink()
        run_link.unlink()


def test_a_port_in_use_is_a_usage_error(tmp_path):
    taken = socket.socket()
    try:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        with pytest.raises(UsageError, match="cannot serve the dashboard"):
            serve(str(tmp_path), port=taken.getsockname()[1])
    finally:
        taken.close()
