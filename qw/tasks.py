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

# A checkbox line: `- [ ] rest`, `* [x] rest`, `+ [-] rest` (the mark is what set_checkbox
# rewrites), and when it is a task, its id and title: `1.`, `1`, `2.1`, `2.1.`, and
# markdown-escaped `1\.` (some editors write it to stop a list).
_CHECKBOX = re.compile(
    r"^(?P<indent>[ \t]*)[-*+][ \t]+\[(?P<mark>[ xX~-])\](?=[ \t]|$)"
    r"(?:[ \t]+(?P<id>\d+(?:\\?\.\d+)*)(?:\\?\.)?(?=[ \t]|$)(?P<title>.*))?"
)
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


class _Block:
    """A task's lines as found by the scanner, before fields are read."""

    __slots__ = ("line", "indent", "id", "mark", "mark_column", "title", "lines")

    def __init__(self, line: int, indent: int, task_id: str, mark: str, mark_column: int,
                 title: str) -> None:
        self.line = line                # 1-based line of the checkbox
        self.indent = indent
        self.id = task_id
        self.mark = mark
        self.mark_column = mark_column
        self.title = title
        self.lines: List[str] = []      # the checkbox line and the details, once scanned


def _split_lines(text: str) -> List[str]:
    """The lines of the text without their line endings, line 1 without a BOM."""
    lines = text.split("\n")
    if lines[0].startswith("\ufeff"):
        lines[0] = lines[0][1:]
    if "\r" not in text:
        return lines
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
    spaces = len(line) - len(line.lstrip(" "))
    if line[spaces:spaces + 1] != "\t":
        return spaces  # no tab in the indentation: the usual case, counted in C
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
    start = 0  # index in `lines` of the current block's checkbox
    region: Optional[Tuple[str, int]] = None
    for index, line in enumerate(lines):
        if region is not None:  # its lines join the block the opening line is in, if any
            if _closes_opaque(region, line):
                region = None
            continue
        # Only a line whose first character after the indentation is one of "-*+" (and that
        # holds a "[") can be a checkbox, "#" a heading, and "`~<" a fence or a comment; at
        # column 0, any line can end a block. Every other line (most of a spec: indented
        # details) joins the block it is in, if any: nothing to do.
        first = line.lstrip()[:1]
        if first in "-*+":
            checkbox = _CHECKBOX.match(line) if first and "[" in line else None
            if checkbox is not None:
                indent, mark, task_id, title = checkbox.groups()
                indent = _columns(indent) if indent else 0
                if task_id is None:
                    if current is not None and 0 < indent and current.indent < indent:
                        continue  # a checklist inside the task's details
                    raise SpecError(
                        f"checkbox item has no task number: {line.strip()!r}",
                        f"{path}:{index + 1}",
                        _TASK_NUMBER_FIX + " (or indent it under a task as a checklist)",
                    )
                task_id = task_id.replace("\\", "")
                if task_id in first_line:
                    raise SpecError(
                        f"duplicate task id {task_id} (first at {path}:{first_line[task_id]})",
                        f"{path}:{index + 1}",
                        "task ids must be unique \u2014 the upstream spec-workflow template "
                        "reuses numbers (4., 5., 6. after 8.): renumber the later tasks",
                    )
                first_line[task_id] = index + 1
                if current is not None:
                    current.lines = lines[start:index]
                current = _Block(index + 1, indent, task_id, mark.lower(),
                                 checkbox.start("mark"), title.strip())
                start = index
                blocks.append(current)
                continue
        elif first in "`~<":
            region = _opens_opaque(line)
        if first and current is not None and (
                (first == "#" and _HEADING.match(line))
                or (line[0] not in " \t" and not _BULLET.match(line))):
            current.lines = lines[start:index]  # a heading or a line at column 0 ends it
            current = None
    if current is not None:
        current.lines = lines[start:]
    for block in blocks:
        while len(block.lines) > 1 and not block.lines[-1].strip():
            block.lines.pop()
    return blocks


def _clean_token(token: str) -> str:
    """A token without the quotes, emphasis and sentence punctuation around it."""
    if token and token[0] not in "`'\"*(" and token[-1] not in "`'\"*.,;:!?)":
        return token  # nothing around it to take off: most tokens
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
    if not token or "://" in token or "<" in token or ">" in token or "|" in token \
            or "=" in token:
        return False
    lowered = token.lower()
    if lowered in _NOT_FILES:
        return False
    if "/" in token:
        return any(map(str.isalpha, token)) and lowered not in _SLASH_WORDS
    named = _NAME_WITH_EXTENSION.match(token)
    return bool(named) and named.group("ext").lower() in _EXTENSIONS


def _path_tokens(text: str) -> List[str]:
    """The path-like tokens of free text (separated by whitespace or commas), in order."""
    # Most words of a title hold neither "/" nor ".": no path, so no cleaning (it adds up
    # on a 10,000-task spec).
    if "/" not in text and "." not in text:
        return []
    tokens = [_clean_token(t) for t in text.replace(",", " ").split() if "/" in t or "." in t]
    return [t for t in tokens if _is_path(t)]


def _declared_paths(value: str) -> List[str]:
    """The paths of a File:/Files: value: comma-separated, notes and quoting removed."""
    if "(" in value:
        value = _PAREN_NOTE.sub("", value)
    paths = []
    for piece in value.split(","):
        piece = piece.strip()
        if "-" in piece or "\u2013" in piece or "\u2014" in piece:
            piece = _DASH_NOTE.split(piece)[0].strip()
        piece = _clean_token(piece)
        if piece:
            paths.append(piece)
    return paths


