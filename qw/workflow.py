"""`qw new` and `qw workflow`: carry a spec from a description to a reviewed implementation
(issue 8).

    qw new SPEC "description"   requirements ─gate─► design ─gate─► tasks ─gate─►
    qw workflow SPEC            ... implementation (qw run) ─► testing ─► review ─► complete

Where a spec stands comes from the files alone (`qw.phases.where` over `read_facts`), so
every step is resumable: a command that stopped (a gate, a failure, Ctrl-C) is carried on by
the next `qw workflow`. The gates are the approvals of the three documents: without
--auto-approve (or `[workflow] auto_progression`) the workflow stops at each and says how to
approve; with it, qw approves each document once it validates. Implementation, testing and
review follow one another without a gate.

Each document phase is one claude child (qw.phaserun), whose document is validated
(qw.phases.validate_document); a document that does not validate is asked for again with its
problems listed, at most [run] max_retries more times. The design phase first asks the
analyst agents of `.claude/agents/` (an architect, a security reviewer), in parallel, for
notes, and gives them to the design's author. The workflow holds the spec's lock throughout,
`qw run`'s tasks included; tasks that ran make the tests and the review run again. No
phase child is shown an approval marker, and none a child writes is put in place: only a
person (or --auto-approve) approves.
"""

from __future__ import annotations

import os
import re
import shlex
import time
from typing import Callable, Dict, List, Optional, Tuple

from qw.errors import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_PAUSED, ConfigError,
                       StateError, UsageError)
from qw.phases import (APPROVE, COMPLETE, DESIGN, DOCUMENT_FILES, DOCUMENT_PHASES,
                       IMPLEMENTATION, REQUIREMENTS, REVIEW, REVIEW_FILE, STEERING, TESTING,
                       analyst_prompt, document_path, draft_path, is_analyst, next_command,
                       phase_prompt, validate_document, where)
from qw.specdir import read_if_present

