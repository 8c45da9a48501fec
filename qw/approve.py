"""The approval gates and a spec's workflow state on disk (issue 8).

    .qw/state/<spec>.workflow.json   {"format": 1, "spec": ..., "approvals": {phase: {by, at,
                                     sha256}}, "tests": {passed, command, at},
                                     "description": the feature, as `qw new` was given it}

`qw approve SPEC [PHASE]` records who approved a document phase and when, and writes the
marker spec-workflow's dashboard reads: its parser (claude-code-spec-workflow,
src/dashboard/parser.ts) calls a document approved when its text includes `✅ APPROVED`.
qw appends one heading holding it, so the rest of the document stays byte for byte as it
was, and a heading ends the last requirement's or task's section: the marker never leaks
into a task's prompt. A document that already carries the marker is left alone; qw counts
it as approved either way.

`read_facts` gathers the `qw.phases.SpecFacts` of a spec from its folder and this state.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from dataclasses import dataclass, replace
from typing import Callable, Dict, Optional

from qw.errors import SpecError, StateError, UsageError
from qw.phases import (DESIGN, DOCUMENT_FILES, DOCUMENT_PHASES, INVALID, MISSING,
                       REQUIREMENTS, REVIEW_FILE, TASKS, VALID, SpecFacts, validate_document,
                       where)

MARKER = "\u2705 APPROVED"      # what the spec-workflow dashboard looks for
STATE_FORMAT = 1


@dataclass(frozen=True)
class ApprovalResult:
    spec: str
    phase: str
    document: str          # the approved document's path
    by: str
    at: str                # ISO 8601, UTC
    recorded: bool         # False: qw's state already held this approval
    marker_written: bool   # False: the document already carried the marker


def state_path(repo: str, spec: str) -> str:
    return os.path.join(repo, ".qw", "state", f"{spec}.workflow.json")


def read_state(repo: str, spec: str) -> dict:
    """The spec's workflow state ({} when there is none yet). StateError for a damaged file
    or one written by a newer qw."""
    path = state_path(repo, spec)
    try:
        with open(path, "rb") as handle:
            data = json.loads(handle.read().decode("utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise StateError(f"cannot read the workflow state ({error})", path,
                         "delete it to start the approvals over") from None
    if not isinstance(data, dict):
        raise StateError("the workflow state is not a JSON object", path,
                         "delete it to start the approvals over")
    if data.get("format", STATE_FORMAT) > STATE_FORMAT:
        raise StateError(f"the workflow state was written by a newer qw (format "
                         f"{data.get('format')})", path, "use that qw, or a newer one")
    return data


def update_state(repo: str, spec: str, change: Callable[[dict], None]) -> dict:
    """Apply `change` to the spec's workflow state and write it back atomically. Call it
    while holding the spec's lock (`.qw/locks/<spec>.lock`), as approve() and a workflow run
    do, so that two writers never lose each other's changes."""
    from qw.journal import atomic_write

    state = read_state(repo, spec)
    state.update(format=STATE_FORMAT, spec=spec)
    change(state)
    path = state_path(repo, spec)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write(path, (json.dumps(state, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    return state


def record_tests(repo: str, spec: str, passed: bool, command: Optional[str],
                 now: Optional[datetime.datetime] = None) -> None:
    """Record the outcome of the testing phase (command None: there was none to run, which
    counts as passed). For the workflow, while it holds the spec's lock."""
    at = _iso(now)
    update_state(repo, spec, lambda state: state.__setitem__(
        "tests", {"passed": bool(passed), "command": command, "at": at}))


def forget_tests(repo: str, spec: str) -> None:
    """Forget the testing phase's outcome (the code changed since: the tests must run
    again). For the workflow, while it holds the spec's lock."""
    update_state(repo, spec, lambda state: state.pop("tests", None))


def record_description(repo: str, spec: str, description: str) -> None:
    """Keep the feature description `qw new` was given: every document phase's prompt
    starts from it, in this run and in later `qw workflow` runs. Under the spec's lock."""
    update_state(repo, spec, lambda state: state.__setitem__("description", description))


def description_of(repo: str, spec: str) -> Optional[str]:
    """The description `qw new` recorded for the spec, or None (a spec written by hand)."""
    found = read_state(repo, spec).get("description")
    return found if isinstance(found, str) else None


def approvals(repo: str, spec: str) -> Dict[str, dict]:
    """{phase: {"by", "at", "sha256"}} of the approvals qw has recorded for the spec."""
    recorded = read_state(repo, spec).get("approvals")
    return dict(recorded) if isinstance(recorded, dict) else {}


def approve(repo: str, spec: str, phase: Optional[str] = None, who: Optional[str] = None,
            now: Optional[datetime.datetime] = None) -> ApprovalResult:
    """Approve a document phase of `spec` (requirements, design or tasks; default: the first
    whose document exists and is not approved yet): record it in qw's state and put the
    `✅ APPROVED` marker in the document. Idempotent.

    UsageError for an unknown spec or phase, or nothing left to approve; SpecError for a
    document that is missing or does not validate, or an earlier document not yet approved;
    LockHeld while a run holds the spec.
    """
    from qw.lock import SpecLock
    from qw.specdir import resolve_spec

    paths = resolve_spec(repo, spec)
    if phase is not None and phase not in DOCUMENT_PHASES:
        raise UsageError(f"unknown phase {phase!r}", f"qw approve {paths.name}",
                         "approve one of " + ", ".join(DOCUMENT_PHASES))
    lock = SpecLock(os.path.join(repo, ".qw", "locks", f"{paths.name}.lock"))
    with lock.acquire({"command": f"qw approve {paths.name}"}):
        return approve_locked(repo, paths, phase, who, now)


def approve_locked(repo: str, paths, phase: Optional[str] = None, who: Optional[str] = None,
                   now: Optional[datetime.datetime] = None) -> ApprovalResult:
    """approve() for a caller that holds the spec's lock already (a workflow approving
    each document as it validates, with --auto-approve); `paths` is its SpecPaths."""
    from qw.journal import atomic_write
    from qw.specdir import read_text

    spec = paths.name
    texts = {p: _read_optional(os.path.join(paths.dir, DOCUMENT_FILES[p]), read_text)
             for p in DOCUMENT_PHASES}
    recorded = approvals(repo, spec)
    done = set(recorded) | {p for p in DOCUMENT_PHASES
                            if texts[p] is not None and MARKER in texts[p]}
    if phase is None:
        phase = _default_phase(spec, texts, done)
    document = os.path.join(paths.dir, DOCUMENT_FILES[phase])
    _check_approvable(spec, phase, document, texts, done)
    text = texts[phase]
    recorded_before = recorded.get(phase)
    by = (recorded_before or {}).get("by") or who or _user()
    at = (recorded_before or {}).get("at") or _iso(now)
    marker_written = MARKER not in text
    if marker_written:
        atomic_write(document, with_marker(text, by, at).encode("utf-8"))
    if recorded_before is None:
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        update_state(repo, spec, lambda state: state.setdefault("approvals", {}).update(
            {phase: {"by": by, "at": at, "sha256": digest}}))
    return ApprovalResult(spec, phase, document, by, at, recorded=recorded_before is None,
                          marker_written=marker_written)


def with_marker(text: str, by: str, at: str) -> str:
    """`text` with the approval marker appended as a heading of its own; every byte of
    `text` kept (a missing final newline is added, in the file's own line ending)."""
    newline = "\r\n" if "\r\n" in text else "\n"
    if text and not text.endswith("\n"):
        text += newline
    when = at.replace("T", " ")[:16] + " UTC"
    by = " ".join(by.split()) or "unknown"   # one line, whatever the user name holds
    return f"{text}{newline}## {MARKER} by {by}, {when}{newline}"


def without_marker(text: str) -> str:
    """`text` with every line holding the approval marker removed (and the blank lines
    that then end it, down to one final newline): what a phase child may see of an approved
    document, and what may be put in place from a child's draft. Only a person (`qw
    approve`) or --auto-approve approves a document: a child that copied the marker into
    its draft must not approve it. A text without the marker comes back unchanged."""
    if MARKER not in text:
        return text
    lines = [line for line in text.splitlines(keepends=True) if MARKER not in line]
    while lines and not lines[-1].strip():
        lines.pop()
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\r\n" if "\r\n" in text else "\n"
    return "".join(lines)


def _read_optional(path: str, read_text) -> Optional[str]:
    return read_text(path) if os.path.lexists(path) else None


def _default_phase(spec: str, texts: Dict[str, Optional[str]], done: set) -> str:
    """The first document phase whose document exists and is not approved."""
    for phase in DOCUMENT_PHASES:
        if texts[phase] is not None and phase not in done:
            return phase
    if not any(text is not None for text in texts.values()):
        raise SpecError(f"spec {spec!r} has no documents to approve yet", f"qw approve {spec}",
                        f"write them first in .claude/specs/{spec}/")
    raise UsageError(f"every document of spec {spec!r} is approved already",
                     f"qw approve {spec}", f"carry on with `qw workflow {spec}`")


def _check_approvable(spec: str, phase: str, document: str,
                      texts: Dict[str, Optional[str]], done: set) -> None:
    text = texts[phase]
    if text is None:
        raise SpecError(f"there is no {DOCUMENT_FILES[phase]} to approve", document,
                        f"write it first: {document}")
    order = DOCUMENT_PHASES.index(phase)
    for earlier in DOCUMENT_PHASES[:order]:
        if texts[earlier] is not None and earlier not in done:
            raise SpecError(f"{DOCUMENT_FILES[earlier]} is not approved yet",
                            f"qw approve {spec} {phase}",
                            f"approve it first: `qw approve {spec} {earlier}`")
    problems = validate_document(phase, text, document, texts[REQUIREMENTS])
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise SpecError(f"{DOCUMENT_FILES[phase]} does not validate: {problems[0]}{more}",
                        document, f"fix it; `qw validate {spec}` lists every problem")


def read_facts(repo: str, spec: str, auto_approve: bool = False,
               quick: bool = False) -> SpecFacts:
    """The facts `qw.phases.where` needs about a spec, read from its folder and qw's state.
    A document that cannot be read counts as invalid; a damaged state as no approvals.

    `quick` (for `qw status`, which must stay fast on a 10,000-task spec): tasks.md counts
    as valid when its checkboxes can be read, without planning it or checking its
    references; the workflow itself always checks it fully before going on."""
    from qw.specdir import SPECS_DIR, read_text
    from qw.tasks import checkbox_marks

    folder = os.path.join(repo, SPECS_DIR, spec)
    if not os.path.isdir(folder):
        return SpecFacts(exists=False)
    try:
        state = read_state(repo, spec)
    except StateError:
        state = {}
    texts: Dict[str, Optional[str]] = {}
    documents: Dict[str, str] = {}
    for phase in DOCUMENT_PHASES:
        path = os.path.join(folder, DOCUMENT_FILES[phase])
        try:
            texts[phase] = _read_optional(path, read_text)
        except SpecError:
            texts[phase], documents[phase] = None, INVALID
            continue
        if texts[phase] is None:
            documents[phase] = MISSING
        elif phase == TASKS and quick:
            documents[phase] = VALID   # for now: read below only if it can matter
        else:
            problems = validate_document(phase, texts[phase], path, texts.get(REQUIREMENTS))
            documents[phase] = INVALID if problems else VALID
    recorded = state.get("approvals") if isinstance(state.get("approvals"), dict) else {}
    approved = {p for p in DOCUMENT_PHASES
                if p in recorded or (texts[p] is not None and MARKER in texts[p])}
    tests = state.get("tests") if isinstance(state.get("tests"), dict) else {}
    facts = SpecFacts(
        exists=True, requirements=documents[REQUIREMENTS], design=documents[DESIGN],
        tasks=documents[TASKS], approved=frozenset(approved), auto_approve=auto_approve,
        tests_passed=tests.get("passed") if isinstance(tests.get("passed"), bool) else None,
        review=os.path.isfile(os.path.join(folder, REVIEW_FILE)))
    if documents[TASKS] != VALID or where(facts).phase in (REQUIREMENTS, DESIGN):
        return facts   # an earlier phase holds the spec: tasks.md cannot change where it is
    try:   # one scan of the boxes: the fields are not needed
        marks = checkbox_marks(texts[TASKS], os.path.join(folder, DOCUMENT_FILES[TASKS]))
    except SpecError:   # quick: found only now
        return replace(facts, tasks=INVALID)
    return replace(facts, tasks=VALID if marks else INVALID,
                   tasks_done=all(mark == "x" for mark, _ in marks.values()))


def _user() -> str:
    import getpass   # here: `qw status` imports this module, and needs no user name

    try:
        return getpass.getuser()
    except Exception:  # no USER and no passwd entry (a bare container): still approvable
        return "unknown"


def _iso(now: Optional[datetime.datetime]) -> str:
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return now.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
