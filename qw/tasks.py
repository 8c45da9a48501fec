"""The tasks.md format (DESIGN §3): parse a task list, and flip one checkbox.

Pure: text in, values out. Reading the file is `qw.specdir`'s job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from qw.durations import parse_duration
from qw.errors import SpecError

# Checkbox mark -> status word. `[-]` and `[~]` are written by spec-workflow-mcp.
MARKS = {" ": "pending", "x": "done", "-": "in_progress", "~": "blocked"}


@dataclass(frozen=True)
class Task:
    """One checkbox item of tasks.md, with everything qw reads from its block."""

    id: str                       # "1", "2.1" (escaped "1\\." normalised to "1")
    title: str                    # the text after the id on the checkbox line
    mark: str                     # " ", "x", "-" or "~" ("X" is read as "x")
    line: int                     # 1-based line of the checkbox
    end_line: int                 # 1-based last line of the block (details included)
    indent: int                   # columns of indentation before the bullet
    parent: Optional[str] = None  # id of the group this task belongs to
    children: Tuple[str, ...] = ()  # ids of its subtasks (non-empty: a group)
    block: str = ""               # the block's lines verbatim, newline-joined
    details: Tuple[str, ...] = ()  # detail lines verbatim (without the checkbox line)
    files: Tuple[str, ...] = ()   # File:/Files: paths, plus paths in the title
    leverage: Tuple[str, ...] = ()  # paths named by _Leverage:
    requirements: Tuple[str, ...] = ()  # ids named by _Requirements: ("1.1", "2", "All")
    depends: Optional[Tuple[str, ...]] = None  # _Depends: ids; () for "none"; None if absent
    depends_line: Optional[int] = None  # line of the _Depends: line, for error messages
    agent: Optional[str] = None   # _Agent: name
    timeout_s: Optional[float] = None  # _Timeout: in seconds
    verify: Optional[str] = None  # _Verify: command
    blocked_reason: Optional[str] = None  # _Blocked: reason
    task_refs: Tuple[str, ...] = ()  # ids from "task N" references in the block

    @property
    def status(self) -> str:
        return MARKS[self.mark]

    @property
    def is_group(self) -> bool:
        return bool(self.children)


@dataclass(frozen=True)
class TaskList:
    """The tasks of one tasks.md, in document order."""

    path: str
    tasks: Tuple[Task, ...]
    by_id: Dict[str, Task] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.by_id:
            object.__setattr__(self, "by_id", {t.id: t for t in self.tasks})

    def __getitem__(self, task_id: str) -> Task:
        return self.by_id[task_id]

    def __contains__(self, task_id: object) -> bool:
        return task_id in self.by_id

    def __iter__(self):
        return iter(self.tasks)

    def __len__(self) -> int:
        return len(self.tasks)


# --- reading tasks.md -------------------------------------------------------------------

_TASK_NUMBER_FIX = "number it like `- [ ] 3. Title`"
_ADD_TASKS_FIX = "add checkbox items like `- [ ] 1. Title`"

# `- [ ] rest`, `* [x] rest`, `+ [-] rest`; the mark is what set_checkbox rewrites.
_CHECKBOX = re.compile(r"^(?P<indent>[ \t]*)[-*+][ \t]+\[(?P<mark>[ xX~-])\](?P<rest>[ \t].*|)$")
# `1.`, `1`, `2.1`, `2.1.`, and markdown-escaped `1\.` (some editors write it to stop a list).
_TASK_ID = re.compile(r"^[ \t]*(?P<id>\d+(?:\\?\.\d+)*)(?:\\?\.)?(?=[ \t]|$)(?P<title>.*)$")
_HEADING = re.compile(r"^ {0,3}#{1,6}(?:[ \t]|$)")
_BULLET = re.compile(r"^[-*+](?:[ \t]|$)")
_FENCE = re.compile(r"^[ \t]*(?P<fence>`{3,}|~{3,})")

# A field line: optional bullet, optional emphasis, a known name, a colon.
_FIELD = re.compile(
    r"^[ \t]*(?:[-*+][ \t]+)?(?P<open>[_*]{0,2})[ \t]*"
    r"(?P<name>file\(s\)|files?|leverage|requirements?|depends[ _]?on|depends|"
    r"agent|timeout|verify|blocked|prompt)"
    r"[ \t]*(?P<close>[_*]{0,2})[ \t]*:(?P<value>.*)$",
    re.IGNORECASE,
)
_BULLET_PREFIX = re.compile(r"^[ \t]*[-*+][ \t]+")
_FIELD_NAMES = {"file(s)": "files", "file": "files", "files": "files",
                "requirement": "requirements", "requirements": "requirements",
                "dependson": "depends", "depends on": "depends", "depends_on": "depends",
                "depends": "depends"}
# Fields written once, and the Task attribute each fills.
_ATTRIBUTE = {"agent": "agent", "timeout": "timeout_s", "verify": "verify",
              "blocked": "blocked_reason"}

_ID_PATTERN = r"\d+(?:\.\d+)*"
# "task 3", "Task #3", "subtask 2.1", "tasks 1, 2 and 4"
_TASK_REF = re.compile(
    r"\b(?:sub)?tasks?(?:[ \t]+#?|[ \t]*#)" + _ID_PATTERN
    + r"(?:[ \t]*(?:,[ \t]*(?:and|or)?|and|or|&)[ \t]*#?" + _ID_PATTERN + r")*",
    re.IGNORECASE,
)
_ID_ONLY = re.compile(_ID_PATTERN)

# A parenthetical note after a path ("(continue from task 2)"), but not a path segment such
# as Next.js's `app/(auth)/page.tsx`: only when whitespace precedes it.
_PAREN_NOTE = re.compile(r"\s+\([^)]*\)")
_DASH_NOTE = re.compile(r"\s+[-\u2013\u2014]\s+")

# Extensions that make a bare name ("FeatureModel.ts") a file. A closed list, because an
# open pattern would call "e.g." or "v1.2" files and serialise unrelated tasks.
_EXTENSIONS = frozenset(
    "ts tsx mts cts js jsx mjs cjs py pyi pyx md mdx rst txt json jsonc json5 yaml yml toml "
    "ini cfg conf env lock go rs java kt kts scala groovy gradle swift c h cc cpp cxx hpp hh "
    "cs fs vb rb php pl pm lua sh bash zsh fish ps1 bat cmd sql graphql gql proto html htm "
    "css scss sass less vue svelte astro xml xsd svg png jpg jpeg gif ico webp dart ex exs "
    "erl hrl clj cljs elm hs ml jl nim zig tf tfvars hcl properties csv tsv ipynb tex mk "
    "cmake dockerfile prisma sol".split()
)
_NAME_WITH_EXTENSION = re.compile(r"^[\w@+~-][\w@+~.-]*\.(?P<ext>[A-Za-z0-9]+)$")
# Product names that look like files; in a title they are prose, not paths.
_NOT_FILES = frozenset(
    "node.js next.js vue.js nuxt.js express.js react.js angular.js ember.js backbone.js "
    "three.js d3.js chart.js alpine.js solid.js p5.js moment.js day.js".split()
)
# Slash-joined words that are prose, not paths.
_SLASH_WORDS = frozenset(
    "and/or or/and read/write input/output i/o ci/cd tcp/ip n/a client/server yes/no on/off "
    "true/false pass/fail async/await try/catch get/set start/stop open/close enable/disable "
    "show/hide add/remove create/update login/logout import/export request/response "
    "a/b ui/ux w/o frontend/backend".split()
)


@dataclass
class _Block:
    """A task's lines as found by the scanner, before fields are read."""

    line: int
    indent: int
    id: str
    mark: str
    mark_column: int
    title: str
    lines: List[str]


