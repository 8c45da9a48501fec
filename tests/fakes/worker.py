"""A stand-in for a qw worker: holds a supervised child tree, says "ready <guard pid>",
then blocks on its stdin until the test kills it (SIGKILL: no cleanup code of ours runs)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from qw import proctree  # noqa: E402

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "child.py")

child = proctree.start_child([sys.executable, CHILD, "orphans", "-"], env=dict(os.environ),
                             cwd=os.getcwd(), stdin_data=b"", grace=0.5)
line = child.read_line(30.0)
if line != b"ready\n":
    sys.exit("child did not start: %r %s" % (line, child.stderr_tail()))
print("ready", child.pid, flush=True)
sys.stdin.read()
