"""Starts a `spawn` child that calls proctree.start_parent_watch(exit), prints the child's
pid, then blocks on stdin until the test kills this process."""

import multiprocessing
import os
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from qw import proctree  # noqa: E402


def watched() -> None:
    proctree.start_parent_watch(lambda: os._exit(0))
    threading.Event().wait()


if __name__ == "__main__":
    process = multiprocessing.get_context("spawn").Process(target=watched)
    process.start()
    print(process.pid, flush=True)
    sys.stdin.read()