def _split_lines(text: str) -> List[str]:
    """The lines of the text without their line endings, line 1 without a BOM."""
    lines = text.split("\n")
    if lines[0].startswith("\ufeff"):
        lines[0] = lines[0][1:]
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _line_offsets(text: str) -> List[int]:
    """The offset in `text` of each line's first character (after the BOM on line 1)."""
    offsets = [1 if text.startswith("\ufeff") else 0]
    end = text.find("\n")
    while end != -1:
        offsets.append(end + 1)
        end = text.find("\n", end + 1)
    return offsets


def _columns(line: str) -> int:
    """Columns of leading whitespace, tabs to the next multiple of 4 (as markdown reads them)."""
    width = 0
    for ch in line:
        if ch == " ":
            width += 1
        elif ch == "\t":
            width += 4 - width % 4
        else:
            break
    return width


def _opens_opaque(line: str) -> Optional[Tuple[str, int]]:
    """The region a line opens whose lines are never tasks: a code fence or an HTML comment."""
    fence = _FENCE.match(line)
    if fence:
        mark = fence.group("fence")
        return (mark[0], len(mark))
    stripped = line.strip()
    if stripped.startswith("<!--") and "-->" not in stripped[4:]:
        return ("<!--", 0)
    return None


def _closes_opaque(region: Tuple[str, int], line: str) -> bool:
    kind, length = region
    if kind == "<!--":
        return "-->" in line
    stripped = line.strip()
    return stripped.startswith(kind * length) and not stripped.strip(kind)


