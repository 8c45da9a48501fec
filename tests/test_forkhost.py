"""qw.forkhost: what a run's workers and state owner already hold when the fork server
(Linux) forks them, so that no worker pays for an import in the middle of a child; and
that they see the run's sys.path and the user's environment all the same."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run as a script from a folder of its own, in a fresh interpreter (with a fork server of
# its own, not pytest's): it finds qw the way qw.pyz's does, through sys.path and not its
# working directory. A process from the run's context reports what it found in place
# before importing anything itself.
FORKED = textwrap.dedent("""\
    import json, sys
    REPORT = (
        "import os, sys\\n"
        "probe = sys.modules.get('qw.probe')\\n"
        "where = lambda name: getattr(sys.modules.get(name), '__file__', None)\\n"
        "conn.send(dict(modules=[m for m in sys.modules if m.startswith(('qw.', 'psutil'))],"
        " probe=type(probe._SHARED[0]).__name__ if probe and probe._SHARED else None,"
        " qw=where('qw'), queue=where('queue'), json=where('json'),"
        " pythonpath=os.environ.get('PYTHONPATH'),"
        " safepath=os.environ.get('PYTHONSAFEPATH'),"
        " env=sorted(k for k in os.environ if k.startswith('QW_FORKHOST'))))\\n")
    if __name__ == "__main__":
        sys.path.insert(0, sys.argv[1])
        from qw.pool import process_context
        ctx = process_context()
        receive, send = ctx.Pipe(duplex=False)
        process = ctx.Process(target=exec, args=(REPORT, {"conn": send}))
        process.start()
        if not receive.poll(60):
            raise SystemExit("no report from the forked process within 60 s")
        print(json.dumps(receive.recv()))
        process.join(60)
""")

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the fork server is Linux's")
WORKER_MODULES = {"qw.worker", "qw.claude", "qw.outcome", "qw.proctree", "qw.stateowner",
                  "qw.probe"}


def forked_report(tmp_path, cwd, pythonpath=None, flags=()) -> dict:
    script = tmp_path / "bin" / "forked.py"
    script.parent.mkdir(exist_ok=True)
    script.write_text(FORKED)
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    done = subprocess.run([sys.executable, *flags, str(script), REPO], cwd=str(cwd), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@linux_only
@pytest.mark.parametrize("pythonpath", [None, "/nonexistent/lib"])
def test_a_forked_worker_starts_with_its_modules_and_the_probe_found(tmp_path, pythonpath):
    pytest.importorskip("psutil")
    found = forked_report(tmp_path, tmp_path, pythonpath)
    assert WORKER_MODULES | {"psutil"} <= set(found["modules"]), found
    # A worker's first sample of a child (USAGE_EVERY_S into it) finds the probe ready:
    # eight workers importing it at that moment held up the first children's ends.
    assert found["probe"] == "PsutilProbe", found
    # The environment the worker and its children see is the user's.
    assert (found["pythonpath"], found["safepath"], found["env"]) == (pythonpath, None, []), \
        found


@linux_only
def test_files_in_the_working_directory_stand_in_for_nothing(tmp_path):
    # A repository may hold a queue.py or a json.py: the fork server, started there, must
    # still import the standard library's, as the run itself does.
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("queue", "json", "ast", "glob"):
        (repo / f"{name}.py").write_text("raise SystemExit('the wrong module')\n")
    found = forked_report(tmp_path, repo)
    assert WORKER_MODULES <= set(found["modules"]), found
    assert found["qw"].startswith(REPO), found
    assert not found["queue"].startswith(str(repo)), found    # qw.stateowner imports it
    assert not found["json"].startswith(str(repo)), found


@linux_only
def test_a_qw_in_the_working_directory_is_not_preloaded_in_place_of_this_one(tmp_path):
    repo = tmp_path / "repo"
    (repo / "qw").mkdir(parents=True)
    (repo / "qw" / "__init__.py").write_text("raise SystemExit('the wrong qw')\n")
    found = forked_report(tmp_path, repo)
    if sys.version_info >= (3, 11):   # PYTHONSAFEPATH: the working directory is not looked in
        assert WORKER_MODULES <= set(found["modules"]) and found["qw"].startswith(REPO), found
    else:   # the server would look there first: each process imports its own, from sys.path
        assert not WORKER_MODULES & set(found["modules"]), found


@linux_only
def test_without_the_environment_nothing_is_preloaded_and_nothing_leaks(tmp_path):
    # -E (or -I): the server, which inherits the flag, would ignore the PYTHONPATH it needs.
    found = forked_report(tmp_path, tmp_path, "/nonexistent/lib", flags=("-E",))
    assert not WORKER_MODULES & set(found["modules"]), found
    assert (found["pythonpath"], found["env"]) == ("/nonexistent/lib", []), found
