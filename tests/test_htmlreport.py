"""The static run report `.qw/runs/<run>/report.html`: self-contained, the timeline, the
tasks, the failed attempts with their transcripts; written atomically; user text escaped."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from qw.history import History, build_run
from qw.htmlreport import REPORT_FILE, render_report, timeline_svg, write_report
from qw.statestore import StateStore
from runhelpers import QwRepo
from test_dashboard import journal_attempts, make_finished_run


class Page(HTMLParser):
    """What a reader of the page sees: its tags with their attributes, and its text."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: List[Tuple[str, Dict[str, str]]] = []
        self.text: List[str] = []
        self.classed: List[Tuple[str, str]] = []   # (class of the enclosing tag, its text)
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)
        self.classed.append((self.tags[-1][1].get("class", "") if self.tags else "", data))

    def cards(self) -> Dict[str, str]:
        """The summary cards: each `k` (name) text with the `v` (value) text after it."""
        names = [t for c, t in self.classed if c == "k"]
        values = [t for c, t in self.classed if c == "v"]
        return dict(zip(names, values))

    def find(self, tag: str, **attrs) -> List[Dict[str, str]]:
        return [a for t, a in self.tags if t == tag and all(a.get(k.rstrip("_")) == v
                                                            for k, v in attrs.items())]

    @property
    def all_text(self) -> str:
        return " ".join(self.text)


@pytest.fixture
def real_run(tmp_path) -> Tuple[QwRepo, str]:
    """A repository and the id of a finished real run in it (make_finished_run)."""
    repo = QwRepo(tmp_path)
    try:
        return repo, make_finished_run(repo)
    finally:
        repo.check_no_leftovers()


def test_the_report_of_a_real_run(real_run):
    repo, run_id = real_run
    qw_dir = repo.root / ".qw"
    path = write_report(str(qw_dir), run_id)
    assert path == str(qw_dir / "runs" / run_id / REPORT_FILE)
    text = Path(path).read_text()
    page = Page(text)
    # Self-contained: no script, nothing loaded from elsewhere.
    assert not page.find("script") and not page.find("link")
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in text
    attempts = journal_attempts(repo, run_id)
    bars = page.find("g", class_="bar")
    assert [(b["data-task"], int(b["data-attempt"]), b["data-outcome"]) for b in bars] == \
        [(a["task"], a["attempt"], a["outcome"]) for a in attempts]
    rows = {r["data-task"] for r in page.find("tr") if "data-task" in r}
    assert rows == {"1", "2", "3", "4"}
    errors = page.find("li", class_="error")
    assert [e["data-task"] for e in errors] == ["2", "3", "3"]
    links = [a["href"] for a in page.find("a")]
    assert links == ["2.1.jsonl", "3.1.jsonl", "3.2.jsonl"]
    assert all((qw_dir / "runs" / run_id / link).is_file() for link in links)
    assert "crashed" in page.all_text and "failed" in page.all_text


def test_the_tokens_come_from_the_journal_without_the_transcripts(real_run):
    # The run's end journals each attempt's tokens: the report (written as the run ends)
    # need not open a transcript per attempt, and tells the same with them gone.
    repo, run_id = real_run
    ended = [e for e in repo.journal(run_id) if e["type"] == "attempt_ended"]
    tokens = (sum(e["input_tokens"] for e in ended), sum(e["output_tokens"] for e in ended))
    assert tokens[0] > 0 and tokens[1] > 0
    qw_dir = repo.root / ".qw"
    for transcript in (qw_dir / "runs" / run_id).glob("*.jsonl"):
        if transcript.name != "events.jsonl":
            transcript.unlink()
    cards = Page(Path(write_report(str(qw_dir), run_id)).read_text()).cards()
    assert cards["tokens in / out"] == f"{tokens[0]:,} / {tokens[1]:,}"


def record_run(qw_dir: Path, title: str = "Plain", message: str = "broke",
               end_run: bool = True) -> str:
    """A run of spec `w` written with the state store: task 1 ok on worker 1, task 2
    crashed on worker 2, task 3 started on worker 1 and (end_run=False) never ended."""
    run_id = "20260101-120000-abcd"
    store = StateStore(str(qw_dir), "w")
    store.load()
    record = store.record
    record({"type": "run_started", "t": 100.0, "run_id": run_id, "spec": "w",
            "tasks": [["1", "One"], ["2", title], ["3", "Three"]]})
    record({"type": "attempt_started", "t": 101.0, "task": "1", "attempt": 1, "worker": 1})
    record({"type": "attempt_started", "t": 101.5, "task": "2", "attempt": 1, "worker": 2})
    record({"type": "attempt_ended", "t": 103.0, "task": "2", "attempt": 1,
            "outcome": "crashed", "message": message, "cost_usd": 0.0, "duration_s": 1.5})
    record({"type": "task_failed", "t": 103.0, "task": "2", "error": message})
    record({"type": "attempt_ended", "t": 111.0, "task": "1", "attempt": 1, "outcome": "ok",
            "message": "Done.", "cost_usd": 0.25, "duration_s": 10.0, "peak_rss_mb": 300.0})
    record({"type": "task_done", "t": 111.0, "task": "1"})
    record({"type": "attempt_started", "t": 112.0, "task": "3", "attempt": 1, "worker": 1})
    if end_run:
        record({"type": "attempt_ended", "t": 120.0, "task": "3", "attempt": 1,
                "outcome": "ok", "cost_usd": 0.1, "duration_s": 8.0})
        record({"type": "task_done", "t": 120.0, "task": "3"})
        record({"type": "run_ended", "t": 121.0, "status": "failed", "exit_code": 1})
    store.close()
    transcript = qw_dir / "runs" / run_id / "1.1.jsonl"
    transcript.write_text(json.dumps({"type": "result", "subtype": "success", "is_error": False,
                                      "num_turns": 3, "result": "Done.", "total_cost_usd": 0.25,
                                      "usage": {"input_tokens": 100,
                                                "cache_read_input_tokens": 50,
                                                "output_tokens": 7}}) + "\n")
    return run_id


