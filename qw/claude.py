"""What qw knows about the `claude` CLI: its command line, its environment, its output.

Pure. `build_command` and `build_env` say how a task attempt's child is started (the worker
starts it); `StreamState` follows the child's `--output-format stream-json` lines as they
arrive. The facts behind every choice here are in CLAUDE_CODE.md (verified against 2.1.197).

The claude settings object is duck-typed: anything with the attributes of the `[claude]`
config section (command, model, permission_mode, allowed_tools, disallowed_tools, max_turns,
append_system_prompt, extra_args, env).
"""

from __future__ import annotations

import json
from typing import Any, Dict, Iterable, List, Mapping, Optional, Union

from .agents import AgentDef, agents_json

# Appended to every child's system prompt. Children share one repository and one tasks.md.
QW_SYSTEM_RULE = (
    "You are running one task of a larger plan. qw (a task runner) runs several Claude Code "
    "sessions in parallel on this repository, one per task. Do only the task you are given. "
    "Do not edit the checkboxes in tasks.md: qw marks tasks itself. Do not start other "
    "claude sessions. Finish with a short summary of what you changed and why."
)

# Environment variables of a Claude Code session that would make the child believe it is
# nested inside another session.
_DROPPED_ENV = ("CLAUDECODE", "CLAUDE_CODE_ENTRYPOINT")

# The CLI retries API errors 10 times by default (~3 minutes on a bad key); qw retries
# whole attempts itself, so the child gives up early and qw classifies the failure.
DEFAULT_CHILD_MAX_RETRIES = "2"

SYNTHETIC_MODEL = "<synthetic>"  # the model of the assistant event an API error produces


def build_command(claude: Any, *, agent: Union[str, AgentDef, None] = None,
                  agents: Iterable[AgentDef] = (), resume_session: Optional[str] = None,
                  max_budget_usd: Optional[float] = None) -> List[str]:
    """The argv of one `claude -p` child. The prompt is not in it: it goes on stdin.

    `agent` (a name or a definition) makes the child run as that subagent; `agents` are
    passed as `--agents` JSON (the agent's own definition is added when it is an AgentDef).
    The configured `--model` stays: an agent's model reaches the CLI inside the JSON.
    """
    command = claude.command
    argv = [command] if isinstance(command, str) else list(command)
    argv += ["-p", "--output-format", "stream-json", "--verbose"]
    if claude.permission_mode:
        argv += ["--permission-mode", claude.permission_mode]
    if claude.model:
        argv += ["--model", claude.model]
    # Both flags are variadic in the CLI: one flag, then each tool as its own argument.
    if claude.allowed_tools:
        argv += ["--allowedTools", *claude.allowed_tools]
    if claude.disallowed_tools:
        argv += ["--disallowedTools", *claude.disallowed_tools]
    if claude.max_turns and claude.max_turns > 0:
        argv += ["--max-turns", str(int(claude.max_turns))]
    argv += ["--append-system-prompt", system_prompt_addition(claude.append_system_prompt)]
    definitions = list(agents)
    if isinstance(agent, AgentDef) and all(d.name != agent.name for d in definitions):
        definitions.append(agent)
    if definitions:
        argv += ["--agents", agents_json(definitions)]
    if agent is not None:
        argv += ["--agent", agent.name if isinstance(agent, AgentDef) else agent]
    if resume_session:
        argv += ["--resume", resume_session]
    if max_budget_usd is not None and max_budget_usd > 0:
        argv += ["--max-budget-usd", _money(max_budget_usd)]
    argv += [str(arg) for arg in (claude.extra_args or ())]
    return argv


def system_prompt_addition(user_text: Optional[str]) -> str:
    """qw's rule for children, followed by the user's `append_system_prompt` if any."""
    user_text = (user_text or "").strip()
    return QW_SYSTEM_RULE + ("\n\n" + user_text if user_text else "")


def build_env(base: Mapping[str, str], claude: Any, *, run_id: str, task_id: str,
              attempt: int) -> Dict[str, str]:
    """The child's environment: `base` (the user's) adjusted for a supervised child.

    Precedence, lowest first: `base` without the nesting markers; qw's quiet defaults;
    the `[claude] env` table; qw's marker variables (QW_RUN_ID, QW_TASK_ID, QW_ATTEMPT),
    which find stray descendants later and so cannot be overridden.
    """
    env = {k: v for k, v in base.items() if k not in _DROPPED_ENV}
    env["DISABLE_AUTOUPDATER"] = "1"
    env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] = "1"
    env.setdefault("CLAUDE_CODE_MAX_RETRIES", DEFAULT_CHILD_MAX_RETRIES)
    env.update({str(k): str(v) for k, v in (claude.env or {}).items()})
    env["QW_RUN_ID"] = str(run_id)
    env["QW_TASK_ID"] = str(task_id)
    env["QW_ATTEMPT"] = str(attempt)
    return env


def _money(usd: float) -> str:
    """Dollars for the command line: `0.5`, `2`, `0.0125` (no exponent, no float noise)."""
    text = f"{float(usd):.6f}".rstrip("0").rstrip(".")
    return text or "0"