def _scan(lines: List[str], path: str) -> List[_Block]:
    """Cut the lines into task blocks; raise on duplicate ids and unnumbered top-level items."""
    blocks: List[_Block] = []
    first_line: Dict[str, int] = {}
    current: Optional[_Block] = None
    region: Optional[Tuple[str, int]] = None
    region_in_block = False
    for number, line in enumerate(lines, 1):
        if region is not None:
            if region_in_block and current is not None:
                current.lines.append(line)
            if _closes_opaque(region, line):
                region = None
            continue
        # Only a line whose first character after the indentation is one of "-*+" (and that
        # holds a "[") can be a checkbox, "#" a heading, and "`~<" a fence or a comment: on
        # the other lines (most of a spec) the patterns need not run.
        first = line.lstrip()[:1]
        checkbox = _CHECKBOX.match(line) if first in "-*+" and "[" in line else None
        if checkbox:
            indent = _columns(line)
            numbered = _TASK_ID.match(checkbox.group("rest"))
            if numbered:
                task_id = numbered.group("id").replace("\\", "")
                if task_id in first_line:
                    raise SpecError(
                        f"duplicate task id {task_id} (first at {path}:{first_line[task_id]})",
                        f"{path}:{number}",
                        "task ids must be unique \u2014 the upstream spec-workflow template "
                        "reuses numbers (4., 5., 6. after 8.): renumber the later tasks",
                    )
                first_line[task_id] = number
                current = _Block(number, indent, task_id, checkbox.group("mark").lower(),
                                 checkbox.start("mark"), numbered.group("title").strip(), [line])
                blocks.append(current)
                continue
            if current is not None and 0 < indent and current.indent < indent:
                current.lines.append(line)  # a checklist inside the task's details
                continue
            raise SpecError(
                f"checkbox item has no task number: {line.strip()!r}",
                f"{path}:{number}",
                _TASK_NUMBER_FIX + " (or indent it under a task as a checklist)",
            )
        opens = _opens_opaque(line) if first in "`~<" else None
        at_column_0 = not line.startswith((" ", "\t"))
        if first and ((first == "#" and _HEADING.match(line))
                      or (at_column_0 and not _BULLET.match(line))):
            current = None
        elif current is not None:
            current.lines.append(line)
        if opens:
            region = opens
            region_in_block = current is not None
    for block in blocks:
        while len(block.lines) > 1 and not block.lines[-1].strip():
            block.lines.pop()
    return blocks


def _clean_token(token: str) -> str:
    """A token without the quotes, emphasis and sentence punctuation around it."""
    while True:
        before = token
        token = token.strip("`'\"*").rstrip(".,;:!?")
        if token.startswith("(") and token.count("(") > token.count(")"):
            token = token[1:]
        if token.endswith(")") and token.count(")") > token.count("("):
            token = token[:-1]
        if token == before:
            return token


def _is_path(token: str) -> bool:
    """True for tokens that name a file or folder: `src/a.ts`, `docs/templates/`, `Model.ts`."""
    if not token or "://" in token or any(ch in token for ch in "<>|="):
        return False
    if token.lower() in _NOT_FILES:
        return False
    if "/" in token:
        return any(ch.isalpha() for ch in token) and token.lower() not in _SLASH_WORDS
    named = _NAME_WITH_EXTENSION.match(token)
    return bool(named) and named.group("ext").lower() in _EXTENSIONS


