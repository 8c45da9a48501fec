"""How a task attempt ended: one `Outcome` per attempt, from what the child said and did.

Pure: takes the `StreamState` of the attempt, the exit code, whether qw stopped the child,
and `now`. The rules follow CLAUDE_CODE.md:

- Success is a `result` event with `is_error: false` and `num_turns > 0`. Exit 0 alone is
  not success, and `num_turns: 0` means a hook blocked the prompt.
- API failures arrive as `subtype: "success"` with `is_error: true`, the HTTP status in
  `api_error_status` and the text in `result`; `error_*` subtypes carry `errors: [...]`.
- A result wins over `stopped`: if the child wrote its result and then had to be killed
  (a background job kept it alive), the work is judged by the result.
- Permission denials: a failed result with denials is `denied`; so is a successful one whose
  text says the work could not be done. A successful result that reads as finished stays
  `ok`, with the denials in `note` (the model often works around a refused tool).
- A usage-limit text is recognised anywhere in a failed result, but only at the very start
  of a successful one, so that a task about usage limits can still succeed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from typing import Any, Optional

from .claude import one_line

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# Not produced by classify(): the kind of an attempt qw itself cancelled (Ctrl-C, a run
# that is stopping). It is not the task's fault, so no retry policy judges it.
INTERRUPTED = "interrupted"
# Not produced by classify() either: the worker's verdict on an attempt whose claude session
# succeeded but whose verify command ([run] verify, a task's _Verify:) failed (it exited
# non-zero or ran past [run] verify_timeout), or could not be started at all.
VERIFY_FAILED = "verify_failed"
VERIFY_ERROR = "verify_error"

KINDS = ("ok", "auth", "rate_limited", "overloaded", "server_error", "usage_limit", "timeout",
         "hung", "max_turns", "budget", "crashed", "denied")

# A reset clock time this far in the past still means "today": the message was written a
# moment before qw read it, and the CLI rounds the time it shows.
RESET_GRACE_S = 300.0

_LIMIT_FORMS = (r"usage limit reached"                 # Claude AI usage limit reached|<epoch>
                r"|\d+-hour limit reached"             # 5-hour limit reached ∙ resets 9pm
                r"|(?:session|weekly|daily|opus|sonnet|usage) limit reached"
                r"|you(?:'|’)?ve hit your (?:\w+ )*?limit")  # You've hit your {session ...} limit
_USAGE_LIMIT = re.compile(_LIMIT_FORMS, re.I)
_USAGE_LIMIT_AT_START = re.compile(r"\s*(?:claude ai )?(?:" + _LIMIT_FORMS + ")", re.I)
_EPOCH = re.compile(r"\|\s*(\d{10,13})\b")
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_RESET_CLOCK = re.compile(
    r"\breset(?:s)?\s+(?:at\s+|on\s+)?"
    r"(?:(?P<month>" + "|".join(_MONTHS) + r")[a-z]*\.?\s+(?P<day>\d{1,2})(?:st|nd|rd|th)?,?"
    r"\s+(?:at\s+)?)?"
    r"(?P<hour>\d{1,2})(?::(?P<minute>\d{2}))?\s*(?:(?P<ampm>[ap])\.?m\b\.?)?"
    r"(?:\s*\((?P<zone>[^)]*)\))?", re.I)

_AUTH = re.compile(r"not logged in|invalid api key|invalid x-api-key|\bauthenticat|/login\b"
                   r"|oauth token|credit balance is too low", re.I)
_NETWORK = re.compile(r"connection error|connection refused|econnreset|econnrefused|etimedout"
                      r"|socket hang up|fetch failed|request timed out|network error", re.I)
_STATUS_IN_TEXT = re.compile(r"api error\D{0,40}?\b([45]\d\d)\b", re.I)
_RETRY_AFTER = re.compile(r"(?:retry[- ]after|try again in|retry in)\D{0,4}(\d+(?:\.\d+)?)\s*"
                          r"(ms|milliseconds?|s|secs?|seconds?|m|mins?|minutes?)?\b", re.I)
_GAVE_UP = re.compile(r"\b(?:could ?n[o'’]t|can ?n[o'’]t|cannot|unable to|(?:was|were) ?n[o'’]t "
                      r"able|not able to|need(?:s|ed)? (?:your )?(?:permission|approval)"
                      r"|please (?:grant|approve|allow)|permission (?:was |were )?denied"
                      r"|(?:was|were) denied|blocked)", re.I)
# What the CLI says when `--resume` names a session it cannot find (stderr, and in newer
# versions an error_during_execution result; `... session ID or name: ...` in some).
_NO_SESSION = re.compile(r"no conversation found with session id", re.I)
_SIGNALS = {1: "SIGHUP", 2: "SIGINT", 6: "SIGABRT", 9: "SIGKILL", 11: "SIGSEGV", 15: "SIGTERM"}


@dataclass(frozen=True)
class Outcome:
    """How one attempt ended. `kind` is one of KINDS; `message` is one line for humans."""

    kind: str
    message: str
    retry_after_s: Optional[float] = None  # the API asked to wait this long (rate_limited)
    reset_at: Optional[float] = None       # epoch when a usage limit resets, if known
    cost_usd: float = 0.0
    num_turns: int = 0
    session_id: Optional[str] = None
    api_error_status: Optional[int] = None
    note: str = ""                         # e.g. permission denials of an ok attempt


def classify(state: Any, exit_code: Optional[int], *, stopped: Optional[str] = None,
             stderr_tail: str = "", now: float) -> Outcome:
    """The Outcome of an attempt. `state` is its StreamState (or None if nothing was read).

    `stopped` is "timeout" (wall clock) or "hung" (idle) when qw killed the child.
    `exit_code` may be negative (killed by that signal) or None (unknown).
    """
    if stopped not in (None, "timeout", "hung"):
        raise ValueError(f"stopped must be None, 'timeout' or 'hung', not {stopped!r}")
    result = getattr(state, "result", None)
    if isinstance(result, dict):
        return _from_result(result, state, now)
    common = dict(cost_usd=float(getattr(state, "cost_usd", 0.0) or 0.0),
                  session_id=getattr(state, "session_id", None),
                  api_error_status=getattr(state, "last_api_error_status", None))
    context = _context(state)
    if stopped == "timeout":
        return Outcome("timeout", "timed out (wall-clock limit)" + context, **common)
    if stopped == "hung":
        last = getattr(state, "last_type", None)
        return Outcome("hung", "hung: no output for the idle timeout"
                       + (f" (last event: {last})" if last else "") + context, **common)
    stderr_line = _last_line(stderr_tail)
    # Some failures never reach the stream (old CLIs, login problems): read stderr too.
    if _USAGE_LIMIT.search(stderr_line):
        return Outcome("usage_limit", one_line(stderr_line),
                       reset_at=parse_reset_time(stderr_line, now), **common)
    if _AUTH.search(stderr_line):
        return Outcome("auth", one_line(stderr_line), **common)
    message = _exit_text(exit_code) + " without a result" + context
    if stderr_line:
        message += ": " + stderr_line
    return Outcome("crashed", one_line(message), **common)


def session_not_found(outcome: Outcome) -> bool:
    """Whether the attempt failed because the session it was to `--resume` could not be
    found (deleted, another machine, another folder): resuming it again cannot work."""
    return outcome.kind == "crashed" and bool(_NO_SESSION.search(outcome.message))


def _from_result(result: dict, state: Any, now: float) -> Outcome:
    subtype = str(result.get("subtype") or "")
    is_error = bool(result.get("is_error")) or subtype.startswith("error")
    text = result.get("result") if isinstance(result.get("result"), str) else ""
    if not text and isinstance(result.get("errors"), list):
        text = "; ".join(str(e) for e in result["errors"])
    status = result.get("api_error_status")
    if not isinstance(status, int) or isinstance(status, bool):
        found = _STATUS_IN_TEXT.search(text) if is_error else None
        status = int(found.group(1)) if found else None
    turns = result.get("num_turns")
    turns = turns if isinstance(turns, int) and not isinstance(turns, bool) else 0
    cost = result.get("total_cost_usd")
    cost = float(cost) if isinstance(cost, (int, float)) and not isinstance(cost, bool) else 0.0
    denials = result.get("permission_denials")
    denials = denials if isinstance(denials, list) else []
    common = dict(cost_usd=cost, num_turns=turns, api_error_status=status,
                  session_id=result.get("session_id") or getattr(state, "session_id", None))

    if subtype == "error_max_turns":
        return Outcome("max_turns", f"stopped at the max-turns limit after {turns} turns",
                       **common)
    if subtype == "error_max_budget_usd":
        return Outcome("budget", f"stopped at the --max-budget-usd limit after spending "
                                 f"${cost:.2f}", **common)
    limit = _USAGE_LIMIT.search(text) if is_error else _USAGE_LIMIT_AT_START.match(text)
    if limit:
        return Outcome("usage_limit", one_line(text), reset_at=parse_reset_time(text, now),
                       **common)
    if is_error:
        kind = _api_error_kind(status, text, getattr(state, "assistant_error", None))
        if kind:
            retry_after = _retry_after(text) if kind == "rate_limited" else None
            return Outcome(kind, _api_message(status, text), retry_after_s=retry_after,
                           **common)
        if denials:
            return Outcome("denied", _denials_text(denials) + " and the attempt failed: "
                           + one_line(text or subtype, 200), **common)
        return Outcome("crashed", one_line(f"claude reported an error ({subtype or 'no subtype'})"
                                           + (": " + text if text else "")), **common)
    if turns <= 0:
        return Outcome("crashed", "claude did no work (0 turns): a hook probably blocked the "
                                  "prompt", **common)
    if denials and _GAVE_UP.search(text):
        return Outcome("denied", _denials_text(denials) + " and the work was not done: "
                       + one_line(text, 200), **common)
    note = _denials_text(denials) + "; the result says the work was done" if denials else ""
    return Outcome("ok", one_line(text) or f"done in {turns} turns", note=note, **common)


def _api_error_kind(status: Optional[int], text: str,
                    assistant_error: Optional[str]) -> Optional[str]:
    """The kind of an API failure, or None if `status`/`text` do not look like one."""
    # A bad key, a lapsed login or an empty credit balance fail every task alike.
    if status in (401, 403) or _AUTH.search(text) \
            or assistant_error in ("authentication_failed", "billing_error"):
        return "auth"
    if status == 429 or assistant_error == "rate_limit" or re.search(r"rate.?limit", text, re.I):
        return "rate_limited"
    if status == 529 or assistant_error == "overloaded" or re.search("overloaded", text, re.I):
        return "overloaded"
    if (status is not None and 500 <= status <= 599) or assistant_error == "server_error" \
            or _NETWORK.search(text):
        return "server_error"
    return None


def _api_message(status: Optional[int], text: str) -> str:
    """`API error 401: Invalid API key · Please run /login` from the result text."""
    detail = re.sub(r"^\s*api error\s*(?:\(\d{3}\))?\s*:?\s*", "", text, flags=re.I)
    if status is not None and detail.startswith(str(status)):
        detail = detail[len(str(status)):].strip()
    brace = detail.find("{")
    if brace >= 0:  # older CLIs print the API's JSON error body: keep its message
        try:
            body = json.loads(detail[brace:])
            error = body.get("error") if isinstance(body, dict) else None
            if isinstance(error, dict) and isinstance(error.get("message"), str):
                detail = (detail[:brace].strip() + " " + error["message"]).strip()
        except ValueError:
            pass
    detail = one_line(detail) or "no message"
    return f"API error {status}: {detail}" if status is not None else detail


def _retry_after(text: str) -> Optional[float]:
    found = _RETRY_AFTER.search(text)
    if not found:
        return None
    value, unit = float(found.group(1)), (found.group(2) or "s").lower()
    if unit.startswith("ms") or unit.startswith("milli"):
        return value / 1000.0
    return value * 60.0 if unit.startswith("m") else value


def _denials_text(denials: list) -> str:
    names = []
    for denial in denials:
        name = denial.get("tool_name") if isinstance(denial, dict) else None
        if isinstance(name, str) and name not in names:
            names.append(name)
    count = len(denials)
    return (f"{count} permission denial{'s' if count != 1 else ''}"
            + (f" ({', '.join(names)})" if names else ""))


def _context(state: Any) -> str:
    """What the child was doing, for the message of an attempt without a result."""
    parts = []
    tool = getattr(state, "tool", None)
    if tool:
        parts.append(f"while running tool {tool}")
    retries = getattr(state, "api_retries", 0) or 0
    if retries:
        status = getattr(state, "last_api_error_status", None)
        parts.append(f"after {retries} API retr{'ies' if retries != 1 else 'y'}"
                     + (f" (last HTTP {status})" if status else ""))
    return (" " + ", ".join(parts)) if parts else ""


def _exit_text(exit_code: Optional[int]) -> str:
    if exit_code is None:
        return "claude ended"
    if exit_code < 0:
        signal_name = _SIGNALS.get(-exit_code, f"signal {-exit_code}")
        return f"claude was killed by {signal_name}"
    if exit_code > 128 and exit_code - 128 in _SIGNALS:
        return f"claude exited with code {exit_code} ({_SIGNALS[exit_code - 128]})"
    return f"claude exited with code {exit_code}"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def parse_reset_time(text: str, now: float, local_tz: Optional[tzinfo] = None
                     ) -> Optional[float]:
    """The epoch when the usage limit in `text` resets, or None if it names no time.

    Understands `...|1755615600` (epoch seconds or ms), and a clock time after "resets" /
    "reset at": `9pm`, `12:50am`, `21:00`, `Jan 30, 11:30am`, `May 5 at 9pm`, each with an
    optional `(Area/City)` zone. A clock time is its next occurrence after `now` (a time
    up to RESET_GRACE_S ago counts as now) in that zone; an unknown or missing zone means
    `local_tz`, or the machine's local time when `local_tz` is None.
    """
    epoch = _EPOCH.search(text)
    if epoch:
        value = float(epoch.group(1))
        return value / 1000.0 if value >= 1e12 else value
    for found in _RESET_CLOCK.finditer(text):
        hour, minute = int(found.group("hour")), int(found.group("minute") or 0)
        ampm = (found.group("ampm") or "").lower()
        if not ampm and found.group("minute") is None:
            continue  # a bare number ("resets 5") is not a clock time
        if ampm:
            if not 1 <= hour <= 12:
                continue
            hour = hour % 12 + (12 if ampm == "p" else 0)
        if hour > 23 or minute > 59:
            continue
        zone = _zone(found.group("zone")) or local_tz
        today = datetime.fromtimestamp(now, zone).date()
        if found.group("month"):
            month = _MONTHS.index(found.group("month")[:3].lower()) + 1
            day = int(found.group("day"))
            for year in (today.year, today.year + 1):
                at = _timestamp(year, month, day, hour, minute, zone)
                if at is not None and at >= now - RESET_GRACE_S:
                    return at
            return None
        for day_ahead in (0, 1):
            when = today + timedelta(days=day_ahead)
            at = _timestamp(when.year, when.month, when.day, hour, minute, zone)
            if at is not None and at >= now - RESET_GRACE_S:
                return at
    return None


def _zone(name: Optional[str]) -> Optional[tzinfo]:
    """The zone called `name` (`Europe/Lisbon`), or None if absent or unknown here."""
    name = (name or "").strip()
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None  # e.g. Windows without tzdata: fall back to local time


def _timestamp(year: int, month: int, day: int, hour: int, minute: int,
               zone: Optional[tzinfo]) -> Optional[float]:
    """Epoch of a wall-clock time in `zone` (None: local time), None for a non-date."""
    try:
        return datetime(year, month, day, hour, minute, tzinfo=zone).timestamp()
    except ValueError:
        return None
