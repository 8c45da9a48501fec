"""qw.forkhost: what a run's workers and state owner already hold when the fork server
(Linux) forks them, so that no worker pays for an import in the middle of a child."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A fresh interpreter (with a fork server of its own, not pytest's) that finds qw the way
# qw.pyz's does, through sys.path and not its working directory: a process from the run's
# context reports what it found in place before importing anything itself.
FORKED = textwrap.dedent("""\
    import json, sys
    sys.path.insert(0, sys.argv[1])
    from qw.pool import process_context
    ctx = process_context()
    receive, send = ctx.Pipe(duplex=False)
    report = (
        "import os, sys\\n"
        "probe = sys.modules.get('qw.probe')\\n"
        "conn.send(dict(modules=[m for m in sys.modules if m.startswith(('qw.', 'psutil'))],"
        " probe=type(probe._SHARED[0]).__name__ if probe and probe._SHARED else None,"
        " pythonpath=os.environ.get('PYTHONPATH'),"
        " env=sorted(k for k in os.environ if k.startswith('QW_FORKHOST'))))\\n")
    process = ctx.Process(target=exec, args=(report, {"conn": send}))
    process.start()
    print(json.dumps(receive.recv()))
    process.join(60)
""")

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the fork server is Linux's")


def forked_report(cwd, pythonpath=None) -> dict:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    done = subprocess.run([sys.executable, "-c", FORKED, REPO], cwd=str(cwd), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@linux_only
@pytest.mark.parametrize("pythonpath", [None, "/nonexistent/lib"])
def test_a_forked_worker_starts_with_its_modules_and_the_probe_found(tmp_path, pythonpath):
    pytest.importorskip("psutil")
    found = forked_report(tmp_path, pythonpath)
    assert {"qw.worker", "qw.claude", "qw.outcome", "qw.proctree", "qw.stateowner",
            "qw.probe", "psutil"} <= set(found["modules"]), found
    # A worker's first sample of a child (USAGE_EVERY_S into it) finds the probe ready:
    # eight workers importing it at that moment held up the first children's ends.
    assert found["probe"] == "PsutilProbe", found
    # The environment the worker and its children see is the user's.
    assert (found["pythonpath"], found["env"]) == (pythonpath, []), found


@linux_only
def test_a_qw_in_the_working_directory_is_not_preloaded_in_its_place(tmp_path):
    (tmp_path / "qw").mkdir()
    (tmp_path / "qw" / "__init__.py").write_text("raise SystemExit('the wrong qw')\n")
    found = forked_report(tmp_path)
    assert "qw.worker" not in found["modules"], found