def _path_tokens(text: str) -> List[str]:
    """The path-like tokens of free text (separated by whitespace or commas), in order."""
    # Most words of a title hold neither "/" nor ".": no path, so no cleaning (it adds up
    # on a 10,000-task spec).
    tokens = (_clean_token(t) for t in text.replace(",", " ").split() if "/" in t or "." in t)
    return [t for t in tokens if _is_path(t)]


def _declared_paths(value: str) -> List[str]:
    """The paths of a File:/Files: value: comma-separated, notes and quoting removed."""
    paths = []
    for piece in _PAREN_NOTE.sub("", value).split(","):
        piece = _clean_token(_DASH_NOTE.split(piece.strip())[0].strip())
        if piece:
            paths.append(piece)
    return paths


def _unique(items) -> Tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def _field_value(match: "re.Match[str]") -> str:
    """The value of a field line, without the emphasis that closes it."""
    value = match.group("value").strip()
    opener = match.group("open")
    if opener and not match.group("close"):
        if value.endswith(opener):
            value = value[: -len(opener)]
        elif value.startswith(opener):
            value = value[len(opener):]
    return value.strip()


def _read_fields(block: _Block, path: str) -> dict:
    """The fields of a task's detail lines, keyed by Task attribute name."""
    files: List[str] = []
    leverage: List[str] = []
    requirements: List[str] = []
    depends: Optional[List[str]] = None
    fields: dict = {}
    first_at: Dict[str, int] = {}
    nested_under: Optional[int] = None   # indent of a `_Prompt:` or bare `Files:` line
    nested_kind = ""
    for number, line in enumerate(block.lines[1:], block.line + 1):
        if nested_under is not None:
            if not line.strip():
                continue
            if _columns(line) > nested_under:
                if nested_kind == "files":
                    files.extend(_declared_paths(_BULLET_PREFIX.sub("", line)))
                continue  # text nested under _Prompt: is prompt text, not fields
            nested_under = None
        # A field line holds a colon; the field pattern is slow to refuse a line of prose
        # (it tries every field name at several places), so it runs only on those.
        match = _FIELD.match(line) if ":" in line else None
        if not match:
            continue
        name = match.group("name").lower()
        name = _FIELD_NAMES.get(name, name)
        value = _field_value(match)
        if name == "prompt" or (name == "files" and not value):
            nested_under, nested_kind = _columns(line), name
        if name == "files":
            files.extend(_declared_paths(value))
        elif name == "leverage":
            leverage.extend(_path_tokens(value))
        elif name == "requirements":
            requirements.extend(r.strip() for r in value.split(",") if r.strip())
        elif name == "depends":
            ids = _ID_ONLY.findall(value.replace("\\.", "."))
            if not ids and value.strip(".").lower() not in ("", "none", "-"):
                raise SpecError(f"bad _Depends: {value!r} in task {block.id}", f"{path}:{number}",
                                "list task ids like `_Depends: 1, 2.1_`, or `none`")
            depends = (depends or []) + ids
            fields.setdefault("depends_line", number)
        elif name in _ATTRIBUTE:
            if name in first_at:
                raise SpecError(
                    f"task {block.id} has more than one _{name.capitalize()}: line "
                    f"(first at {path}:{first_at[name]})", f"{path}:{number}", "keep one")
            first_at[name] = number
            fields[_ATTRIBUTE[name]] = _single_field(name, value, block.id, path, number)
    fields.update(files=files, leverage=_unique(leverage), requirements=tuple(requirements),
                  depends=None if depends is None else _unique(depends))
    return fields


def _single_field(name: str, value: str, task_id: str, path: str, number: int):
    """The Task value of an `_Agent:`, `_Timeout:`, `_Verify:` or `_Blocked:` field."""
    if name == "timeout":
        try:
            seconds = parse_duration(value)
        except ValueError:
            seconds = 0.0
        if seconds <= 0:
            raise SpecError(f"bad _Timeout: {value!r} in task {task_id}", f"{path}:{number}",
                            "write a duration like `_Timeout: 20m_` (90, 90s, 30m, 2h)")
        return seconds
    if name == "verify" and len(value) > 1 and value[0] == value[-1] == "`":
        value = value[1:-1]
    return value.strip().strip("`") if name == "agent" else value


