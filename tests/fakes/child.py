"""A stand-in for `claude -p` in process-tree tests: one behaviour per mode.

    child.py lines N CODE    print "line 0" .. "line N-1", exit CODE
    child.py sleep           print "ready", wait for a signal (SIGINT ends it as usual)
    child.py ignore          ignore SIGINT and SIGTERM, print "ready", wait forever
    child.py stdin           read stdin to EOF, print its length and sha256
    child.py spew OUT ERR    write ERR bytes to stderr, then a stdout line of OUT bytes,
                             then "end" with no newline, then "last words" to stderr
    child.py burn MB SECONDS hold MB megabytes while burning SECONDS of CPU, and leave an
                             orphan that burns SECONDS more; print "done" and exit 0
                             once the orphan has burnt its share (it exits soon after)
    child.py orphans FIFO    start three grandchildren that outlive it (one in its own session
                             like Claude's Bash tool, a `(cmd &)` background job, one in its
                             own session ignoring SIGINT/SIGTERM), print "ready", then exit 0
                             when FIFO is opened and closed by the test ("-": never exit)
"""

import hashlib
import os
import signal
import subprocess
import sys
import threading


def orphans(fifo: str) -> None:
    subprocess.Popen(["sleep", "300"], start_new_session=True)
    subprocess.run(["sh", "-c", "(sleep 300 &)"], check=True)
    stubborn = subprocess.Popen(
        ["sh", "-c", 'trap "" INT TERM; echo armed; exec sleep 300'],
        start_new_session=True, stdout=subprocess.PIPE)
    stubborn.stdout.readline()  # its signals are ignored from here on
    print("ready", flush=True)
    if fifo == "-":
        threading.Event().wait()
    with open(fifo, "rb") as f:
        f.read()


def _quote(text: str) -> str:
    import shlex
    return shlex.quote(text)


def burn(seconds: float) -> None:
    """Spend `seconds` of CPU time (not wall time: a loaded machine only makes it longer)."""
    import time
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def main(mode: str, *args: str) -> int:
    if mode == "lines":
        for i in range(int(args[0])):
            print("line %d" % i)
        print("bye", file=sys.stderr)
        return int(args[1])
    if mode == "stdin":
        data = sys.stdin.buffer.read()
        print(len(data), hashlib.sha256(data).hexdigest(), flush=True)
        return 0
    if mode == "spew":
        for _ in range(int(args[1]) // 4096):
            sys.stderr.buffer.write(b"e" * 4095 + b"\n")
        sys.stderr.flush()
        sys.stdout.buffer.write(b"x" * int(args[0]) + b"\nend")
        sys.stdout.flush()
        sys.stderr.buffer.write(b"last words\n")
        return 0
    if mode == "burn":
        held = bytearray(int(args[0]) * 1024 * 1024)
        held[::4096] = b"x" * len(held[::4096])   # touch every page: resident, not just mapped
        orphan = "import sys; sys.path[:0] = [%r]; import child; child.burn(%s)" % (
            sys.path[0], args[1])
        # A background job of a shell that exits at once: an orphan the guard reaps. It
        # holds `done_w` until it has burnt its share, which is how this child knows.
        done_r, done_w = os.pipe()
        subprocess.Popen(["sh", "-c", "%s -c %s &" % (sys.executable, _quote(orphan))],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         pass_fds=(done_w,)).wait()
        os.close(done_w)
        burn(float(args[1]))
        while os.read(done_r, 1):
            pass
        print("done", flush=True)
        return 0
    if mode == "ignore":
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if mode in ("sleep", "ignore"):
        print("ready", flush=True)
        while True:
            signal.pause()
    if mode == "orphans":
        orphans(args[0])
        return 0
    raise SystemExit("unknown mode %r" % mode)


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