def test_user_text_is_escaped(tmp_path):
    qw_dir = tmp_path / ".qw"
    run_id = record_run(qw_dir, title='<script>alert("t")</script> & co',
                        message='<img src=x onerror="alert(1)">')
    text = Path(write_report(str(qw_dir), run_id)).read_text()
    page = Page(text)
    assert not page.find("script") and not page.find("img")
    assert '<script>alert("t")</script> & co' in page.all_text
    assert '<img src=x onerror="alert(1)">' in page.all_text
    assert "&lt;script&gt;" in text


def test_figures_tokens_and_an_interrupted_attempt(tmp_path):
    qw_dir = tmp_path / ".qw"
    run_id = record_run(qw_dir, end_run=False)   # the run died with task 3 running
    page = Page(Path(write_report(str(qw_dir), run_id)).read_text())
    cards = page.cards()
    assert cards["status"] == "interrupted"
    assert cards["tasks done"] == "1/3" and cards["failed"] == "1"
    assert cards["cost"] == "$0.2500" and cards["tokens in / out"] == "150 / 7"
    assert cards["peak concurrency"] == "2" and cards["peak memory"] == "300 MB"
    bars = {b["data-task"]: b["data-outcome"] for b in page.find("g", class_="bar")}
    assert bars == {"1": "ok", "2": "crashed", "3": "interrupted"}


def test_a_later_reset_does_not_stretch_the_dead_run(tmp_path):
    qw_dir = tmp_path / ".qw"
    run_id = record_run(qw_dir, end_run=False)   # last sign of life: task 3 starts at 112
    store = StateStore(str(qw_dir), "w")
    store.load()
    store.record({"type": "task_status", "t": 5000.0, "task": "3", "status": "pending",
                  "reason": "interrupted"})   # what `qw reset` writes, long after
    store.record({"type": "task_reset", "t": 5000.0, "task": "3", "hard": False})
    store.close()
    run = History(str(qw_dir)).run(run_id)
    assert run.last_event_at == 112.0 and run.status == "interrupted"
    held = run.attempts[-1]
    assert (held.task, held.outcome, held.ended_at) == ("3", "interrupted", 112.0)
    assert Page(render_report(run)).cards()["wall time"] == "12s"


def test_the_report_is_replaced_atomically(tmp_path):
    qw_dir = tmp_path / ".qw"
    run_id = record_run(qw_dir)
    first = Path(write_report(str(qw_dir), run_id, now=1000.0)).read_bytes()
    second = Path(write_report(str(qw_dir), run_id, now=2000.0)).read_bytes()
    assert first != second   # the time it was written changed, nothing else
    run_dir = qw_dir / "runs" / run_id
    assert sorted(p.name for p in run_dir.iterdir()) == ["1.1.jsonl", "events.jsonl",
                                                         REPORT_FILE]


def test_an_unknown_run_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no run"):
        write_report(str(tmp_path / ".qw"), "20260101-000000-none")
    with pytest.raises(ValueError, match="no run"):
        write_report(str(tmp_path / ".qw"), "../../etc")


def test_a_running_attempt_reaches_now_on_its_lane(tmp_path):
    qw_dir = tmp_path / ".qw"
    run_id = record_run(qw_dir, end_run=False)
    live = History(str(qw_dir)).run(run_id, live=True)
    assert [a.outcome for a in live.attempts] == ["ok", "crashed", None]   # start order
    svg = timeline_svg(live, now=140.0)
    bars = re.findall(r'<g class="bar" data-task="(\w+)".*?<rect x="([\d.]+)" y="([\d.]+)" '
                      r'width="([\d.]+)"', svg, re.S)
    ends = {task: float(x) + float(w) for task, x, y, w in bars}
    lanes = {task: y for task, x, y, w in bars}
    assert ends["3"] == pytest.approx(1000 - 12, abs=0.2)   # the plot's right edge: now
    assert lanes["1"] == lanes["3"] != lanes["2"]             # workers 1, 1 and 2
    assert 'data-outcome="running"' in svg


def test_an_empty_run_says_so():
    run = build_run("r", [{"type": "run_started", "t": 1.0, "run_id": "r", "spec": "s",
                           "tasks": []}])
    assert "no attempts yet" in timeline_svg(run)
