"""Classifying an attempt from its stream, exit code and stderr; parsing usage-limit resets."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from zoneinfo import ZoneInfo

from qw.claude import StreamState
from qw.outcome import KINDS, Outcome, classify, parse_reset_time

STREAMS = Path(__file__).parent / "fixtures" / "streams"
UTC = timezone.utc
LISBON = ZoneInfo("Europe/Lisbon")
LOS_ANGELES = ZoneInfo("America/Los_Angeles")
NOW = datetime(2025, 8, 19, 12, 0, tzinfo=UTC).timestamp()


def replay(name: str) -> StreamState:
    state = StreamState()
    with open(STREAMS / name, "rb") as f:
        for line in f:
            state.feed(line)
    return state


def with_result(**fields) -> StreamState:
    """A stream of init + one result event with `fields` over a plain success."""
    result = {"type": "result", "subtype": "success", "is_error": False,
              "api_error_status": None, "num_turns": 3, "result": "Done: added x.py",
              "session_id": "s-1", "total_cost_usd": 0.02, "permission_denials": []}
    result.update(fields)
    state = StreamState()
    state.feed('{"type":"system","subtype":"init","session_id":"s-1","model":"m"}')
    state.feed(json.dumps(result))
    return state


def at(year, month, day, hour, minute, zone):
    return datetime(year, month, day, hour, minute, tzinfo=zone).timestamp()


# --- the fixtures, one kind each -------------------------------------------------------

def test_success():
    outcome = classify(replay("success_write.jsonl"), 0, now=NOW)
    assert outcome.kind == "ok"
    assert outcome.message.startswith('Created hello.txt containing "hello". Summary')
    assert outcome.num_turns == 2 and outcome.cost_usd == pytest.approx(0.00035)
    assert outcome.session_id == "5f0c3a52-8d8e-4b7e-9c55-2b0b4b0e7a11"
    assert outcome.note == ""


def test_bad_key_is_auth_with_the_api_message():
    outcome = classify(replay("auth_401.jsonl"), 1, now=NOW)
    assert outcome.kind == "auth"
    assert outcome.message == "API error 401: Invalid API key · Please run /login"
    assert outcome.api_error_status == 401


def test_overloaded_keeps_the_message_of_the_json_body():
    outcome = classify(replay("overloaded_529.jsonl"), 1, now=NOW)
    assert (outcome.kind, outcome.message) == ("overloaded", "API error 529: Overloaded")


def test_rate_limited_reads_retry_after():
    outcome = classify(replay("rate_limited_429.jsonl"), 1, now=NOW)
    assert outcome.kind == "rate_limited"
    assert outcome.message.startswith("API error 429: Request rejected (429)")
    assert outcome.retry_after_s == 30.0


def test_server_error():
    outcome = classify(replay("server_error_500.jsonl"), 1, now=NOW)
    assert outcome.kind == "server_error" and outcome.api_error_status == 500


def test_max_turns_and_budget_subtypes():
    outcome = classify(replay("max_turns.jsonl"), 1, now=NOW)
    assert outcome.kind == "max_turns" and "2 turns" in outcome.message
    outcome = classify(replay("budget.jsonl"), 1, now=NOW)
    assert outcome.kind == "budget" and "$0.07" in outcome.message
    assert outcome.cost_usd == pytest.approx(0.0712)


def test_zero_turns_is_a_blocked_prompt_not_success_even_with_exit_0():
    outcome = classify(replay("hook_blocked.jsonl"), 0, now=NOW)
    assert outcome.kind == "crashed" and "hook" in outcome.message


def test_usage_limit_with_zone():
    now = at(2025, 8, 19, 23, 30, LOS_ANGELES)
    outcome = classify(replay("usage_limit.jsonl"), 1, now=now)
    assert outcome.kind == "usage_limit"
    assert outcome.message == ("You've hit your session limit · resets 12:50am "
                               "(America/Los_Angeles)")
    assert outcome.reset_at == at(2025, 8, 20, 0, 50, LOS_ANGELES)


def test_denials_that_left_the_work_undone():
    outcome = classify(replay("denied.jsonl"), 0, now=NOW)
    assert outcome.kind == "denied"
    assert outcome.message.startswith("1 permission denial (Bash) and the work was not done")


def test_no_result_after_sigterm_names_exit_tool_and_stderr():
    stderr = "warming up\nError: terminated by signal\n"
    outcome = classify(replay("terminated.jsonl"), 143, stderr_tail=stderr, now=NOW)
    assert outcome.kind == "crashed"
    assert outcome.message == ("claude exited with code 143 (SIGTERM) without a result while "
                               "running tool Bash: Error: terminated by signal")
    assert outcome.session_id == "5f0c3a52-8d8e-4b7e-9c55-2b0b4b0e7a11"


# --- tricky cases ----------------------------------------------------------------------

def test_exit_0_without_a_result_is_not_success():
    outcome = classify(replay("terminated.jsonl"), 0, now=NOW)
    assert outcome.kind == "crashed" and "code 0 without a result" in outcome.message


def test_exit_0_with_is_error_is_not_success():
    state = with_result(is_error=True, api_error_status=401, result="Invalid API key")
    assert classify(state, 0, now=NOW).kind == "auth"


def test_nothing_read_at_all():
    outcome = classify(None, None, now=NOW)
    assert (outcome.kind, outcome.message) == ("crashed", "claude ended without a result")
    outcome = classify(None, -9, stderr_tail="", now=NOW)
    assert outcome.message == "claude was killed by SIGKILL without a result"


def test_bad_json_lines_do_not_hide_the_result():
    state = StreamState()
    state.feed(b"not json at all\n")
    for line in (STREAMS / "success_write.jsonl").read_bytes().splitlines():
        state.feed(line)
    state.feed(b"{truncated")
    assert state.bad_lines == 2
    assert classify(state, 0, now=NOW).kind == "ok"


def test_stopped_by_qw():
    state = replay("terminated.jsonl")
    outcome = classify(state, -15, stopped="timeout", now=NOW)
    assert outcome.kind == "timeout"
    assert outcome.message == "timed out (wall-clock limit) while running tool Bash"
    outcome = classify(state, -9, stopped="hung", now=NOW)
    assert outcome.kind == "hung"
    assert outcome.message == ("hung: no output for the idle timeout (last event: assistant) "
                               "while running tool Bash")


def test_hung_during_api_retries_says_so():
    state = StreamState()
    for line in (STREAMS / "overloaded_529.jsonl").read_bytes().splitlines()[:3]:
        state.feed(line)
    outcome = classify(state, -15, stopped="hung", now=NOW)
    assert "after 2 API retries (last HTTP 529)" in outcome.message
    assert outcome.api_error_status == 529


def test_a_result_written_before_qw_had_to_kill_the_child_wins():
    outcome = classify(replay("success_write.jsonl"), -9, stopped="timeout", now=NOW)
    assert outcome.kind == "ok"


def test_stopped_must_be_a_known_reason():
    with pytest.raises(ValueError):
        classify(None, 1, stopped="tired", now=NOW)


@pytest.mark.parametrize("text", ["Not logged in · Please run /login",
                                  "OAuth token has expired. Please run /login",
                                  "Credit balance is too low"])
def test_auth_texts_without_a_status(text):
    state = with_result(is_error=True, result=text, num_turns=0)
    assert classify(state, 1, now=NOW).kind == "auth"


def test_auth_and_usage_limit_on_stderr_without_a_stream():
    assert classify(None, 1, stderr_tail="Invalid API key · Please run /login",
                    now=NOW).kind == "auth"
    outcome = classify(None, 1, stderr_tail="Claude AI usage limit reached|1755615600",
                       now=NOW)
    assert (outcome.kind, outcome.reset_at) == ("usage_limit", 1755615600.0)


def test_status_read_from_text_when_the_field_is_missing():
    state = with_result(is_error=True, result="API Error: 503 upstream connect error")
    outcome = classify(state, 1, now=NOW)
    assert (outcome.kind, outcome.api_error_status) == ("server_error", 503)


def test_network_failure_is_a_server_error():
    state = with_result(is_error=True, result="API Error: Connection error.")
    assert classify(state, 1, now=NOW).kind == "server_error"


def test_synthetic_assistant_error_decides_when_text_is_vague():
    state = StreamState()
    state.feed('{"type":"assistant","message":{"id":"x","model":"<synthetic>","content":'
               '[{"type":"text","text":"API Error"}]},"error":"rate_limit"}')
    state.feed('{"type":"result","subtype":"success","is_error":true,"num_turns":1,'
               '"result":"API Error"}')
    assert classify(state, 1, now=NOW).kind == "rate_limited"


def test_error_during_execution_is_a_crash_with_its_errors():
    state = with_result(subtype="error_during_execution", is_error=True, result=None,
                        errors=["Tool execution aborted"])
    outcome = classify(state, 1, now=NOW)
    assert outcome.kind == "crashed"
    assert outcome.message == ("claude reported an error (error_during_execution): "
                               "Tool execution aborted")


def test_failed_result_with_denials_is_denied():
    state = with_result(subtype="error_during_execution", is_error=True, result=None,
                        errors=["stopped"], permission_denials=[{"tool_name": "Write"}])
    assert classify(state, 1, now=NOW).kind == "denied"


def test_finished_work_with_a_denial_is_ok_with_a_note():
    state = with_result(result="Added x.py and its test; used Read instead of cat.",
                        permission_denials=[{"tool_name": "Bash"}, {"tool_name": "Bash"}])
    outcome = classify(state, 0, now=NOW)
    assert outcome.kind == "ok"
    assert outcome.note == "2 permission denials (Bash); the result says the work was done"


def test_usage_limit_in_a_successful_result_only_at_its_start():
    state = with_result(result="You've hit your limit · resets 1pm (Europe/Lisbon)")
    assert classify(state, 1, now=NOW).kind == "usage_limit"
    state = with_result(result="Implemented the banner shown when the usage limit reached "
                               "zero; 5-hour limit reached messages now link to the docs.")
    assert classify(state, 0, now=NOW).kind == "ok"


def test_outcome_kinds_and_frozen():
    assert set(KINDS) == {"ok", "auth", "rate_limited", "overloaded", "server_error",
                          "usage_limit", "timeout", "hung", "max_turns", "budget", "crashed",
                          "denied"}
    outcome = classify(None, 1, now=NOW)
    with pytest.raises(AttributeError):
        outcome.kind = "ok"  # type: ignore[misc]
    assert isinstance(outcome, Outcome)


# --- parse_reset_time ------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("Claude AI usage limit reached|1755615600", 1755615600.0),
    ("Claude AI usage limit reached|1755615600000", 1755615600.0),
])
def test_epoch_forms(text, expected):
    assert parse_reset_time(text, NOW) == expected


def test_clock_time_without_zone_uses_local_tz_today_or_tomorrow():
    plus_one = timezone(timedelta(hours=1))
    text = "5-hour limit reached ∙ resets 9pm"
    assert parse_reset_time(text, at(2025, 8, 19, 15, 0, plus_one), plus_one) \
        == at(2025, 8, 19, 21, 0, plus_one)
    assert parse_reset_time(text, at(2025, 8, 19, 22, 0, plus_one), plus_one) \
        == at(2025, 8, 20, 21, 0, plus_one)


def test_a_reset_just_passed_is_not_pushed_to_tomorrow():
    text = "5-hour limit reached ∙ resets 9pm"
    now = at(2025, 8, 19, 21, 2, UTC)
    assert parse_reset_time(text, now, UTC) == at(2025, 8, 19, 21, 0, UTC)


def test_named_zone_wins_over_local():
    text = "You've hit your limit · resets 1pm (Europe/Lisbon)"
    now = at(2025, 8, 19, 9, 0, UTC)  # 10:00 in Lisbon (summer time)
    tokyo = ZoneInfo("Asia/Tokyo")
    assert parse_reset_time(text, now, tokyo) == at(2025, 8, 19, 13, 0, LISBON)
    assert parse_reset_time(text, now, tokyo) == at(2025, 8, 19, 12, 0, UTC)


def test_past_midnight_in_the_named_zone():
    text = "You've hit your session limit · resets 12:50am (America/Los_Angeles)"
    now = at(2025, 8, 19, 23, 30, LOS_ANGELES)  # already Aug 20 in UTC
    assert parse_reset_time(text, now, UTC) == at(2025, 8, 20, 0, 50, LOS_ANGELES)


def test_offset_of_the_reset_day_not_of_today():
    # Lisbon moves to summer time on 2025-03-30 at 01:00 UTC: 2:30am that day is WEST.
    text = "You've hit your limit · resets 2:30am (Europe/Lisbon)"
    now = at(2025, 3, 29, 23, 30, LISBON)
    assert parse_reset_time(text, now) == at(2025, 3, 30, 1, 30, UTC)


@pytest.mark.parametrize("clock,hour,minute", [("12am", 0, 0), ("12pm", 12, 0),
                                               ("12:50am", 0, 50), ("11:05 PM", 23, 5),
                                               ("21:00", 21, 0), ("9 p.m.", 21, 0)])
def test_clock_forms(clock, hour, minute):
    now = at(2025, 8, 19, 0, 0, UTC) - 600  # ten minutes before midnight: all are tomorrow
    got = parse_reset_time(f"You've hit your limit · resets {clock}", now, UTC)
    assert got == at(2025, 8, 19, hour, minute, UTC)


def test_dates_for_weekly_limits():
    text = "You've hit your limit · resets Jan 30, 11:30am (Asia/Calcutta)"
    assert parse_reset_time(text, at(2025, 12, 20, 0, 0, UTC)) \
        == at(2026, 1, 30, 11, 30, ZoneInfo("Asia/Kolkata"))
    assert parse_reset_time(text, at(2026, 2, 2, 0, 0, UTC)) \
        == at(2027, 1, 30, 11, 30, ZoneInfo("Asia/Kolkata"))
    text = "You've hit your weekly limit · resets May 5 at 9pm (America/New_York)"
    assert parse_reset_time(text, at(2026, 5, 3, 12, 0, UTC)) \
        == at(2026, 5, 5, 21, 0, ZoneInfo("America/New_York"))


def test_unknown_zone_falls_back_to_local_tz():
    text = "You've hit your limit · resets 1pm (Mars/Olympus_Mons)"
    assert parse_reset_time(text, at(2025, 8, 19, 9, 0, UTC), UTC) == at(2025, 8, 19, 13, 0, UTC)


def test_machine_local_time_when_no_zone_at_all():
    now = NOW
    got = parse_reset_time("5-hour limit reached ∙ resets 9pm", now)
    local = datetime.fromtimestamp(got)
    assert (local.hour, local.minute) == (21, 0)
    assert now - 300 <= got <= now + 86400 + 3600


def test_claude_ai_form():
    text = "You’ve hit your limit for Claude messages. Limits will reset at 9:30 AM."
    assert parse_reset_time(text, at(2025, 8, 19, 8, 0, UTC), UTC) == at(2025, 8, 19, 9, 30, UTC)


@pytest.mark.parametrize("text", ["You've hit your weekly limit",
                                  "You've hit your limit · resets 5",
                                  "You've hit your limit · resets 25:00",
                                  "You've hit your limit · resets Feb 30, 1pm"])
def test_no_readable_time(text):
    assert parse_reset_time(text, NOW, UTC) is None
