"""The dashboard page in a real headless Chromium, over a finished run and a live one: the
tasks, the timeline and an error must be in the rendered DOM. A screenshot of each is
kept for the record (its path is printed).

Needs Debian's `chromium` (.ci/run installs it). Without it the test is skipped, unless
QW_REQUIRE_CHROMIUM=1: then it fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from qw.dashboard import serve
from runhelpers import QwRepo
from test_dashboard import fetch, journal_attempts, make_finished_run, start_live_run
from test_htmlreport import Page

CHROMIUM_BOUND = 120.0
SCREENSHOTS = Path(tempfile.gettempdir()) / "qw-dashboard-screenshots"


def chromium_or_skip() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        reason = "chromium not found (Debian: apt-get install chromium; .ci/run installs it)"
        if os.environ.get("QW_REQUIRE_CHROMIUM") == "1":
            pytest.fail(f"{reason}; QW_REQUIRE_CHROMIUM=1 requires it")
        pytest.skip(reason)
    return found


def render(chromium: str, url: str, workdir: Path, name: str) -> Tuple[str, Path]:
    """The page's DOM once its script has run (5 s of virtual time: its fetches finish and
    it redraws twice), and a 1280x900 screenshot of it."""
    shot = workdir / f"{name}.png"
    argv = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={workdir / ('profile-' + name)}",
            "--virtual-time-budget=5000", "--window-size=1280,900", f"--screenshot={shot}",
            "--dump-dom", url]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=str(workdir), start_new_session=True)
    try:
        out, err = proc.communicate(timeout=CHROMIUM_BOUND)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"chromium did not finish within {CHROMIUM_BOUND:.0f}s:\n"
                    f"{err.decode(errors='replace')[-3000:]}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)   # helpers it may leave behind
        except OSError:
            pass
    dom = out.decode("utf-8", "replace")
    assert proc.returncode == 0 and "<html" in dom, err.decode(errors="replace")[-3000:]
    assert shot.is_file(), f"no screenshot: {err.decode(errors='replace')[-3000:]}"
    return dom, shot


def keep(shot: Path, capsys) -> None:
    """Copy the screenshot to a stable place and say where."""
    SCREENSHOTS.mkdir(exist_ok=True)
    kept = SCREENSHOTS / shot.name
    shutil.copyfile(shot, kept)
    with capsys.disabled():
        print(f"\nscreenshot: {kept}")


def chips(page: Page) -> Dict[str, str]:
    """task id -> status, from the "tasks by status" chips."""
    return {a["data-task"]: a["class"].split()[1] for a in page.find("div")
            if a.get("class", "").startswith("chip ")}


def bars(page: Page) -> List[Tuple[str, str]]:
    return [(g["data-task"], g["data-outcome"]) for g in page.find("g", class_="bar")]


def test_the_page_renders_tasks_timeline_and_errors(tmp_path, capsys):
    chromium = chromium_or_skip()
    repo = QwRepo(tmp_path / "repo")
    loopback = open_to_all = proc = None
    try:
        finished = make_finished_run(repo)
        loopback = serve(str(repo.root), port=0)
        # The live run is watched through a dashboard bound to every address, with its
        # token in the page's address: the page must pass it on to every request.
        open_to_all = serve(str(repo.root), host="0.0.0.0", port=0)
        proc, live = start_live_run(repo, loopback.port)

        dom, shot = render(chromium, f"http://127.0.0.1:{loopback.port}/#spec=s", tmp_path,
                           "dashboard-finished")
        keep(shot, capsys)
        page = Page(dom)
        assert chips(page) == {"1": "done", "2": "done", "3": "failed", "4": "done"}
        expected = [(a["task"], a["outcome"]) for a in journal_attempts(repo, finished)]
        assert bars(page) == expected
        errors = page.find("li", class_="error")
        assert [e["data-task"] for e in errors] == ["3", "3", "2"]   # newest first
        assert "crashed" in page.all_text and "fake crash: something broke" in page.all_text
        link = next(a["href"] for a in page.find("a") if "/transcripts/3/" in a["href"])
        assert fetch(loopback.port, link).status == 200
        assert page.find("section", id="problem")[0]["style"] == "display: none;"
        assert "3/4" in page.all_text

        url = f"http://127.0.0.1:{open_to_all.port}/?token={open_to_all.token}#spec=live"
        dom, shot = render(chromium, url, tmp_path, "dashboard-live")
        keep(shot, capsys)
        page = Page(dom)
        assert chips(page) == {"1": "running", "2": "failed", "3": "pending"}
        assert ("1", "running") in bars(page) and ("2", "max_turns") in bars(page)
        assert [e["data-task"] for e in page.find("li", class_="error")] == ["2"]
        assert "stopped at the max-turns limit" in page.all_text
        assert f"{live} · live" in page.all_text
        assert "1 running of 2" in page.all_text
        assert page.find("section", id="problem")[0]["style"] == "display: none;"
    finally:
        for dashboard in (loopback, open_to_all):
            if dashboard is not None:
                dashboard.shutdown()
        repo.release("go")
        if proc is not None:
            repo.finish(proc)
        repo.check_no_leftovers()
