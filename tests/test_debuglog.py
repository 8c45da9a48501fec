"""qw.debuglog: JSON lines with the run, task and attempt on each; never raises."""

from __future__ import annotations

import json
import os
import pickle

import pytest

from qw.config import load_config
from qw.debuglog import DebugLog, NullLog, debug_log_path, enabled, open_log


def lines(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_every_line_carries_the_ids_and_the_extra_fields(tmp_path):
    path = debug_log_path(str(tmp_path / ".qw"), "r1")
    with DebugLog(path, run_id="r1", clock=lambda: 1763709480.5) as log:
        log.debug("attempt started", task_id="2.1", attempt=1, worker=3)
        log.info("run paused", until=None)
        log.warning("odd", task_id="3", attempt=2, ts="not mine", argv=("claude", "-p"))
    first, second, third = lines(path)
    assert first == {"ts": 1763709480.5, "level": "debug", "run_id": "r1", "task_id": "2.1",
                     "attempt": 1, "msg": "attempt started", "worker": 3}
    assert list(first)[:6] == ["ts", "level", "run_id", "task_id", "attempt", "msg"]
    assert (second["task_id"], second["attempt"], second["until"]) == (None, None, None)
    assert third["ts"] == 1763709480.5 and third["argv"] == ["claude", "-p"]


def test_values_json_cannot_hold_are_written_as_their_repr(tmp_path):
    path = str(tmp_path / "debug.jsonl")
    log = DebugLog(path, run_id="r1")
    log.debug("odd value", thing={1, 2}.__class__, text="ünï\ncode")
    log.close()
    [line] = lines(path)
    assert line["thing"] == "<class 'set'>" and line["text"] == "ünï\ncode"


def test_an_exception_is_logged_with_its_traceback(tmp_path):
    path = str(tmp_path / "debug.jsonl")
    log = DebugLog(path, run_id="r1")
    try:
        raise RuntimeError("worker 3 died")
    except RuntimeError as exc:
        log.exception("settling failed", exc, task_id="4", attempt=2)
    log.close()
    [line] = lines(path)
    assert line["level"] == "error" and line["error"] == "RuntimeError"
    assert "worker 3 died" in line["traceback"] and "Traceback" in line["traceback"]
    assert (line["task_id"], line["attempt"]) == ("4", 2)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_is_counted_not_raised():
    log = DebugLog("/dev/full", run_id="r1")
    for _ in range(3):
        log.debug("lost", task_id="1", attempt=1)
    assert log.write_errors == 3
    log.close()


def test_an_unwritable_place_is_counted_not_raised(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    log = DebugLog(str(blocker / "debug.jsonl"), run_id="r1")   # a file where a dir should be
    log.error("lost")
    log.error("lost too")
    assert log.write_errors == 2


def test_a_copy_sent_to_another_process_reopens_the_file(tmp_path):
    path = str(tmp_path / "debug.jsonl")
    log = DebugLog(path, run_id="r1")
    log.debug("in the runner")
    copy = pickle.loads(pickle.dumps(log))
    copy.debug("in a worker", task_id="2", attempt=1)
    copy.close()
    log.close()
    assert [(line["msg"], line["run_id"]) for line in lines(path)] == [
        ("in the runner", "r1"), ("in a worker", "r1")]


def test_enabled_by_the_logging_level_and_qw_debug(tmp_path):
    repo = str(tmp_path)
    assert not enabled(load_config(repo, env={}))
    assert enabled(load_config(repo, env={"QW_DEBUG": "1"}))
    (tmp_path / "qw.toml").write_text('[logging]\nlevel = "debug"\n')
    config = load_config(repo, env={})
    assert enabled(config)
    assert isinstance(open_log(load_config(repo, env={"QW_LOGGING_LEVEL": "info"}),
                               repo, "r1"), NullLog)
    log = open_log(config, os.path.join(repo, ".qw"), "r9")
    log.debug("hello")
    log.close()
    assert lines(debug_log_path(os.path.join(repo, ".qw"), "r9"))[0]["run_id"] == "r9"


def test_the_null_log_writes_nothing(tmp_path):
    log = NullLog()
    log.debug("nothing", task_id="1")
    log.close()
    assert log.write_errors == 0
