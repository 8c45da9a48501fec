"""Claude Code subagents: `.claude/agents/<name>.md` files, and the `--agents` JSON.

An agent file is YAML front matter between two `---` lines, then the agent's system prompt:

    ---
    name: reviewer
    description: Reviews code after changes
    tools: Read, Grep, Bash
    model: sonnet
    ---
    You are a careful code reviewer.

qw reads only the small part of YAML such files use: `key: value` with plain, 'single' or
"double" quoted values, block scalars (`|`, `>`), comma lists (`tools: Read, Write`), flow
lists (`[Read, Write]`) and block lists (`- Read`). Keys qw does not use (color, hooks, ...)
are skipped with whatever is nested under them. Parsing is pure; `load_agents` reads files.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple, Union

from .errors import SpecError, UsageError

_KEY_LINE = re.compile(r"^([A-Za-z_][\w-]*)\s*:(?:\s+(.*?)|\s*)$")
_BLOCK_SCALAR = re.compile(r"^([|>])[-+]?$")
_DQ_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\", "/": "/", "r": "\r", "0": "\0"}

# Values are a string or a list of strings; `line` is kept for error messages.
_Value = Union[str, List[str]]


@dataclass(frozen=True)
class AgentDef:
    """One subagent as its file defines it. Empty tools/model mean "inherit"."""

    name: str
    description: str
    prompt: str
    tools: Tuple[str, ...] = ()
    disallowed_tools: Tuple[str, ...] = ()
    model: str = ""
    permission_mode: str = ""
    max_turns: Optional[int] = None
    path: str = ""


def parse_agent(text: str, path: Union[str, Path]) -> AgentDef:
    """The agent defined by `text` (the content of the file at `path`).

    Raises SpecError naming `path:line` for front matter qw cannot read, a missing
    description, a bad maxTurns or an empty system prompt.
    """
    path = str(path)
    lines = text.lstrip("\ufeff").splitlines()
    if not lines or lines[0].strip() != "---":
        raise SpecError("agent file has no front matter", f"{path}:1",
                        "start it with a `---` line, `description: <when to use this agent>`, "
                        "and another `---` line")
    close = next((i for i in range(1, len(lines)) if lines[i].strip() == "---"), None)
    if close is None:
        raise SpecError("agent front matter is not closed", f"{path}:1",
                        "end the front matter with a `---` line")
    fields = _parse_front_matter(lines[1:close], path, first_line=2)

    def text_field(key: str) -> str:
        value, line = fields.get(key, ("", 0))
        if isinstance(value, list):
            raise SpecError(f"agent `{key}` must be text, not a list", f"{path}:{line}",
                            f"write `{key}: <text>`")
        return value.strip()

    description = text_field("description")
    if not description:
        raise SpecError("agent has no description", f"{path}:1",
                        "add `description: <when to use this agent>` to the front matter")
    prompt = "\n".join(lines[close + 1:]).strip()
    if not prompt:
        raise SpecError("agent has no system prompt", f"{path}:{close + 2}",
                        "write the agent's instructions below the closing `---`")
    return AgentDef(
        name=text_field("name") or Path(path).stem,
        description=description,
        prompt=prompt,
        tools=_tool_list(fields.get("tools")),
        disallowed_tools=_tool_list(fields.get("disallowedTools")),
        model=text_field("model"),
        permission_mode=text_field("permissionMode"),
        max_turns=_max_turns(fields.get("maxTurns"), path),
        path=path,
    )


def load_agents(repo: Union[str, Path]) -> Dict[str, AgentDef]:
    """Every agent in `<repo>/.claude/agents/*.md`, by name, in file-name order.

    A missing folder means no agents. Two files defining one name is a SpecError.
    """
    folder = Path(repo) / ".claude" / "agents"
    agents: Dict[str, AgentDef] = {}
    if not folder.is_dir():
        return agents
    for file in sorted(folder.glob("*.md")):
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise SpecError("agent file is not UTF-8 text", str(file),
                            "save it as UTF-8") from None
        agent = parse_agent(text, file)
        if agent.name in agents:
            raise SpecError(f"two agents are named {agent.name!r}: {agents[agent.name].path}"
                            f" and {agent.path}", f"{agent.path}:1",
                            "give each agent its own `name:`")
        agents[agent.name] = agent
    return agents


def agents_json(agents: Iterable[AgentDef]) -> str:
    """The `--agents` argument for `agents`: `{"name": {"description", "prompt", ...}}`.

    Optional fields use the front-matter names the CLI reads and are left out when empty,
    so that the CLI's own defaults (inherit tools and model) apply.
    """
    out = {}
    for agent in agents:
        entry: Dict[str, object] = {"description": agent.description, "prompt": agent.prompt}
        if agent.tools:
            entry["tools"] = list(agent.tools)
        if agent.disallowed_tools:
            entry["disallowedTools"] = list(agent.disallowed_tools)
        if agent.model:
            entry["model"] = agent.model
        if agent.permission_mode:
            entry["permissionMode"] = agent.permission_mode
        if agent.max_turns:
            entry["maxTurns"] = agent.max_turns
        out[agent.name] = entry
    return json.dumps(out, separators=(",", ":"))


# --- the YAML subset -------------------------------------------------------------------

def _parse_front_matter(lines: List[str], path: str,
                        first_line: int) -> Dict[str, Tuple[_Value, int]]:
    """key -> (value, line number) for the front matter `lines` (file line `first_line` on)."""
    fields: Dict[str, Tuple[_Value, int]] = {}
    i = 0
    while i < len(lines):
        raw, number = lines[i], first_line + i
        i += 1
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if raw[0] in " \t":
            raise SpecError(f"unexpected indented line in agent front matter: {raw.strip()!r}",
                            f"{path}:{number}", "indent only list items (`  - Read`) and the "
                            "lines of a `|` or `>` block under their key")
        match = _KEY_LINE.match(raw)
        if not match:
            raise SpecError(f"cannot read agent front matter line {raw.strip()!r}",
                            f"{path}:{number}", "write `key: value`")
        key, value = match.group(1), (match.group(2) or "")
        if key in fields:
            raise SpecError(f"agent front matter sets {key!r} twice (also line "
                            f"{fields[key][1]})", f"{path}:{number}", "keep one of them")
        # The lines nested under this key: indented, or blank between indented ones;
        # after an empty value also `- item` lines flush left (YAML allows both).
        nested_end = i
        while nested_end < len(lines) and (not lines[nested_end].strip()
                                           or lines[nested_end][0] in " \t"
                                           or (not value and lines[nested_end][0] == "-")):
            nested_end += 1
        while nested_end > i and not lines[nested_end - 1].strip():
            nested_end -= 1
        nested, i = lines[i:nested_end], nested_end
        fields[key] = (_value(value, nested, path, number), number)
    return fields


def _value(value: str, nested: List[str], path: str, number: int) -> _Value:
    """The value of a key whose text after `key:` is `value`, with its `nested` lines."""
    block = _BLOCK_SCALAR.match(value)
    if block:
        return _block_scalar(nested, folded=block.group(1) == ">")
    if not value:
        items = [(line.strip(), number + 1 + j) for j, line in enumerate(nested)
                 if line.strip() and not line.strip().startswith("#")]
        if items and all(item == "-" or item.startswith("- ") for item, _ in items):
            return [_scalar(item[1:], path, line) for item, line in items]
        # A nested mapping (hooks:, mcpServers: ...) is not used by qw: keep it as text.
        return "\n".join(nested).strip()
    if value.startswith(("'", '"', "[")) and nested:
        raise SpecError("a quoted value or `[` list continues on the next line",
                        f"{path}:{number}", "keep it on one line, or use `key: |` (text) "
                        "or `- item` lines (a list)")
    if value.startswith(("'", '"')):
        return _scalar(value, path, number)
    if value.startswith("["):
        if not value.rstrip().endswith("]"):
            raise SpecError("a `[` list is not closed on its line", f"{path}:{number}",
                            "write the list as `[Read, Write]` on one line")
        return [_scalar(item, path, number)
                for item in _split_commas(value.rstrip()[1:-1]) if item.strip()]
    # A plain value may continue on indented lines; YAML folds them with spaces.
    plain = [_strip_comment(line) for line in [value] + nested]
    return " ".join(part for part in plain if part)


def _scalar(text: str, path: str, number: int) -> str:
    """One plain, 'single' or "double" quoted scalar, unquoted."""
    text = text.strip()
    if text.startswith('"'):
        out, j = [], 1
        while j < len(text):
            ch = text[j]
            if ch == "\\" and j + 1 < len(text):
                out.append(_DQ_ESCAPES.get(text[j + 1], text[j + 1]))
                j += 2
                continue
            if ch == '"':
                _expect_end(text[j + 1:], path, number)
                return "".join(out)
            out.append(ch)
            j += 1
        raise SpecError("a double-quoted value is not closed", f"{path}:{number}",
                        'close it with `"` on the same line')
    if text.startswith("'"):
        out, j = [], 1
        while j < len(text):
            if text[j] == "'":
                if text[j + 1:j + 2] == "'":  # '' is a quote inside single quotes
                    out.append("'")
                    j += 2
                    continue
                _expect_end(text[j + 1:], path, number)
                return "".join(out)
            out.append(text[j])
            j += 1
        raise SpecError("a single-quoted value is not closed", f"{path}:{number}",
                        "close it with `'` on the same line")
    return _strip_comment(text)


def _expect_end(rest: str, path: str, number: int) -> None:
    rest = rest.strip()
    if rest and not rest.startswith("#"):
        raise SpecError(f"unexpected text after a quoted value: {rest!r}", f"{path}:{number}",
                        "quote the whole value")


def _strip_comment(text: str) -> str:
    """`text` without a trailing ` # comment` (YAML needs the space before `#`)."""
    cut = re.search(r"(^|\s)#", text)
    return (text[:cut.start()] if cut else text).strip()


def _split_commas(text: str) -> List[str]:
    """Split on commas outside quotes and parentheses: `Bash(git add, commit), Read`."""
    items, depth, quote, start = [], 0, "", 0
    for j, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            items.append(text[start:j])
            start = j + 1
    items.append(text[start:])
    return items


def _block_scalar(nested: List[str], folded: bool) -> str:
    """A `|` (literal) or `>` (folded) block: dedented by its first line's indent."""
    indents = [len(line) - len(line.lstrip()) for line in nested if line.strip()]
    cut = min(indents) if indents else 0
    body = [line[cut:] for line in nested]
    if not folded:
        return "\n".join(body).strip()
    paragraphs, current = [], []
    for line in body:
        if line.strip():
            current.append(line.strip())
        else:
            paragraphs.append(" ".join(current))
            current = []
    paragraphs.append(" ".join(current))
    return "\n".join(paragraphs).strip()


