"""What one supervised attempt costs a worker, against a plain subprocess (run by bench/run).

    python bench/attemptcost.py QW_PYZ FAKE_CLAUDE N

imports qw from QW_PYZ and runs the fake claude N times, one after another, three ways:
plain subprocess.run (what xargs does); qw.proctree.start_child as the worker drives it
(read lines to EOF, wait, close: the request to the long-lived guard, four threads, the
tree sweep); and the guard's interpreter alone (`python -I -S` importing qw.guard, then
exiting: paid once per worker, on its first attempt, which the warm-up takes here). Prints
one JSON object: for each, the median wall time and the mean CPU time (this process, its
waited-for children, and its living descendants with what they reaped: the guard) per
attempt, in seconds.
"""

import json
import os
import resource
import statistics
import subprocess
import sys
import time


def cpu():
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime + living_descendants()


def living_descendants():
    """CPU seconds of this process's living descendants and of the children they reaped:
    the long-lived guard and the children it ran, which RUSAGE_CHILDREN (children this
    process waited for) does not count."""
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open("/proc/%s/stat" % name, "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat[stat.rfind(b")") + 2:].split()
            table[int(name)] = (int(fields[1]), sum(int(x) for x in fields[11:15]))
    tree, ticks = [os.getpid()], 0
    for pid in tree:
        kids = [p for p, (ppid, _) in table.items() if ppid == pid]
        tree.extend(kids)
        ticks += sum(table[p][1] for p in kids)
    return ticks / os.sysconf("SC_CLK_TCK")


def measure(fn, n):
    walls = []
    c0 = cpu()
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
    return {"wall": statistics.median(walls), "cpu": (cpu() - c0) / n}


def main():
    pyz, fake, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    sys.path.insert(0, pyz)
    from qw.proctree import start_child

    prompt = b"You are implementing one task of the spec.\n" * 40
    env = dict(os.environ)

    def plain():
        subprocess.run([fake, "-p"], input=prompt, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, env=env)

    def supervised():
        child = start_child([fake, "-p"], env=env, cwd=os.getcwd(), stdin_data=prompt)
        try:
            while child.read_line(1.0) != b"":
                pass
            child.wait(10.0)
        finally:
            child.close()

    def guard_only():
        subprocess.run([sys.executable, "-I", "-S", "-c",
                        "import os, sys; sys.path.insert(0, sys.argv[1]); "
                        "import qw.guard; os._exit(0)", pyz])

    def python_only():
        subprocess.run([sys.executable, "-I", "-S", "-c", "pass"])

    supervised()   # warm the page cache and the imports
    out = {"n": n, "plain": measure(plain, n), "supervised": measure(supervised, n),
           "guard_interpreter": measure(guard_only, n),
           "python_I_S": measure(python_only, n)}
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