def _task_refs(text: str, task_id: str) -> Tuple[str, ...]:
    """Ids a task's block text mentions as "task N" (not its own), first mention first."""
    # Most blocks never say "task", and searching for the pattern is slow. casefold, not
    # lower: the pattern's IGNORECASE also reads "\u017f" (long s) as "s".
    if "task" not in text.casefold():
        return ()
    refs = []
    for mention in _TASK_REF.finditer(text):
        refs.extend(_ID_ONLY.findall(mention.group(0)))
    return tuple(r for r in _unique(refs) if r != task_id)


def parse_tasks(text: str, path: str = "tasks.md") -> TaskList:
    """Parse tasks.md text (LF or CRLF, BOM ignored) into a TaskList.

    Raises SpecError naming path:line for an empty file, a file without tasks, duplicate ids,
    an unnumbered top-level checkbox, or a bad field value.
    """
    if not text.lstrip("\ufeff").strip():
        raise SpecError("tasks file is empty", path, _ADD_TASKS_FIX)
    blocks = _scan(_split_lines(text), path)
    if not blocks:
        raise SpecError("no tasks found", path, _ADD_TASKS_FIX)
    parents: Dict[str, Optional[str]] = {}
    seen = set()
    stack: List[Tuple[int, str]] = []
    for block in blocks:
        while stack and stack[-1][0] >= block.indent:
            stack.pop()
        parents[block.id] = stack[-1][1] if stack else _dotted_parent(block.id, seen)
        stack.append((block.indent, block.id))
        seen.add(block.id)
    children: Dict[str, List[str]] = {}
    for block in blocks:
        if parents[block.id] is not None:
            children.setdefault(parents[block.id], []).append(block.id)
    tasks = []
    for block in blocks:
        fields = _read_fields(block, path)
        fields["files"] = _unique(fields["files"] + _path_tokens(block.title))
        block_text = "\n".join(block.lines)
        tasks.append(Task(
            id=block.id, title=block.title, mark=block.mark, line=block.line,
            end_line=block.line + len(block.lines) - 1, indent=block.indent,
            parent=parents[block.id], children=tuple(children.get(block.id, ())),
            block=block_text, details=tuple(block.lines[1:]),
            task_refs=_task_refs(block_text, block.id), **fields,
        ))
    return TaskList(path, tuple(tasks))


def _dotted_parent(task_id: str, earlier) -> Optional[str]:
    """The nearest dotted prefix of `task_id` ("4" for "4.1") that is an earlier task."""
    parts = task_id.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in earlier:
            return prefix
    return None


# --- writing one checkbox ---------------------------------------------------------------

def checkbox_marks(text: str, path: str = "tasks.md") -> Dict[str, Tuple[str, int]]:
    """{task id: (its mark, the offset of the mark character in `text`)}, from one scan.

    Lighter than parse_tasks (no fields are read): what a writer of checkboxes needs. Raises
    SpecError for duplicate ids or an unnumbered top-level checkbox, as parse_tasks does.
    """
    offsets = _line_offsets(text)
    return {block.id: (block.mark, offsets[block.line - 1] + block.mark_column)
            for block in _scan(_split_lines(text), path)}


def with_marks(text: str, marks: Dict[int, str]) -> str:
    """`text` with the mark character at each offset of `marks` (offsets from
    checkbox_marks) replaced, every other character kept: one pass, whatever the count."""
    pieces, start = [], 0
    for offset in sorted(marks):
        mark = marks[offset]
        if mark not in MARKS:
            raise ValueError(f"mark must be one of {sorted(MARKS)!r}, not {mark!r}")
        pieces += [text[start:offset], mark]
        start = offset + 1
    pieces.append(text[start:])
    return "".join(pieces)


def set_checkbox(text: str, task_id: str, mark: str, path: str = "tasks.md") -> str:
    """`text` with task `task_id`'s checkbox mark set to `mark` and every other character kept.

    Re-reads the task structure from `text` itself (the file may have changed since the plan
    was made). Raises SpecError naming `path` if the task is not there.
    """
    if mark not in MARKS:
        raise ValueError(f"mark must be one of {sorted(MARKS)!r}, not {mark!r}")
    present = checkbox_marks(text, path)
    if task_id not in present:
        raise SpecError(f"task {task_id} not found", path,
                        "the file was edited during the run: check its task numbers")
    current, offset = present[task_id]
    return text if current == mark else with_marks(text, {offset: mark})
