"""The context documents of a spec: requirements.md, design.md and the steering docs.

Pure: text in, values out. qw reads them only to give each task's prompt the parts it needs,
so parsing is forgiving: a document without the expected headings still parses, it simply
resolves fewer references.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

_HEADING = re.compile(r"^ {0,3}(?P<hashes>#{1,6})(?:[ \t]+(?P<title>.*?))?[ \t#]*$")
_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})")
# `### Requirement 2: Title`, `## Requirement 2 - Title`, `#### REQ-2`, `### R2`
_REQUIREMENT = re.compile(
    r"^(?:requirement[ \t]+|req-?[ \t]*|r)(?P<number>\d+(?:\.\d+)*)\.?"
    r"(?:[ \t]*[:.\-\u2013\u2014][ \t]*|[ \t]+|$)(?P<title>.*)$",
    re.IGNORECASE,
)
_USER_STORY = re.compile(
    r"^[ \t]*(?:[-*+][ \t]+)?[*_]{0,2}user[ \t]+story[ \t]*[*_]{0,2}[ \t]*:[ \t]*[*_]{0,2}"
    r"[ \t]*(?P<text>.*)$",
    re.IGNORECASE,
)
_CRITERION = re.compile(r"^(?P<indent> {0,3})(?P<number>\d+)[.)][ \t]+(?P<text>.*)$")
_ACCEPTANCE = re.compile(r"acceptance[ \t]+criteria", re.IGNORECASE)
# A reference as users write it in `_Requirements:`: "2.3", "R2.3", "REQ-2.3", "Req 2".
_REFERENCE = re.compile(r"^(?:requirements?|req|r)?[ \t#._-]*(?P<number>\d+(?:\.\d+)*)\.?$",
                        re.IGNORECASE)


def _lines(text: str) -> List[str]:
    """The lines of `text` without line endings or a leading BOM."""
    return [line[:-1] if line.endswith("\r") else line
            for line in text.lstrip("\ufeff").split("\n")]


def _headings(lines: List[str]) -> List[Tuple[int, int, str]]:
    """(index, level, title) of every markdown heading outside fenced code."""
    found = []
    fence = ""
    for index, line in enumerate(lines):
        opener = _FENCE.match(line)
        if fence:
            if opener and opener.group(1).startswith(fence) and not line.strip().strip(fence[0]):
                fence = ""
            continue
        if opener:
            fence = opener.group(1)
            continue
        heading = _HEADING.match(line)
        if heading:
            title = (heading.group("title") or "").strip()
            found.append((index, len(heading.group("hashes")), title))
    return found


def _verbatim(lines: List[str]) -> str:
    """Lines joined with newlines, trailing blank lines dropped."""
    end = len(lines)
    while end > 1 and not lines[end - 1].strip():
        end -= 1
    return "\n".join(lines[:end])


# --- requirements.md --------------------------------------------------------------------

@dataclass(frozen=True)
class Criterion:
    """One numbered acceptance criterion of a requirement."""

    number: str   # "3" in requirement 2: referenced as "2.3"
    text: str     # the criterion, continuation lines included
    line: int     # 1-based


@dataclass(frozen=True)
class Requirement:
    """One `Requirement N` section of requirements.md."""

    number: str
    title: str
    line: int
    user_story: Optional[str]
    criteria: Tuple[Criterion, ...]
    text: str     # the section verbatim, heading included

    def criterion(self, number: str) -> Optional[Criterion]:
        """The criterion numbered `number`, or None."""
        return next((c for c in self.criteria if c.number == number), None)

    def heading(self) -> str:
        """`Requirement 2: Title` (with the user story below it when there is one)."""
        text = f"Requirement {self.number}" + (f": {self.title}" if self.title else "")
        if self.user_story:
            text += f"\nUser Story: {self.user_story}"
        return text


@dataclass(frozen=True)
class Requirements:
    """The requirements of a spec, and the resolution of `_Requirements:` references."""

    path: str
    text: str
    requirements: Tuple[Requirement, ...]
    by_number: Dict[str, Requirement] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.by_number:
            numbers: Dict[str, Requirement] = {}
            for requirement in self.requirements:
                numbers.setdefault(requirement.number, requirement)
            object.__setattr__(self, "by_number", numbers)

    def resolve(self, ref: str) -> Optional[str]:
        """The text a reference names, or None if it names nothing here.

        "2" (or "2.0") is the whole requirement 2; "2.3" its criterion 3 under the
        requirement's title and user story; "All" the whole document. "R2.3" and "REQ-2.3"
        are read as "2.3".
        """
        ref = ref.strip()
        if ref.lower() == "all":
            return self.text.lstrip("\ufeff")
        match = _REFERENCE.match(ref)
        if not match:
            return None
        number = match.group("number")
        if number in self.by_number:
            return self.by_number[number].text
        head, _, tail = number.rpartition(".")
        requirement = self.by_number.get(head)
        if requirement is None:
            return None
        if tail == "0":
            return requirement.text
        criterion = requirement.criterion(tail)
        if criterion is None:
            return None
        return f"{requirement.heading()}\nAcceptance criterion {number}: {criterion.text}"

    def excerpt(self, refs: Iterable[str]) -> str:
        """The text that `refs` name, each requirement once: a whole requirement when one
        ref names it whole, else its heading and user story followed by the criteria named.
        Unknown refs are left out (validation reports them)."""
        refs = [r.strip() for r in refs]
        if any(r.lower() == "all" for r in refs):
            return self.text.lstrip("\ufeff")
        whole: List[str] = []
        criteria: Dict[str, List[str]] = {}
        for ref in refs:
            match = _REFERENCE.match(ref)
            if not match:
                continue
            number = match.group("number")
            head, _, tail = number.rpartition(".")
            if number in self.by_number or (tail == "0" and head in self.by_number):
                number = number if number in self.by_number else head
                if number not in whole:
                    whole.append(number)
            elif head in self.by_number and self.by_number[head].criterion(tail) is not None:
                criteria.setdefault(head, [])
                if tail not in criteria[head]:
                    criteria[head].append(tail)
        parts = []
        for number in list(dict.fromkeys(whole + list(criteria))):
            requirement = self.by_number[number]
            if number in whole:
                parts.append(requirement.text.strip("\n"))
                continue
            lines = [requirement.heading()]
            for tail in criteria[number]:
                lines.append(f"Acceptance criterion {number}.{tail}: "
                             f"{requirement.criterion(tail).text}")
            parts.append("\n".join(lines))
        return "\n\n".join(parts)

    def unresolved(self, refs: Iterable[str]) -> List[str]:
        """The references among `refs` that name nothing in this document, in order."""
        return [ref for ref in refs if self.resolve(ref) is None]


def parse_requirements(text: str, path: str = "requirements.md") -> Requirements:
    """Read `Requirement N` sections (heading levels 2-4) with their user story and criteria."""
    lines = _lines(text)
    headings = _headings(lines)
    found = []
    for position, (index, level, title) in enumerate(headings):
        named = _requirement_heading(level, title)
        if not named:
            continue
        end = len(lines)
        for later_index, later_level, later_title in headings[position + 1:]:
            if later_level <= level or _requirement_heading(later_level, later_title):
                end = later_index
                break
        section = lines[index:end]
        found.append(Requirement(
            number=named.group("number"), title=named.group("title").strip(), line=index + 1,
            user_story=_user_story(section), criteria=_criteria(section, index + 1),
            text=_verbatim(section),
        ))
    return Requirements(path, text, tuple(found))


def _requirement_heading(level: int, title: str) -> Optional["re.Match[str]"]:
    """The match of a `Requirement N` heading title at levels 2-4, else None."""
    return _REQUIREMENT.match(title) if 2 <= level <= 4 else None


def _user_story(section: List[str]) -> Optional[str]:
    """The user-story paragraph of a requirement section, joined into one line."""
    for index, line in enumerate(section):
        story = _USER_STORY.match(line)
        if not story:
            continue
        parts = [story.group("text").strip()]
        for follow in section[index + 1:]:
            if not follow.strip() or _HEADING.match(follow) or _CRITERION.match(follow):
                break
            parts.append(follow.strip())
        return " ".join(p for p in parts if p) or None
    return None


def _criteria(section: List[str], first_line: int) -> Tuple[Criterion, ...]:
    """Numbered items under `Acceptance Criteria` (anywhere in the section if no such heading)."""
    start, end = 1, len(section)
    for index, line in enumerate(section[1:], 1):
        heading = _HEADING.match(line)
        if heading and _ACCEPTANCE.search(heading.group("title") or ""):
            start = index + 1
            end = next((i for i in range(start, len(section)) if _HEADING.match(section[i])),
                       len(section))
            break
    criteria = []
    current: Optional[List[str]] = None
    for index in range(start, end):
        line = section[index]
        item = _CRITERION.match(line)
        if item:
            current = [item.group("text").strip()]
            criteria.append((item.group("number"), first_line + index, current))
        elif current is not None and line.strip() and not _HEADING.match(line):
            current.append(line.rstrip())
        else:
            current = None  # a blank line or a heading ends the item
    return tuple(Criterion(number, "\n".join(parts), line) for number, line, parts in criteria)


# --- design.md --------------------------------------------------------------------------

@dataclass(frozen=True)
class Section:
    """A heading and the text up to the next heading of any level (level 0: the preamble)."""

    heading: str
    level: int
    line: int
    text: str


@dataclass(frozen=True)
class Design:
    """design.md cut into sections, so a prompt can carry only the relevant ones."""

    path: str
    text: str
    sections: Tuple[Section, ...]
    # The text as IGNORECASE sees it, for ASCII words: casefold also reads "\u017f" (long s)
    # as "s" and "\u212a" (Kelvin) as "k"; re equates dotless "\u0131" with "i" too.
    folded: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "folded", self.text.casefold().replace("\u0131", "i"))

    def relevant(self, words: Iterable[str]) -> List[Section]:
        """Sections that mention any of `words` as a whole token, in document order.

        Matching ignores case; "a.ts" matches "src/a.ts" but "1.1" does not match "11.1"
        or "1.10".
        """
        # A word the text does not even contain needs no pattern: on a large spec most
        # tasks' files are never named in design.md, and compiling a pattern for each of
        # them was most of the cost of building the prompts.
        present = (w.strip() for w in words if w and w.strip())
        patterns = [re.compile(r"(?<![\w.])" + re.escape(w) + r"(?!\w|\.\w)", re.I)
                    for w in present if not w.isascii() or w.lower() in self.folded]
        return [s for s in self.sections if any(p.search(s.text) for p in patterns)]


def parse_design(text: str, path: str = "design.md") -> Design:
    """Cut design.md into sections at every heading; text before the first is the preamble."""
    lines = _lines(text)
    starts = _headings(lines)
    sections = []
    first = starts[0][0] if starts else len(lines)
    if any(line.strip() for line in lines[:first]):
        sections.append(Section("", 0, 1, _verbatim(lines[:first])))
    for position, (index, level, title) in enumerate(starts):
        end = starts[position + 1][0] if position + 1 < len(starts) else len(lines)
        sections.append(Section(title, level, index + 1, _verbatim(lines[index:end])))
    return Design(path, text, tuple(sections))


# --- steering ---------------------------------------------------------------------------

@dataclass(frozen=True)
class SteeringDoc:
    """One `.claude/steering/*.md` file: project context given to every task."""

    name: str     # the file name without `.md`: "product", "tech", "structure"
    path: str
    text: str