def _tool_list(field: Optional[Tuple[_Value, int]]) -> Tuple[str, ...]:
    """Tool names from a list, or from a comma-separated string."""
    if field is None:
        return ()
    value = field[0]
    items = value if isinstance(value, list) else _split_commas(value)
    return tuple(item.strip() for item in items if item.strip())


def _max_turns(field: Optional[Tuple[_Value, int]], path: str) -> Optional[int]:
    if field is None:
        return None
    value, line = field
    text = value.strip() if isinstance(value, str) else ""
    if not text.isdigit() or int(text) < 1:
        raise SpecError(f"agent maxTurns must be a whole number above 0, not {value!r}",
                        f"{path}:{line}", "write e.g. `maxTurns: 20`, or remove the line")
    return int(text)


def agent_of(task, agents: Dict[str, AgentDef], tasks_path: str) -> Optional[AgentDef]:
    """The agent a task's `_Agent:` names, None without one; UsageError for an unknown name
    (a run and its --dry-run refuse it alike, before anything starts)."""
    if not task.agent:
        return None
    if task.agent not in agents:
        known = ", ".join(sorted(agents)) or "none defined"
        raise UsageError(f"task {task.id} names unknown agent '{task.agent}'",
                         f"{tasks_path}:{task.line}",
                         f"define .claude/agents/{task.agent}.md or fix the _Agent: line "
                         f"(known: {known})")
    return agents[task.agent]