class StreamState:
    """What the child's stream-json output has said so far. Feed it one line at a time.

    A line that is not a JSON object is counted in `bad_lines` and otherwise ignored: a
    half-written last line or stray output must not lose the rest of the attempt.
    """

    def __init__(self) -> None:
        self.events = 0                    # JSON objects read
        self.bad_lines = 0                 # lines that were not a JSON object
        self.last_type: Optional[str] = None  # "system/init", "assistant", "result", ...
        self.tool: Optional[str] = None    # the latest tool_use still waiting for its result
        self.tool_uses = 0                 # tool_use blocks seen
        self.session_id: Optional[str] = None
        self.model: Optional[str] = None
        self.version: Optional[str] = None  # claude_code_version from init
        self.input_tokens = 0              # input + cache creation + cache read
        self.output_tokens = 0
        self.cost_usd = 0.0                # total_cost_usd of the result (this attempt)
        self.api_retries = 0               # system/api_retry events
        self.last_api_error_status: Optional[int] = None
        self.last_api_error: Optional[str] = None  # the api_retry event's `error`
        self.assistant_error: Optional[str] = None  # `error` of a synthetic assistant event
        self.last_text = ""                # the latest assistant text block
        self.result: Optional[Dict[str, Any]] = None
        self.permission_denials: List[Any] = []
        self._pending_tools: Dict[str, str] = {}  # tool_use id -> name, in start order
        self._usage: Dict[str, tuple] = {}  # assistant message id -> (input, output)

    def feed(self, line: Union[bytes, str]) -> Optional[Dict[str, Any]]:
        """Take one output line; return its event, or None for a blank or bad line."""
        if isinstance(line, bytes):
            line = line.decode("utf-8", "replace")
        line = line.strip()
        if not line:
            return None
        try:
            event = json.loads(line)
        except ValueError:
            event = None
        if not isinstance(event, dict):
            self.bad_lines += 1
            return None
        self.events += 1
        kind = event.get("type")
        subtype = event.get("subtype")
        self.last_type = f"{kind}/{subtype}" if kind == "system" and subtype else str(kind)
        if isinstance(event.get("session_id"), str) and event["session_id"]:
            self.session_id = event["session_id"]
        if kind == "system":
            self._on_system(subtype, event)
        elif kind == "assistant":
            self._on_assistant(event)
        elif kind == "user":
            self._on_user(event)
        elif kind == "result":
            self._on_result(event)
        return event

    def progress(self) -> Dict[str, Any]:
        """A small JSON-able summary for status displays."""
        return {
            "events": self.events,
            "last_type": self.last_type,
            "tool": self.tool,
            "tool_uses": self.tool_uses,
            "model": self.model,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": self.cost_usd,
            "api_retries": self.api_retries,
            "last_api_error_status": self.last_api_error_status,
            "bad_lines": self.bad_lines,
            "last_text": one_line(self.last_text, 120),
        }

    def _on_system(self, subtype: Any, event: Dict[str, Any]) -> None:
        if subtype == "init":
            if isinstance(event.get("model"), str):
                self.model = event["model"]
            if isinstance(event.get("claude_code_version"), str):
                self.version = event["claude_code_version"]
        elif subtype == "api_retry":
            self.api_retries += 1
            status = event.get("error_status")
            self.last_api_error_status = status if isinstance(status, int) else None
            error = event.get("error")
            self.last_api_error = error if isinstance(error, str) else None

    def _on_assistant(self, event: Dict[str, Any]) -> None:
        message = event.get("message")
        if not isinstance(message, dict):
            return
        model = message.get("model")
        error = event.get("error", message.get("error"))
        if model == SYNTHETIC_MODEL:
            self.assistant_error = error if isinstance(error, str) else "unknown"
        elif isinstance(model, str) and model:
            self.model = model
        usage = message.get("usage")
        if isinstance(usage, dict):
            # The CLI emits one assistant event per content block of a message, each with
            # that message's usage so far: keep the latest per message id, do not add up.
            key = str(message.get("id") or f"event-{self.events}")
            old_in, old_out = self._usage.get(key, (0, 0))
            new_in, new_out = _input_tokens(usage), _int(usage.get("output_tokens"))
            self._usage[key] = (new_in, new_out)
            self.input_tokens += new_in - old_in
            self.output_tokens += new_out - old_out
        for block in _blocks(message):
            if block.get("type") == "tool_use":
                self.tool_uses += 1
                name = str(block.get("name") or "?")
                self._pending_tools[str(block.get("id") or f"event-{self.events}")] = name
                self.tool = name
            elif block.get("type") == "text" and isinstance(block.get("text"), str):
                self.last_text = block["text"]

    def _on_user(self, event: Dict[str, Any]) -> None:
        message = event.get("message")
        if not isinstance(message, dict):
            return
        for block in _blocks(message):
            if block.get("type") == "tool_result":
                self._pending_tools.pop(str(block.get("tool_use_id")), None)
        self.tool = next(reversed(list(self._pending_tools.values())), None)

    def _on_result(self, event: Dict[str, Any]) -> None:
        self.result = event
        self._pending_tools.clear()
        self.tool = None
        cost = event.get("total_cost_usd")
        if isinstance(cost, (int, float)) and not isinstance(cost, bool):
            self.cost_usd = float(cost)
        usage = event.get("usage")
        if isinstance(usage, dict):  # the CLI's own totals replace the running estimate
            self.input_tokens = _input_tokens(usage)
            self.output_tokens = _int(usage.get("output_tokens"))
        denials = event.get("permission_denials")
        self.permission_denials = list(denials) if isinstance(denials, list) else []


def _blocks(message: Dict[str, Any]) -> List[Dict[str, Any]]:
    content = message.get("content")
    if not isinstance(content, list):
        return []
    return [block for block in content if isinstance(block, dict)]


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _input_tokens(usage: Mapping[str, Any]) -> int:
    return (_int(usage.get("input_tokens")) + _int(usage.get("cache_creation_input_tokens"))
            + _int(usage.get("cache_read_input_tokens")))


def one_line(text: str, limit: int = 300) -> str:
    """`text` on one line (whitespace runs become one space), cut to `limit` characters."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit - 1] + "…"