AUTO_APPROVER = "qw (auto-approve)"
TESTER, REVIEWER = "tester", "reviewer"       # agents the workflow uses when they exist
# Each pass of the loop moves a spec at least one step on; more passes than there are steps
# means something keeps undoing them (a bug, or a person editing the documents meanwhile).
MAX_STEPS = 32
TEST_OUTPUT_LINES = 20     # of a failed test command's output, shown on the terminal
_SPEC_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_VERDICT = re.compile(r"^\W*verdict\W*:\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)
EXITED, TIMED_OUT, INTERRUPTED = "exited", "timed out", "interrupted"   # a test command

Say = Callable[[str], None]


def new_spec(repo: str, name: str, description: str, config, say: Say,
             auto_approve: bool = False) -> int:
    """`qw new`: create the spec's folder, record its description and write its documents,
    stopping at the first gate (or, auto-approved, before the implementation). The exit
    code. UsageError for a bad name, an empty description or a spec that has documents."""
    if not _SPEC_NAME.match(name or ""):
        raise UsageError(f"invalid spec name {name!r}", "qw new",
                         "use letters, digits, '.', '-' and '_', starting with a letter or "
                         "digit (e.g. user-auth)")
    if not description.strip():
        raise UsageError("the description is empty", f"qw new {name}",
                         f'say what to build: qw new {name} "what the feature does"')
    folder = os.path.join(repo, ".claude", "specs", name)
    existing = [f for f in list(DOCUMENT_FILES.values()) + [REVIEW_FILE]
                if os.path.lexists(os.path.join(folder, f))]
    if existing:
        raise UsageError(f"spec {name!r} exists already (it has {', '.join(existing)})",
                         folder, f"carry it on with `qw workflow {name}`, or choose another "
                         "name for a new spec")
    os.makedirs(folder, exist_ok=True)
    workflow = Workflow(repo, name, config, say, auto_approve, command="new")
    return workflow.advance(description=description, stop_before=IMPLEMENTATION)


def advance_spec(repo: str, name: str, config, say: Say, auto_approve: bool = False) -> int:
    """`qw workflow`: carry the spec from its phase on to the next gate, or with
    auto-approve to the end. The exit code (DESIGN §4)."""
    from qw.specdir import SPECS_DIR, resolve_spec

    paths = resolve_spec(repo, name)
    # The workflow's state, drafts and lock are named after the spec and its documents
    # live in .claude/specs/<name>/: a folder elsewhere would be read here, written there.
    if os.path.realpath(paths.dir) != os.path.realpath(os.path.join(repo, SPECS_DIR,
                                                                    paths.name)):
        raise UsageError(f"{name} is not a spec under {SPECS_DIR}/", "qw workflow",
                         f"the workflow carries on the specs of {SPECS_DIR}/: move it there "
                         "and give its name")
    return Workflow(repo, paths.name, config, say, auto_approve).advance()


class Workflow:
    """One `qw new` / `qw workflow` command on one spec."""

    def __init__(self, repo: str, spec: str, config, say: Say, auto_approve: bool,
                 command: str = "workflow"):
        from qw.lock import SpecLock

        self.repo, self.spec, self.config, self.say = repo, spec, config, say
        self.auto = auto_approve or config.workflow.auto_progression
        self.command = command
        self.lock = SpecLock(os.path.join(repo, ".qw", "locks", f"{spec}.lock"))
        self._session = None
        self.written: List[str] = []     # document phases written by this command
        self.signals: List[int] = []     # Ctrl-C / SIGTERM received outside a pool's run

    # ----- the loop

    def advance(self, description: Optional[str] = None,
                stop_before: Optional[str] = None) -> int:
        """Move the spec on until a gate, `stop_before`, completion or a failure. Ctrl-C
        or SIGTERM stops it at the next step (a test command is stopped): exit 130."""
        from qw.pool import stop_signals

        # Recorded, not raised: each step ends cleanly (its children stopped, the lock
        # released), and no next step starts.
        with stop_signals(self.signals):
            return self._advance(description, stop_before)

    def _advance(self, description: Optional[str], stop_before: Optional[str]) -> int:
        from qw.approve import read_facts, record_description

        self.lock.acquire({"command": f"qw {self.command} {self.spec}", "spec": self.spec})
        try:
            if description is not None:
                record_description(self.repo, self.spec, description)
            for _ in range(MAX_STEPS):
                if self.signals or (self._session is not None and self._session.interrupted):
                    self.say(f"interrupted; `qw workflow {self.spec}` carries on from here")
                    return EXIT_INTERRUPTED
                position = where(read_facts(self.repo, self.spec))
                phase = position.phase
                if phase == STEERING:
                    raise UsageError(f"unknown spec {self.spec!r}", "qw workflow",
                                     f'start it with `qw new {self.spec} "description"`')
                if phase == COMPLETE:
                    self.say(f"{self.spec} is complete: implemented, tested and reviewed "
                             f"({self._rel(self._spec_file(REVIEW_FILE))})")
                    return EXIT_OK
                if phase == stop_before:
                    self.say(f"the documents of {self.spec} are written and approved; next: "
                             f"{next_command(self.spec, phase)}")
                    return EXIT_OK
                if phase in DOCUMENT_PHASES and position.step == APPROVE:
                    if not self.auto:
                        self.say(self._gate(phase))
                        return EXIT_OK
                    self._approve(phase)
                    continue
                self.session   # the run folder, named before the step's own lines
                step = {IMPLEMENTATION: self._implement, TESTING: self._test,
                        REVIEW: self._review}.get(phase)
                code = step() if step else self._write_document(phase)
                if code != EXIT_OK:
                    return code
            raise StateError(f"the workflow of {self.spec} made no progress after "
                             f"{MAX_STEPS} steps", self._rel(self._spec_file("")),
                             f"check its documents, then run `qw workflow {self.spec}` again")
        finally:
            self.lock.release()
            if self._session is not None:
                self._session.close()

    @property
    def session(self):
        """The run folder and journal, made when the first child or test command needs it."""
        if self._session is None:
            from qw.phaserun import PhaseSession
            self._session = PhaseSession(self.repo, self.spec, self.config, self.say,
                                         command=self.command)
            self.say(f"workflow run {self._session.run_id}: transcripts in "
                     f"{self._rel(self._session.run_dir)}")
        return self._session

    def _gate(self, phase: str) -> str:
        name = DOCUMENT_FILES[phase]
        said = "written" if phase in self.written else "waits for approval"
        spec = shlex.quote(self.spec)
        return (f"{name} {said}; review it ({self._rel(self._spec_file(name))}), then "
                f"`qw approve {spec} {phase}` and `qw workflow {spec}`")

    def _approve(self, phase: str) -> None:
        from qw.approve import approve_locked
        from qw.specdir import resolve_spec

        approve_locked(self.repo, resolve_spec(self.repo, self.spec), phase, who=AUTO_APPROVER)
        self.say(f"approved {phase} ({DOCUMENT_FILES[phase]}): auto-approve")

    # ----- document phases

    def _write_document(self, phase: str) -> int:
        """Have a child write the phase's document (as a draft) until it validates, then
        put it in place; when the retries run out, exit 1 listing the problems."""
        from qw.approve import description_of
        from qw.phaserun import PhaseJob

        description = description_of(self.repo, self.spec)
        if description is None and phase == REQUIREMENTS:
            raise UsageError(f"spec {self.spec!r} has no description to write its "
                             "requirements from", "qw workflow",
                             f'give one: `qw new {self.spec} "what the feature does"` (or '
                             "write requirements.md yourself)")
        name = DOCUMENT_FILES[phase]
        path, draft = self._spec_file(name), self._draft(phase)
        documents = self._documents(phase)
        problems = self._problems(phase, path) if os.path.lexists(path) else None
        current = self._read_document(path) if problems else None
        if problems:
            self.say(f"{phase}: {name} does not validate: asking for it again")
        elif phase == DESIGN:
            code = self._fan_out(description or "", documents)
            if code != EXIT_OK:
                return code
        rounds = self.config.run.max_retries + 1
        for round_ in range(1, rounds + 1):
            if current is not None:
                documents = dict(documents, **{f"the current {name}": current})
            self._clear(draft)
            prompt = phase_prompt(phase, self.spec, description or "", documents, problems)
            self.say(f"{phase}: writing {name}"
                     + (f" (round {round_} of {rounds})" if round_ > 1 else ""))
            self.session.event("phase_started", phase=phase, round=round_)
            result = self._run_one(PhaseJob(phase, prompt))
            if not result.ok:
                self.session.event("phase_ended", phase=phase, status=result.kind,
                                   message=result.message)
                return self._failed(phase, result)
            problems = self._problems(phase, draft)
            self.session.event("phase_ended", phase=phase,
                               status="invalid" if problems else "ok", problems=problems,
                               cost_usd=result.cost_usd)
            if not problems:
                self._put_in_place(draft, path)
                self.written.append(phase)
                self.say(f"{phase}: {name} written and valid")
                return EXIT_OK
            current = self._read_document(draft)
            self.say(f"{phase}: {name} has {len(problems)} problem(s)"
                     + ("; asking again with them listed" if round_ < rounds else ""))
        for problem in problems or ():
            self.say(f"  {problem}")
        self.say(f"{phase}: gave up after {rounds} round(s); the last draft is "
                 f"{self._rel(draft)}: fix it and put it in place as {self._rel(path)}, or "
                 f"run `qw workflow {self.spec}` again")
        return EXIT_FAILED

    def _problems(self, phase: str, path: str) -> List[str]:
        """What is wrong with the phase's document (or draft) at `path`, a missing one
        included."""
        from qw.errors import SpecError
        from qw.specdir import read_text

        if not os.path.lexists(path):
            return [f"{DOCUMENT_FILES[phase]} was not written, {self._rel(path)}; write the "
                    "whole document to that path"]
        try:
            text = read_text(path)
        except SpecError as error:
            return [str(error)]
        requirements = read_if_present(self._spec_file(DOCUMENT_FILES[REQUIREMENTS]))
        return validate_document(phase, text, self._rel(path), requirements)

    def _fan_out(self, description: str, documents: Dict[str, str]) -> int:
        """Ask the analyst agents for notes, in parallel; add them to `documents`."""
        from qw.agents import load_agents
        from qw.phaserun import PhaseJob

        analysts = [a for name, a in load_agents(self.repo).items() if is_analyst(name)]
        if not analysts:
            return EXIT_OK
        self.say("design: asking " + ", ".join(a.name for a in analysts) + " for notes")
        self.session.event("phase_started", phase="analysis",
                           agents=[a.name for a in analysts])
        self.session.check_claude()
        jobs = [PhaseJob(a.name, analyst_prompt(a.name, self.spec, description, documents),
                         agent=a) for a in analysts]
        results = self.session.run(jobs)
        self.session.event("phase_ended", phase="analysis",
                           status={r.name: r.kind for r in results})
        if self.session.interrupted or self.session.paused:
            return self._failed("analysis", next((r for r in results if not r.ok),
                                                 results[0]))
        for result in results:
            if result.ok and result.text.strip():
                notes = os.path.join(self.session.run_dir, f"{result.name}.notes.md")
                with open(notes, "w", encoding="utf-8") as handle:
                    handle.write(result.text.strip() + "\n")
                documents[f"notes of the {result.name}"] = result.text
            else:   # the design can be written without them: say so and go on
                self.say(f"design: no notes from {result.name} ({result.message})")
        return EXIT_OK

    # ----- implementation, testing, review

    def _implement(self) -> int:
        """`qw run` the spec's tasks, under the workflow's own lock. Tasks that ran make
        the recorded test result and review stale: both are done again."""
        from qw.approve import read_facts
        from qw.journal import newest_run_of
        from qw.plan import build_plan
        from qw.runner import run_spec
        from qw.runstart import parked_tasks
        from qw.specdir import load_spec, resolve_spec

        self.session.event("phase_started", phase=IMPLEMENTATION)
        spec = load_spec(resolve_spec(self.repo, self.spec))
        plan = build_plan(spec.tasks, dependencies=self.config.plan.dependencies,
                          undeclared=self.config.plan.undeclared)
        pending = {t.id for t in plan.tasks if t.status != "done"}
        runs = pending - set(parked_tasks(plan, pending, asked=set()))
        self.say(f"implementation: qw run {self.spec}")
        code = run_spec(self.repo, spec, plan, self.config, lock=self.lock)
        if runs:
            self._forget_tests_and_review()
        status = {EXIT_OK: "ok", EXIT_PAUSED: "paused", EXIT_INTERRUPTED: "interrupted"}
        self.session.event("phase_ended", phase=IMPLEMENTATION,
                           status=status.get(code, "failed"), exit_code=code,
                           task_run=newest_run_of(os.path.join(self.repo, ".qw"), self.spec))
        if code != EXIT_OK:
            return code
        if not read_facts(self.repo, self.spec).tasks_done:
            self.say(f"implementation: tasks.md still has unchecked tasks (a blocked `[~]` "
                     f"one is not run); finish them, then `qw workflow {self.spec}`")
            return EXIT_FAILED
        return EXIT_OK

    def _forget_tests_and_review(self) -> None:
        """The code changed: the last test result no longer holds and the review is of
        older code, so neither counts (the review is kept in the run folder)."""
        from qw.approve import forget_tests, read_state

        review = self._spec_file(REVIEW_FILE)
        had_review = os.path.isfile(review)
        if had_review:
            kept = os.path.join(self.session.run_dir, "review.previous.md")
            os.replace(review, kept)
            self.say(f"implementation: tasks ran, so the tests and the review run again "
                     f"(the previous review: {self._rel(kept)})")
        if "tests" in read_state(self.repo, self.spec):
            forget_tests(self.repo, self.spec)
            if not had_review:
                self.say("implementation: tasks ran, so the tests run again")

    def _test(self) -> int:
        """The tester agent (when `.claude/agents/tester.md` exists), then the
        `[workflow] test_command`; the outcome is recorded either way."""
        from qw.agents import load_agents
        from qw.approve import description_of, record_tests
        from qw.durations import format_duration
        from qw.phaserun import PhaseJob

        tester = load_agents(self.repo).get(TESTER)
        if tester is not None:
            prompt = phase_prompt(TESTING, self.spec, description_of(self.repo, self.spec)
                                  or "", self._documents(TESTING))
            self.say(f"testing: the {TESTER} agent writes the missing tests")
            result = self._run_one(PhaseJob(TESTER, prompt, agent=tester))
            if not result.ok or self.session.interrupted:
                return self._failed(TESTING, result)
        command = self.config.workflow.test_command.strip()
        if not command:
            record_tests(self.repo, self.spec, True, None)
            self.session.event("phase_ended", phase=TESTING, status="skipped")
            self.say("testing: no [workflow] test_command is set, so there is nothing to "
                     "run; counted as passed (set one in qw.toml to run the tests)")
            return EXIT_OK
        ended, code, log = self._run_test_command(command)
        if ended == INTERRUPTED:
            self.session.event("phase_ended", phase=TESTING, status="interrupted",
                               exit_code=code, log=os.path.basename(log))
            self.say(f"testing: interrupted; `qw workflow {self.spec}` runs the tests again")
            return EXIT_INTERRUPTED
        passed = ended == EXITED and code == 0
        record_tests(self.repo, self.spec, passed, command)
        self.session.event("phase_ended", phase=TESTING, status="ok" if passed else
                           "timeout" if ended == TIMED_OUT else "failed", exit_code=code,
                           log=os.path.basename(log))
        if passed:
            self.say(f"testing: `{command}` passed (output in {self._rel(log)})")
            return EXIT_OK
        how = (f"was stopped after [run] timeout ({format_duration(self.config.run.timeout)})"
               if ended == TIMED_OUT else f"failed with exit code {code}")
        self.say(f"testing: `{command}` {how}; the end of its output ({self._rel(log)}):")
        for line in (read_if_present(log) or "").splitlines()[-TEST_OUTPUT_LINES:]:
            self.say(f"  {line}")
        self.say(f"fix the code (or the tests), then `qw workflow {self.spec}` runs them again")
        return EXIT_FAILED

    def _run_test_command(self, command: str) -> Tuple[str, Optional[int], str]:
        """Run the test command under supervision until it exits, [run] timeout passes or
        Ctrl-C/SIGTERM comes (then its tree is stopped, gracefully first): how it ended
        (EXITED, TIMED_OUT, INTERRUPTED), its exit code and its output file. Only EXITED
        with code 0 is a pass: a command stopped at its timeout may well exit 0 on SIGINT."""
        from qw.proctree import start_child
        from qw.worker import split_command

        try:
            argv = split_command(command)
        except ValueError as error:
            raise ConfigError(f"cannot split the test command ({error})",
                              "[workflow] test_command", "quote it as a shell would") from None
        if not argv:
            raise ConfigError("the test command is empty", "[workflow] test_command",
                              "give the command that runs the tests, e.g. \"pytest -q\"")
        session = self.session
        number, log = session.next_path(TESTING, "log")
        env = dict(os.environ, QW_RUN_ID=session.run_id, QW_TASK_ID=TESTING,
                   QW_ATTEMPT=str(number))
        session.event("phase_started", phase=TESTING, command=command,
                      log=os.path.basename(log))
        self.say(f"testing: {command}")
        try:
            child = start_child(argv, env=env, cwd=self.repo, stdin_data=b"")
        except OSError as error:
            raise ConfigError(f"cannot start the test command {argv[0]!r} "
                              f"({error.strerror or error})", "[workflow] test_command",
                              "give a command that exists on PATH") from None
        deadline = time.monotonic() + self.config.run.timeout
        ended, code, output_done = EXITED, None, False
        try:
            with open(log, "wb") as output:
                while code is None:
                    # Every pass, not only when the output pauses: a hung test can keep
                    # printing forever.
                    left = deadline - time.monotonic()
                    if self.signals or left <= 0:
                        ended = INTERRUPTED if self.signals else TIMED_OUT
                        session.interrupted = session.interrupted or ended == INTERRUPTED
                        output.write(b"\n[qw: interrupted]\n" if ended == INTERRUPTED
                                     else b"\n[qw: stopped after [run] timeout]\n")
                        code = child.stop()
                        break
                    if output_done:
                        code = child.wait(min(1.0, left))
                        continue
                    line = child.read_line(min(1.0, left))
                    if line == b"":
                        output_done = True
                    elif line is not None:
                        output.write(line)
                        output.flush()
                tail = child.stderr_tail()
                if tail:
                    output.write(b"\n--- stderr ---\n" + tail.encode("utf-8", "replace"))
        finally:
            child.close()
        return ended, code, log

    def _review(self) -> int:
        """The reviewer (`.claude/agents/reviewer.md`, else the built-in review prompt)
        writes review.md."""
        from qw.agents import load_agents
        from qw.approve import description_of, without_marker
        from qw.journal import atomic_write
        from qw.phaserun import PhaseJob

        reviewer = load_agents(self.repo).get(REVIEWER)
        path, draft = self._spec_file(REVIEW_FILE), self._draft(REVIEW)
        self._clear(draft)
        prompt = phase_prompt(REVIEW, self.spec, description_of(self.repo, self.spec) or "",
                              self._documents(REVIEW))
        self.say(f"review: {'the reviewer agent' if reviewer else 'a reviewer'} writes "
                 f"{document_path(self.spec, REVIEW)}")
        self.session.event("phase_started", phase=REVIEW)
        result = self._run_one(PhaseJob(REVIEW, prompt, agent=reviewer))
        if not result.ok:
            return self._failed(REVIEW, result)
        if os.path.isfile(draft):
            self._put_in_place(draft, path)
        elif result.text.strip():
            # It answered with the review instead of writing it: keep the answer.
            atomic_write(path, without_marker(result.text.strip() + "\n").encode("utf-8"))
        text = read_if_present(path)
        self.session.event("phase_ended", phase=REVIEW, status="ok" if text else "missing",
                           cost_usd=result.cost_usd)
        if not text:
            self.say(f"review: the reviewer wrote no {REVIEW_FILE} "
                     f"(transcript: {self._rel(result.transcript)}); run "
                     f"`qw workflow {self.spec}` again")
            return EXIT_FAILED
        verdict = _VERDICT.findall(text)
        self.say(f"review: {REVIEW_FILE} written"
                 + (f"; verdict: {verdict[-1]}" if verdict else ""))
        return EXIT_OK

    # ----- helpers

    def _run_one(self, job):
        self.session.check_claude()
        [result] = self.session.run([job])
        return result

    def _failed(self, phase: str, result) -> int:
        """Say how a phase's child ended; the exit code that follows from it."""
        where_ = f" (transcript: {self._rel(result.transcript)})" if result.transcript else ""
        if self.session.interrupted:
            self.say(f"{phase}: interrupted; `qw workflow {self.spec}` carries on from here")
            return EXIT_INTERRUPTED
        if self.session.paused:
            self.say(f"{phase}: paused: {result.message}")
            return EXIT_PAUSED
        self.say(f"{phase}: failed: {result.message}{where_}")
        return EXIT_FAILED

    def _documents(self, phase: str) -> Dict[str, str]:
        """The steering documents, then the spec's documents before `phase`, by name."""
        documents: Dict[str, str] = {}
        steering = os.path.join(self.repo, ".claude", "steering")
        try:
            names = sorted(n for n in os.listdir(steering) if n.endswith(".md"))
        except OSError:
            names = []
        for name in names:
            documents[f"steering/{name}"] = \
                self._read_document(os.path.join(steering, name)) or ""
        earlier = DOCUMENT_PHASES if phase not in DOCUMENT_PHASES else \
            DOCUMENT_PHASES[:DOCUMENT_PHASES.index(phase)]
        for document in earlier:
            text = self._read_document(self._spec_file(DOCUMENT_FILES[document]))
            if text is not None:
                documents[DOCUMENT_FILES[document]] = text
        return documents

    def _draft(self, phase: str) -> str:
        return os.path.join(self.repo, *draft_path(self.spec, phase).split("/"))

    def _put_in_place(self, draft: str, path: str) -> None:
        """The validated draft becomes the document (atomically), and the draft goes. A
        draft never carries an approval: an approval marker it holds is dropped."""
        from qw.approve import MARKER, without_marker
        from qw.journal import atomic_write

        with open(draft, "rb") as handle:
            data = handle.read()
        if MARKER.encode("utf-8") in data:
            data = without_marker(data.decode("utf-8", "surrogateescape")).encode(
                "utf-8", "surrogateescape")
        atomic_write(path, data)
        self._remove(draft)

    def _clear(self, draft: str) -> None:
        """No draft left from before (a killed run's), and its folder ready for the child."""
        self._remove(draft)
        os.makedirs(os.path.dirname(draft), exist_ok=True)

    @staticmethod
    def _remove(path: str) -> None:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass

    def _spec_file(self, name: str) -> str:
        return os.path.join(self.repo, ".claude", "specs", self.spec, name)

    def _rel(self, path: str) -> str:
        try:
            return os.path.relpath(path, self.repo)
        except ValueError:   # another drive (Windows)
            return path

    @classmethod
    def _read_document(cls, path: str) -> Optional[str]:
        """A document as a child may see it: without an approval marker, which a child
        could otherwise copy into its own draft."""
        from qw.approve import without_marker

        text = read_if_present(path)
        return None if text is None else without_marker(text)
