"""One `qw run`: lock, state owner, pool, the dispatch loop, shutdown.

    runner (this process) ── the one loop that decides ──┐
       ├─ SpecLock .qw/locks/<spec>.lock                 │ Scheduler (pure) says what to start
       ├─ state owner process (journal + snapshot) ◄─────┤ every transition recorded there
       ├─ Pool: N workers ─► guard ─► claude -p          │ results and deaths come back here
       └─ RunReporter (terminal) ◄───────────────────────┘

Admission: while a worker is free and tasks are ready, the loop samples the machine (qw.probe,
at most every SAMPLE_EVERY_S) and the Scheduler decides whether it has room for each task
(qw.admission). A task held back is recorded `ready` with the reason (`task_waiting`), and
the run's output says so in one line whenever a new reason appears.

A signal handler only records the signal (and wakes the loop through a socket); the loop
acts on it. The first Ctrl-C/SIGTERM stops dispatching and cancels running attempts (each
child gets SIGINT, a grace period, SIGTERM, then SIGKILL); a second one kills every process
of the run at once. Either way the loop waits for the workers to report, so every attempt
ends in the journal, then tasks.md, the state and the terminal get the final word.

Nothing of a run outlives it: guards stop each child's tree, and as a last resort the
processes carrying the run's QW_RUN_ID marker are killed when it ends, and those of the
spec's previous run (killed, say, by SIGKILL) before the next one starts.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Dict, List, Optional, Set, Tuple

from qw import __version__
from qw.admission import Admission, Limits
from qw.agents import agent_of, load_agents
from qw.claude import build_command, build_env
from qw.debuglog import NullLog, open_log
from qw.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_PAUSED, SpecError
from qw.journal import new_run_id, newest_run_of
from qw.lock import SpecLock
from qw.outcome import INTERRUPTED, VERIFY_FAILED, Outcome, session_not_found
from qw.policy import run_exit_code
from qw.pool import Pool, stop_signals
from qw.proctree import kill_marked
from qw.prompt import build_fix_prompt, build_prompt
from qw.runreport import RunReporter
from qw.scheduler import DONE, PENDING, RUNNING, Scheduler
from qw.runstart import (check_claude_command, parked_tasks, sweep_previous_run,
                         wait_for_stale_owner)
from qw.stateowner import start_owner
from qw.tasksfile import OPEN, RunMarks, TasksFile, group_states, remove_stale_temps
from qw.tasksfile import DONE as MARK_DONE, RUNNING as MARK_RUNNING
from qw.treewatch import change_pathspecs
from qw.worker import AttemptRequest, AttemptResult, Progress, verify_argv

LOOP_TICK_S = 0.5        # longest the loop sleeps without looking at the clock
# How old a machine snapshot may be for admission. The 1-minute load moves slowly and a
# sample costs a file read or two; tasks waiting for room are looked at every tick.
SAMPLE_EVERY_S = 1.0
GRACE_S = 5.0            # SIGINT -> SIGTERM -> SIGKILL spacing for a child tree
# After a second Ctrl-C every process of the run is killed; the workers report within
# moments. Past this bound the run ends without them (their pipes close, they exit).
KILLED_REPORT_S = 10.0
# The summary's `stopped:` line when Ctrl-C/SIGTERM came only after the last attempt ended.
LATE_INTERRUPT = "interrupted as the run was ending, after its last attempt: nothing " \
                 "was cancelled"


def run_spec(repo: str, spec, plan, config, only: Optional[List[str]] = None,
             json_output: bool = False, lock: Optional[SpecLock] = None) -> int:
    """Run the spec's pending tasks (or `only` those and their unfinished prerequisites).
    `lock`: the spec's lock, which the caller holds already (a workflow): then run_spec
    neither takes nor releases it."""
    qw_dir = os.path.join(repo, ".qw")
    done = {t.id for t in plan.tasks if t.status == "done"}
    targets = plan.closure(only) if only else [t.id for t in plan.tasks]
    targets = [t for t in targets if t not in done]
    reporter = RunReporter(spec.name, json_output=json_output)
    parked = parked_tasks(plan, set(targets), asked=set(only or ()))
    if parked:
        targets = [t for t in targets if t not in parked]
        reporter.note("not running " + "; ".join(
            f"{tid} ({reason})" for tid, reason in parked.items())
            + ": change [~] to [ ] in tasks.md (or name it with --task) to run it")
    if only:
        extra = [t for t in targets if t not in set(only)]
        if extra:
            reporter.note(f"--task also runs unfinished prerequisites: {', '.join(extra)}")
    if not targets:
        reporter.note("nothing to do: every task asked for is already checked in tasks.md"
                      if not parked else "nothing else to run")
        return EXIT_OK

    check_claude_command(repo, config)
    agents = load_agents(repo)
    by_id = {t.id: t for t in plan.tasks}
    for tid in targets:
        agent_of(by_id[tid], agents, spec.paths.tasks)   # an unknown agent: refuse up front
        verify_argv(by_id[tid], config.run, spec.paths.tasks)   # so is an unclosed quote
    os.makedirs(os.path.join(qw_dir, "locks"), exist_ok=True)
    run_id = new_run_id(time.time())
    owned = lock is None
    if owned:
        lock = SpecLock(os.path.join(qw_dir, "locks", f"{spec.name}.lock"))
        lock.acquire({"pid": os.getpid(), "run_id": run_id, "argv": sys.argv,
                      "spec": spec.name, "qw": __version__})
    try:
        wait_for_stale_owner(qw_dir, spec.name)
        remove_stale_temps(spec.paths.tasks)   # a killed run's half-written tasks.md
        previous = newest_run_of(qw_dir, spec.name)
        if previous:
            sweep_previous_run(previous, reporter)
        return _Run(repo, qw_dir, run_id, spec, plan, config, targets, done, agents,
                    reporter).execute()
    finally:
        if owned:
            lock.release()


class _Run:
    def __init__(self, repo, qw_dir, run_id, spec, plan, config, targets, done, agents,
                 reporter):
        self.repo, self.qw_dir, self.run_id = repo, qw_dir, run_id
        self.spec, self.plan, self.config = spec, plan, config
        self.reporter = reporter
        self.run_dir = os.path.join(qw_dir, "runs", run_id)
        self.agents = agents
        self.tasks_file = TasksFile(spec.paths.tasks)   # remembers its own last write
        # Whether a child changed anything is looked for in the files its task declares,
        # else in the whole tree but these, qw's own (where another task running at the
        # same time can hide that one changed nothing: the flag is a hint, never a verdict).
        try:
            tasks_md = os.path.relpath(spec.paths.tasks, repo).replace(os.sep, "/")
        except ValueError:   # on another drive (Windows): outside the tree anyway
            tasks_md = ""
        self.own_files = (".qw", tasks_md)
        self.marks = RunMarks(self.tasks_file, plan.ancestors, plan.groups,
                              config.spec.mark_in_progress)
        self.unticked: List[str] = []   # done, task_done not journaled: tasks.md first
        # --debug / QW_DEBUG=1 / [logging] level = "debug": every transition, one JSON line.
        self.debug = open_log(config, qw_dir, run_id)
        self.debugging = not isinstance(self.debug, NullLog)
        # The children's environment starts from qw's own, as the run started: a plain
        # copy, because building one from os.environ for each attempt decodes every
        # variable again.
        self.environ = dict(os.environ)
        self.by_id = {t.id: t for t in spec.tasks}
        timeouts = {t: self.by_id[t].timeout_s for t in targets
                    if self.by_id[t].timeout_s is not None}
        self.sched = Scheduler(
            plan, targets, done, config.run, timeouts=timeouts,
            admission=Admission(Limits.from_config(config.resources)),
            agents={t: self.by_id[t].agent for t in targets})
        self.probe = None                          # qw.probe's, once the run starts
        self.snapshot = None                       # the machine, last sampled at:
        self.sampled_at = float("-inf")            # (monotonic)
        self.waiting_kinds: Dict[str, str] = {}    # task -> the hold kind recorded
        self.kinds_shown: Set[str] = set()         # hold kinds the output has named
        self.signals: List[int] = []               # Ctrl-C/SIGTERM received, not yet acted on
        self.code: Optional[int] = None            # the run's exit code, once it has one
        self.interrupts = 0
        self.killed_at: Optional[float] = None     # monotonic time of the second Ctrl-C
        self.cancelled: Set[Tuple[str, int]] = set()
        self.launches: Dict[str, int] = {}         # attempts started per task, this run
        # task -> (session id, verify command, its exit code, its output's tail) of the
        # task's last attempt whose verify failed: the attempts after it resume that
        # session (None: start a new one) to fix it, until one passes or the task fails.
        self.fixes: Dict[str, Tuple[Optional[str], str, Optional[int], str]] = {}
        self.owner = None
        self.pool: Optional[Pool] = None
        # Events and progress gathered during one loop iteration, sent to the state owner
        # in one call (_flush) instead of one round trip each.
        self.unsent: List[dict] = []
        self.unsent_progress: Dict[str, dict] = {}   # task -> its latest progress
        self.deferred = False   # _wait left them unsent for a pass: events were waiting

    # ----- the run

    def execute(self) -> int:
        os.makedirs(self.run_dir, exist_ok=True)
        with stop_signals(self.signals) as wake_r:
            self._execute(wake_r)
        # A Ctrl-C/SIGTERM after _finish looked, up to the moment the handlers the run
        # started with came back: every task had ended, so nothing is undone, but whoever
        # pressed it is told the run was interrupted.
        if self.signals and self.code not in (None, EXIT_INTERRUPTED):
            self.code = EXIT_INTERRUPTED
            self.reporter.note(f"stopped: {LATE_INTERRUPT}")
        return self.code

    def _execute(self, wake_r) -> None:
        try:
            # No more workers than tasks: one beyond that could never be given work, and
            # each is a process to start (DESIGN §8: qw's own cost must vanish). They start
            # first: the state owner is started the same way (qw.pool.process_context).
            self.workers = min(self.config.run.max_concurrent, len(self.sched.targets))
            self.pool = Pool(self.workers, extra_fds=(wake_r,))
            self.pool.start()
            self.owner = start_owner(self.qw_dir, self.spec.name, self.run_id,
                                     [self._run_started_event()],
                                     tasks_path=self.spec.paths.tasks, ctx=self.pool.ctx)
            for warning in self.owner.warnings:
                self.reporter.note(warning)
            # What earlier runs measured: the memory estimates start from it.
            self.sched.admission.restore(self.owner.proxy.view().get("memory_peaks") or {})
            from qw.probe import shared_probe
            self.probe = shared_probe()
            self._record_initial()
            self.reporter.started(self.run_id, len(self.sched.targets),
                                  self.workers)
            self._loop(wake_r)
            self._abandon_unreported()
            self._stop_pool()
            self.code = self._finish()
        finally:
            self._stop_pool()
            if self.owner is not None:
                try:
                    self._flush()   # after an error, what was gathered still counts
                except Exception as error:   # the run already failed; keep its own error
                    self.debug.exception("events not recorded", error)
                finally:
                    self.owner.shutdown()
            self.debug.close()

    def _loop(self, wake_r) -> None:
        while True:
            self._take_signals()
            self._cancel_if_asked()
            now = time.time()
            # The results of the last pass start what they freed first (tasks.md is
            # written first only for what a starting task needs), then tasks.md.
            self._dispatch(now)
            self._write_marks()   # once for every result of the last pass
            if self.sched.finished() or (self.killed_at is not None and
                                         time.monotonic() - self.killed_at > KILLED_REPORT_S):
                self._flush()
                return
            wakeup = self.sched.next_wakeup(now)
            timeout = LOOP_TICK_S if wakeup is None else max(0.0, min(LOOP_TICK_S, wakeup - now))
            if self.marks.dirty:   # a tasks.md write postponed by its spacing
                timeout = min(timeout, max(0.0, self.marks.not_before - time.monotonic()))
            for kind, worker_id, payload in self._wait(timeout):
                if kind == "wakeup":
                    try:
                        wake_r.recv(64)
                    except OSError:
                        pass
                elif kind == "died":
                    self._worker_died(worker_id, payload)
                elif isinstance(payload, Progress):
                    self._observe(payload)
                    self.unsent_progress[payload.task_id] = payload.info
                    self.reporter.progress(payload.task_id, payload.info)
                elif isinstance(payload, AttemptResult):
                    self._settle(payload)
            self.reporter.tick(self.sched)

    def _wait(self, timeout: float) -> list:
        """The pool's next events, within `timeout`. Before the loop blocks, what it
        gathered goes to the state owner. When events are waiting already, it goes with
        the next pass's dispatch instead (one round trip where there were two), but it
        waits no longer than that one pass, so a steady stream of messages holds nothing
        back."""
        if self.unsent or self.unsent_progress:
            if not self.deferred:
                events = self.pool.wait(0)
                if events:
                    self.deferred = True
                    return events
            self._flush()
        return self.pool.wait(timeout)

    def _take_signals(self) -> None:
        """Act on Ctrl-C/SIGTERM: the first stops the run, the second kills its processes."""
        count = len(self.signals)
        del self.signals[:count]
        for _ in range(count):
            self.interrupts += 1
            if self.interrupts == 1:
                self.sched.interrupt()
                self.reporter.note("stopping: cancelling running tasks "
                                   "(press Ctrl-C again to stop at once)")
            elif self.interrupts == 2:
                self.reporter.note("stopping at once: killing every process of the run")
                self.killed_at = time.monotonic()
                kill_marked(self.run_id)

    def _cancel_if_asked(self) -> None:
        """Cancel each running attempt once when the scheduler says running work must stop."""
        if not self.sched.cancel_running:
            return
        for worker_id, request in self.pool.busy().items():
            key = (request.task_id, request.attempt)
            if key not in self.cancelled:
                self.cancelled.add(key)
                self.pool.cancel(worker_id, self.sched.stop_reason or INTERRUPTED)

    def _dispatch(self, now: float) -> None:
        was_paused = self.sched.paused_until is not None
        idle = self.pool.idle()
        dispatches = self.sched.dispatch(now, len(idle), self._sample() if idle else None)
        self._record_waiting(self.sched.waiting, {d.task_id for d in dispatches})
        if was_paused and self.sched.paused_until is None:
            self._record({"type": "run_paused", "until": None})
            self.reporter.note("pause over: starting tasks again")
        if not dispatches:
            return
        in_progress = self.config.spec.mark_in_progress
        if in_progress:
            for d in dispatches:
                self.marks.changed(d.task_id, MARK_RUNNING)
        # `[-]` before the children start; and a task starts only once what it needs is
        # `[x]` in tasks.md, spacing or not: if qw is killed right after, the next run
        # must not run that again (tasks.md is what it goes by).
        if in_progress or self._needs_unwritten(dispatches):
            self._write_marks(force=True)
        starts = []
        for d in dispatches:
            worker_id = idle.pop(0)
            task = self.by_id[d.task_id]
            self.launches[d.task_id] = self.launches.get(d.task_id, 0) + 1
            req = self._request(task, d.attempt, d.timeout_s, self.launches[d.task_id])
            self._record({"type": "attempt_started", "task": d.task_id, "attempt": d.attempt,
                          "worker": worker_id, "timeout_s": d.timeout_s})
            starts.append((worker_id, req, task))
        self._flush()   # every attempt_started is in the journal before its child starts
        for worker_id, req, task in starts:
            self.pool.submit(worker_id, req)
            self.reporter.attempt_started(req.task_id, req.attempt, worker_id, task.title)

    def _needs_unwritten(self, dispatches) -> bool:
        """Whether a task about to start depends on one whose `[x]` is not written yet."""
        dirty = self.marks.dirty
        return bool(dirty) and any(
            dirty.get(leaf) == MARK_DONE
            for d in dispatches for dep in self.plan.deps.get(d.task_id, ())
            for leaf in self.plan.groups.get(dep, (dep,)))

    def _sample(self):
        """The machine as of at most SAMPLE_EVERY_S ago (None: no probe, or it failed)."""
        if self.probe is None or time.monotonic() - self.sampled_at < SAMPLE_EVERY_S:
            return self.snapshot
        self.sampled_at = time.monotonic()
        try:
            self.snapshot = self.probe.snapshot()
        except (OSError, ValueError) as error:   # e.g. /proc unreadable in a sandbox
            self.reporter.note(f"cannot read the machine's load and memory ({error}); "
                               "starting tasks without [resources] limits")
            self.probe = self.snapshot = None
        return self.snapshot

    def _record_waiting(self, waiting, started: Set[str]) -> None:
        """Record each ready task held back, when its reason's kind changes, and tasks that
        no longer wait (and did not start) as pending again; one output line per newly
        appearing kind of reason."""
        for tid in list(self.waiting_kinds):
            if tid not in waiting:
                del self.waiting_kinds[tid]
                if tid not in started:   # attempt_started itself ends the wait
                    self._record({"type": "task_waiting", "task": tid, "reason": None})
        by_kind: Dict[str, List[str]] = {}
        for tid, hold in waiting.items():
            by_kind.setdefault(hold.kind, []).append(tid)
            if self.waiting_kinds.get(tid) != hold.kind:
                self.waiting_kinds[tid] = hold.kind
                self._record({"type": "task_waiting", "task": tid, "reason": hold.reason})
        for kind, tids in by_kind.items():
            if kind not in self.kinds_shown:
                self.reporter.waiting(tids, waiting[tids[0]].reason)
        self.kinds_shown = set(by_kind)

    def _observe(self, progress: Progress) -> None:
        """A running attempt's tree size, for the memory it may still take."""
        rss = progress.info.get("rss_mb")
        if isinstance(rss, (int, float)) and \
                self.sched.attempts.get(progress.task_id) == progress.attempt:
            self.sched.observe(progress.task_id, float(rss))

    def _request(self, task, attempt: int, timeout_s: float, launch: int) -> AttemptRequest:
        agent = agent_of(task, self.agents, self.spec.paths.tasks)
        fix = self.fixes.get(task.id)   # an earlier attempt's verify failed, still unfixed
        session = fix[0] if fix else None
        argv = build_command(self.config.claude, agent=agent,
                             agents=[agent] if agent else (), resume_session=session)
        prompt = build_fix_prompt(self.spec, task, *fix[1:], resumed=session is not None) \
            if fix else build_prompt(self.spec, task)
        env = build_env(self.environ, self.config.claude, run_id=self.run_id,
                        task_id=task.id, attempt=attempt)
        verify, command = verify_argv(task, self.config.run, self.spec.paths.tasks)
        # Transcripts are numbered by start, which a usage-limited attempt (not counted
        # against the task) also is: `qw status` attempts and `qw logs --attempt` agree.
        stem = os.path.join(self.run_dir, f"{task.id}.{launch}")
        return AttemptRequest(
            task_id=task.id, attempt=attempt, argv=tuple(argv), env=env, cwd=self.repo,
            prompt=prompt,
            timeout_s=timeout_s, idle_timeout_s=self.config.run.idle_timeout,
            transcript=stem + ".jsonl", grace_s=GRACE_S,
            verify_argv=verify, verify_command=command,
            verify_timeout_s=self.config.run.verify_timeout, verify_log=stem + ".verify.log",
            watch=change_pathspecs(task.files, self.own_files))

    def _worker_died(self, worker_id: int, request: Optional[AttemptRequest]) -> None:
        self.debug.debug("worker died", worker=worker_id, pid=None,
                         task_id=request.task_id if request else None,
                         attempt=request.attempt if request else None)
        self.reporter.note(f"worker {worker_id} died"
                           + (f" while running {request.task_id}" if request else "")
                           + "; started a new one")
        if request is None:
            return
        now = time.time()
        kind = INTERRUPTED if self.sched.interrupted else "crashed"
        self._settle(AttemptResult(
            request.task_id, request.attempt,
            Outcome(kind, f"worker {worker_id} died while running {request.task_id}"),
            None, now, now))

    def _settle(self, result: AttemptResult) -> None:
        """Apply one finished attempt: scheduler decision, tasks.md, journal, terminal."""
        tid = result.task_id
        outcome = result.outcome
        self._record({"type": "attempt_ended", "task": tid, "attempt": result.attempt,
                      "outcome": outcome.kind, "message": outcome.message,
                      "cost_usd": outcome.cost_usd, "exit_code": result.exit_code,
                      "duration_s": round(result.ended_at - result.started_at, 3),
                      "session_id": outcome.session_id, "peak_rss_mb": result.peak_rss_mb,
                      "cpu_s": result.cpu_s, "agent": self.by_id[tid].agent,
                      **({"changed_nothing": True} if result.changed_nothing else {}),
                      **({"input_tokens": result.tokens[0], "output_tokens": result.tokens[1]}
                         if result.tokens else {})})
        settled = self.sched.settle(tid, outcome, time.time(), result.peak_rss_mb)
        decision = settled.decision
        state = self.sched.state[tid]
        self._update_fix(result, state)
        # tasks.md is written for every result of a loop pass at once (_write_marks), and
        # task_done journaled after it.
        self.marks.changed(tid, MARK_DONE if state == DONE else OPEN)
        for skipped in settled.skipped:
            self.marks.changed(skipped, OPEN)
        if state == DONE:
            self.unticked.append(tid)
        elif state == PENDING:
            if decision.action == "retry" and self.sched.stop_reason is None:
                self._record({"type": "retry_scheduled", "task": tid,
                              "not_before": decision.not_before, "reason": decision.reason})
            else:
                self._record({"type": "task_status", "task": tid, "status": "pending",
                              "reason": decision.reason})
            if decision.action == "pause":
                self._record({"type": "run_paused", "until": self.sched.paused_until,
                              "reason": decision.reason})
        else:
            self._record({"type": "task_failed", "task": tid,
                          "error": decision.reason or outcome.message})
        for skipped in settled.skipped:
            self._record({"type": "task_status", "task": skipped, "status": "skipped",
                          "reason": f"needs {tid}, which failed"})
        self.reporter.attempt_ended(result, settled, self.sched)

    def _update_fix(self, result: AttemptResult, state: str) -> None:
        """Keep the task's fix context (self.fixes) until it is resolved: a new verify
        failure replaces it, the end of the task (done, failed) drops it, and a retry that
        ended another way (rate limit, crash, timeout, pause, Ctrl-C) leaves it for the
        next attempt, which starts a new session with it when the old one is gone."""
        tid, outcome = result.task_id, result.outcome
        if state != PENDING:
            self.fixes.pop(tid, None)
        elif outcome.kind == VERIFY_FAILED:
            command = verify_argv(self.by_id[tid], self.config.run, self.spec.paths.tasks)[1]
            self.fixes[tid] = (outcome.session_id, command, result.verify_exit_code,
                               result.verify_tail)
        elif tid in self.fixes and session_not_found(outcome):
            self.fixes[tid] = (None,) + self.fixes[tid][1:]

    def _abandon_unreported(self) -> None:
        """Attempts whose workers never reported after the run's processes were killed:
        they end as interrupted, so the next run starts them again."""
        now = time.time()
        for worker_id, request in self.pool.busy().items():
            self._settle(AttemptResult(request.task_id, request.attempt, Outcome(
                INTERRUPTED, f"worker {worker_id} did not report after the run was stopped"),
                None, now, now))

    def _stop_pool(self) -> None:
        """Stop the workers, then sweep for anything of this run that escaped its guard."""
        if self.pool is None:
            return
        pool, self.pool = self.pool, None
        pool.shutdown(timeout=GRACE_S * 2 + 5)
        strays = kill_marked(self.run_id)
        if strays:
            self.reporter.note(f"killed {len(strays)} process{'es' if len(strays) > 1 else ''}"
                               f" of this run left behind: {', '.join(map(str, strays))}")

    def _finish(self) -> int:
        sched = self.sched
        # A Ctrl-C/SIGTERM that came after the loop last looked (with the last result, or
        # while the pool stopped): nothing was left to cancel, and what finished stays
        # finished, but the run ends as interrupted.
        late = bool(self.signals) and not sched.interrupted
        code = run_exit_code(sched, signalled=late)
        reason = sched.stop_reason or (LATE_INTERRUPT if late else None)
        self._sync_marks()
        self._record_waiting({}, set())   # nothing waits once the run is over
        self._record({"type": "run_ended", "status": _status_word(code), "exit_code": code,
                      "reason": reason})
        self._flush()
        self._write_report()
        view = dict(self.owner.proxy.view(), live=False)   # the run has ended
        self.reporter.finished(view, code, reason)
        return code

    # ----- state and files

    def _write_report(self) -> None:
        """`.qw/runs/<run>/report.html`, the run's timeline for whoever reads it tomorrow;
        a report that cannot be written is noted, and the run's result stands."""
        from qw.htmlreport import write_report

        try:
            write_report(self.qw_dir, self.run_id)
        except (OSError, ValueError) as error:
            self.debug.exception("report not written", error)
            self.reporter.note(f"could not write the run's report.html: {error}")

    def _run_started_event(self) -> dict:
        return {"type": "run_started", "t": time.time(), "run_id": self.run_id,
                "spec": self.spec.name, "pid": os.getpid(),
                "max_concurrent": self.config.run.max_concurrent,
                "tasks": [[t.id, t.title] for t in self.plan.tasks]}

    def _record_initial(self) -> None:
        for tid in self.sched.done:
            if tid in self.by_id:
                self._record({"type": "task_status", "task": tid, "status": "done",
                              "reason": "checked in tasks.md"})

    def _record(self, event: dict) -> None:
        event.setdefault("t", time.time())
        if self.debugging:
            extra = {k: v for k, v in event.items() if k not in ("type", "task", "attempt")}
            self.debug.debug(event["type"], task_id=event.get("task"),
                             attempt=event.get("attempt"), **extra)
        self.unsent.append(event)

    def _flush(self) -> None:
        """Send the gathered progress and events to the state owner in one call."""
        if not self.unsent and not self.unsent_progress:
            return
        events, self.unsent = self.unsent, []
        progress, self.unsent_progress = list(self.unsent_progress.items()), {}
        self.deferred = False
        self.owner.proxy.record_many(events, progress)

    def _write_marks(self, force: bool = False) -> None:
        """Tick tasks.md for the tasks whose state changed, when its spacing allows (or
        `force`), then journal their task_done. The journal holds each success before
        tasks.md ticks it, and tasks.md before task_done: a crash between the two leaves
        tasks.md ahead of the journal (the next run skips a checked task), never behind it
        (it would run a done task again)."""
        now = time.monotonic()
        if not self.marks.dirty or not (force or self.marks.due(now)):
            return
        self._flush()
        try:
            self.marks.write(self.sched.done, now)
        except (SpecError, OSError) as error:   # the next write, or the final one, retries
            self.debug.exception("tasks.md not written", error)
        self._record_ticked()

    def _sync_marks(self) -> None:
        """The run's last word in tasks.md: every task's box (and its groups') says what
        the scheduler knows, and what could not be written is reported."""
        self._flush()
        kinds = {DONE: MARK_DONE, RUNNING: MARK_RUNNING}
        states = {tid: kinds.get(s, OPEN) for tid, s in self.sched.state.items()}
        states.update(group_states(self.plan.groups, states, self.sched.done))
        try:
            result = self.tasks_file.sync(states, final=True,
                                          in_progress=self.config.spec.mark_in_progress)
        except (SpecError, OSError) as error:
            self.reporter.note(f"could not update tasks.md ({error}); done in this run: "
                               f"{', '.join(sorted(self.sched.done)) or 'nothing'}")
            return
        finally:
            self._record_ticked()
        if result.missing:
            self.reporter.note(f"tasks.md no longer has task {', '.join(result.missing)}; "
                               "its checkbox was not written")

    def _record_ticked(self) -> None:
        for tid in self.unticked:
            self._record({"type": "task_done", "task": tid})
        self.unticked = []


def _status_word(code: int) -> str:
    return {EXIT_OK: "done", EXIT_FAILED: "failed", EXIT_PAUSED: "paused",
            EXIT_INTERRUPTED: "interrupted"}.get(code, "ended")
