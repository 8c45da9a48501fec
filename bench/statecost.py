"""The cost of one state transition, for a spec of a given size (run by bench/run).

    python bench/statecost.py QW_PYZ TASKS EVENTS_PER_KIND

imports qw from QW_PYZ (as a user's qw.pyz has it), starts a run of TASKS tasks in a temp
.qw/ and records, for the first EVENTS_PER_KIND tasks, attempt_started, attempt_ended and
task_done: first straight into a StateStore (what the state owner does per event; CPU
time), then through the state owner process (what the runner waits for per event; wall
time). Prints one JSON object: per-event times in seconds (median, p99, mean) and the wall
time of one snapshot write.
"""

import json
import os
import statistics
import sys
import tempfile
import time


def events_for(tasks, now):
    for i in tasks:
        yield {"type": "attempt_started", "task": i, "attempt": 1, "worker": 1,
               "timeout_s": 1800.0, "t": now}
        yield {"type": "attempt_ended", "task": i, "attempt": 1, "outcome": "ok",
               "message": "", "cost_usd": 0.0, "exit_code": 0, "duration_s": 0.01,
               "session_id": "bench", "t": now}
        yield {"type": "task_done", "task": i, "t": now}


def summary(times):
    ordered = sorted(times)
    return {"median": statistics.median(ordered), "mean": statistics.mean(ordered),
            "p99": ordered[int(len(ordered) * 0.99) - 1] if len(ordered) > 1 else ordered[0]}


def main():
    pyz, n, per_kind = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    sys.path.insert(0, pyz)
    from qw.statestore import StateStore
    from qw.stateowner import start_owner

    ids = [str(i) for i in range(1, n + 1)]
    started = {"type": "run_started", "spec": "s", "pid": os.getpid(),
               "tasks": [[i, f"Task {i}"] for i in ids]}
    out = {"tasks": n, "events": 3 * per_kind}
    with tempfile.TemporaryDirectory(prefix="qw-bench-state-") as tmp:
        store = StateStore(os.path.join(tmp, "direct"), "s")
        store.load()
        store.record(dict(started, run_id="run-direct", t=time.time()))
        times = []
        for event in events_for(ids[:per_kind], time.time()):
            # CPU time, not wall: a busy machine's preemptions must not count as cost.
            t0 = time.process_time()
            store.record(event)
            times.append(time.process_time() - t0)
        out["direct"] = summary(times)
        t0 = time.perf_counter()
        store._dirty = True   # force one snapshot write, to time it
        store.flush()
        out["snapshot_s"] = time.perf_counter() - t0
        store.close()

        owner = start_owner(os.path.join(tmp, "owned"), "s", "run-owned",
                            [dict(started, run_id="run-owned", t=time.time())])
        try:
            times = []
            for event in events_for(ids[:per_kind], time.time()):
                t0 = time.perf_counter()
                owner.proxy.record(event)
                times.append(time.perf_counter() - t0)
            out["owner"] = summary(times)
        finally:
            owner.shutdown()
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