def _unique(items) -> Tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def _field(line: str) -> Optional[Tuple[str, str]]:
    """(field name, value) of a field line (the value without the emphasis that closes
    it), or None for any other line."""
    match = _FIELD.match(line)
    if match is None:
        return None
    opener, name, closer, value = match.groups()
    name = name.lower()
    value = value.strip()
    if opener and not closer:  # the emphasis closes after the value: `_Files: a.ts_`
        if value.endswith(opener):
            value = value[: -len(opener)].strip()
        elif value.startswith(opener):
            value = value[len(opener):].strip()
    return _FIELD_NAMES.get(name, name), value


def _read_fields(block: _Block, path: str, task: dict,
                 known: Dict[str, Optional[Tuple[str, str]]]) -> List[str]:
    """Set the fields of a task's detail lines in `task` (its Task field values by name);
    return its File:/Files: paths. `known` holds the lines of the file read so far."""
    files: List[str] = []
    leverage: List[str] = []
    requirements: List[str] = []
    depends: Optional[List[str]] = None
    first_at: Dict[str, int] = {}
    nested_under: Optional[int] = None   # indent of a `_Prompt:` or bare `Files:` line
    nested_files = False
    number = block.line
    for line in block.lines[1:]:
        number += 1
        if nested_under is not None:
            if not line.strip():
                continue
            if _columns(line) > nested_under:
                if nested_files:
                    files.extend(_declared_paths(_BULLET_PREFIX.sub("", line)))
                continue  # text nested under _Prompt: is prompt text, not fields
            nested_under = None
        # A field line holds a colon; the field pattern is slow to refuse a line of prose
        # (it tries every field name at several places), so it runs only on those. Many
        # lines repeat (`_Requirements: 1.2_`): each is read once per file.
        if ":" not in line:
            continue
        field = known.get(line, False)
        if field is False:
            field = known[line] = _field(line)
        if field is None:
            continue
        name, value = field
        if name == "files" and value:
            files.extend(_declared_paths(value))
        elif name == "requirements":
            if "," in value:
                requirements.extend(r.strip() for r in value.split(",") if r.strip())
            elif value:
                requirements.append(value)
        elif name == "depends":
            ids = _ID_ONLY.findall(value.replace("\\.", "."))
            if not ids and value.strip(".").lower() not in ("", "none", "-"):
                raise SpecError(f"bad _Depends: {value!r} in task {block.id}", f"{path}:{number}",
                                "list task ids like `_Depends: 1, 2.1_`, or `none`")
            if depends is None:
                depends = ids
                task["depends_line"] = number
            else:
                depends = depends + ids
        elif name == "leverage":
            leverage.extend(_path_tokens(value))
        elif name in _ATTRIBUTE:
            if name in first_at:
                raise SpecError(
                    f"task {block.id} has more than one _{name.capitalize()}: line "
                    f"(first at {path}:{first_at[name]})", f"{path}:{number}", "keep one")
            first_at[name] = number
            task[_ATTRIBUTE[name]] = _single_field(name, value, block.id, path, number)
        elif name == "prompt" or name == "files":
            # `_Prompt:` or a bare `Files:`: what is indented under it belongs to it.
            nested_under, nested_files = _columns(line), name == "files"
    if leverage:
        task["leverage"] = _unique(leverage)
    task["requirements"] = tuple(requirements)
    if depends is not None:
        task["depends"] = _unique(depends)
    return files


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
    parents: Dict[str, Optional[str]] = {}   # also: the ids seen so far
    stack: List[Tuple[int, str]] = []
    for block in blocks:
        while stack and stack[-1][0] >= block.indent:
            stack.pop()
        parents[block.id] = stack[-1][1] if stack else _dotted_parent(block.id, parents)
        stack.append((block.indent, block.id))
    children: Dict[str, List[str]] = {}
    for block in blocks:
        if parents[block.id] is not None:
            children.setdefault(parents[block.id], []).append(block.id)
    tasks = []
    known: Dict[str, Optional[Tuple[str, str]]] = {}   # line -> its field (see _read_fields)
    for block in blocks:
        lines, task_id = block.lines, block.id
        block_text = "\n".join(lines)
        # Every field of Task, in field order, as Task(...) would hold them (see _new_task).
        task = {"id": task_id, "title": block.title, "mark": block.mark, "line": block.line,
                "end_line": block.line + len(lines) - 1, "indent": block.indent,
                "parent": parents[task_id], "children": tuple(children.get(task_id, ())),
                "block": block_text, "details": tuple(lines[1:]), "files": (),
                "leverage": (), "requirements": (), "depends": None, "depends_line": None,
                "agent": None, "timeout_s": None, "verify": None, "blocked_reason": None,
                "task_refs": _task_refs(block_text, task_id)}
        files = _read_fields(block, path, task, known) + _path_tokens(block.title)
        task["files"] = _unique(files) if len(files) > 1 else tuple(files)
        tasks.append(_new_task(task))
    return TaskList(path, tuple(tasks))


def _new_task(values: Dict[str, object]) -> Task:
    """The Task holding `values` (every field, in field order), as Task(**values) would
    build it but in one step: a frozen dataclass's __init__ sets each field through
    object.__setattr__, 8 \u00b5s for Task's 21, 80 ms of a 10,000-task parse."""
    task = object.__new__(Task)
    task.__dict__.update(values)  # filling an empty instance dict keeps it compact
    return task


def _dotted_parent(task_id: str, earlier) -> Optional[str]:
    """The nearest dotted prefix of `task_id` ("4" for "4.1") that is an earlier task."""
    if "." not in task_id:
        return None
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
