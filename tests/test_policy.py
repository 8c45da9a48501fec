"""The retry policy: what happens after each kind of attempt outcome."""

from __future__ import annotations

import random
from datetime import datetime
from types import SimpleNamespace

import pytest

from qw.outcome import Outcome
from qw.policy import (BACKOFF_CAP_S, RESET_MARGIN_S, Decision, backoff_s, budget_exhausted,
                       budget_left, decide)

NOW = 1_755_600_000.0


def run_config(**overrides):
    values = dict(max_retries=2, retry_backoff=30.0, timeout=1800.0, idle_timeout=600.0,
                  timeout_multiplier=2.0, max_pause=6 * 3600.0, budget_usd=0.0)
    values.update(overrides)
    return SimpleNamespace(**values)


def after(kind, attempt=1, run=None, seed=0, timeout_s=1800.0, **fields):
    outcome = Outcome(kind, fields.pop("message", f"{kind} happened"), **fields)
    return decide(outcome, attempt, run or run_config(), now=NOW, rng=random.Random(seed),
                  timeout_s=timeout_s)


def test_ok_is_done_and_keeps_its_note():
    decision = after("ok")
    assert (decision.action, decision.not_before, decision.timeout_s) == ("done", NOW, 1800.0)
    assert after("ok", note="1 permission denial (Bash)").reason == "1 permission denial (Bash)"


def test_auth_stops_the_run_and_says_what_to_check():
    decision = after("auth", message="API error 401: Invalid API key · Please run /login")
    assert decision.action == "stop_run"
    assert decision.reason.startswith("API error 401: Invalid API key")
    assert "every task would fail" in decision.reason
    assert "ANTHROPIC_API_KEY" in decision.reason and "claude /login" in decision.reason


@pytest.mark.parametrize("kind", ["rate_limited", "overloaded", "server_error", "crashed",
                                  "hung"])
def test_transient_failures_retry_after_backoff_with_same_timeout(kind):
    decision = after(kind, attempt=1)
    assert decision.action == "retry" and decision.timeout_s == 1800.0
    assert 0.8 * 30 <= decision.not_before - NOW <= 1.2 * 30
    assert "attempt 2 of 3" in decision.reason


def test_backoff_doubles_per_attempt_within_jitter():
    run = run_config(max_retries=10)
    for attempt in range(1, 6):
        delays = [after("overloaded", attempt, run, seed).not_before - NOW for seed in range(40)]
        base = 30.0 * 2 ** (attempt - 1)
        assert all(0.8 * base <= d <= 1.2 * base for d in delays), attempt
        assert len(set(delays)) > 30  # jitter really spreads the retries


def test_backoff_is_capped_at_ten_minutes():
    delays = [backoff_s(12, 30.0, random.Random(seed)) for seed in range(100)]
    assert all(0.8 * BACKOFF_CAP_S <= d <= BACKOFF_CAP_S for d in delays)


def test_retry_after_is_a_floor():
    decision = after("rate_limited", attempt=1, retry_after_s=300.0)
    assert decision.not_before == NOW + 300.0
    # A short retry-after does not shorten the backoff.
    decision = after("rate_limited", attempt=2, retry_after_s=1.0)
    assert decision.action == "retry" and decision.not_before - NOW >= 0.8 * 60


def test_timeout_retries_now_with_a_longer_timeout():
    decision = after("timeout", attempt=1, timeout_s=600.0)
    assert (decision.action, decision.not_before, decision.timeout_s) == ("retry", NOW, 1200.0)
    assert "20m timeout" in decision.reason
    decision = after("timeout", attempt=2, run=run_config(timeout_multiplier=1.5),
                     timeout_s=1200.0)
    assert decision.timeout_s == 1800.0


def test_out_of_retries_fails_with_the_last_message():
    decision = after("server_error", attempt=3, message="API error 500: Internal server error")
    assert decision.action == "fail"
    assert decision.reason == "gave up after 3 attempts: API error 500: Internal server error"
    decision = after("timeout", attempt=1, run=run_config(max_retries=0), message="timed out")
    assert decision.reason == "gave up after 1 attempt: timed out"


@pytest.mark.parametrize("kind,words", [("max_turns", "max_turns"), ("budget", "budget"),
                                        ("denied", "allowed_tools")])
def test_deterministic_failures_fail_at_once(kind, words):
    decision = after(kind, attempt=1)
    assert decision.action == "fail"
    assert decision.reason.startswith(f"{kind} happened; retrying would")
    assert words in decision.reason


def test_usage_limit_pauses_until_the_reset_plus_a_margin():
    decision = after("usage_limit", reset_at=NOW + 2 * 3600)
    assert decision.action == "pause"
    assert decision.not_before == NOW + 2 * 3600 + RESET_MARGIN_S
    local = datetime.fromtimestamp(NOW + 2 * 3600).astimezone().isoformat(timespec="minutes")
    assert local in decision.reason


def test_usage_limit_beyond_max_pause_exits_paused_naming_the_local_reset_time():
    reset = NOW + 3 * 86400
    decision = after("usage_limit", reset_at=reset, message="You've hit your weekly limit")
    assert decision.action == "exit_paused"
    local = datetime.fromtimestamp(reset).astimezone().isoformat(timespec="minutes")
    assert local in decision.reason and "max_pause" in decision.reason


def test_usage_limit_already_reset_resumes_at_once():
    decision = after("usage_limit", reset_at=NOW - 3600)
    assert (decision.action, decision.not_before) == ("pause", NOW)


def test_usage_limit_with_unknown_reset_pauses_an_hour_or_max_pause():
    assert after("usage_limit").not_before == NOW + 3600
    decision = after("usage_limit", run=run_config(max_pause=600.0))
    assert (decision.action, decision.not_before) == ("pause", NOW + 600)
    assert after("usage_limit", run=run_config(max_pause=0.0)).action == "exit_paused"


def test_usage_limit_does_not_use_up_retries():
    decision = after("usage_limit", attempt=9, reset_at=NOW + 600)
    assert decision.action == "pause"


def test_unknown_kind_is_a_programming_error():
    with pytest.raises(ValueError):
        after("bored")


def test_decision_is_frozen():
    with pytest.raises(AttributeError):
        after("ok").action = "retry"  # type: ignore[misc]
    assert isinstance(after("ok"), Decision)


def test_budget_helpers():
    assert not budget_exhausted(100.0, 0)  # 0 means no budget
    assert not budget_exhausted(4.99, 5.0)
    assert budget_exhausted(5.0, 5.0) and budget_exhausted(5.2, 5.0)
    assert budget_left(1.0, 0) is None
    assert budget_left(1.5, 5.0) == 3.5
    assert budget_left(7.0, 5.0) == 0.0
