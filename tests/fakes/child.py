"""A stand-in for `claude -p` in process-tree tests: one behaviour per mode.

    child.py lines N CODE    print "line 0" .. "line N-1", exit CODE
    child.py sleep           print "ready", wait for a signal (SIGINT ends it as usual)
    child.py ignore          ignore SIGINT and SIGTERM, print "ready", wait forever
    child.py stdin           read stdin to EOF, print its length and sha256
    child.py orphans FIFO    start three grandchildren that outlive it (one in its own session
                             like Claude's Bash tool, a `(cmd &)` background job, one in its
                             own session ignoring SIGINT/SIGTERM), print "ready", then exit 0
                             when FIFO is opened and closed by the test ("-": never exit)
"""

import hashlib
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
