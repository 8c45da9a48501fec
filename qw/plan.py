"""The task graph (DESIGN §3): which runnable task waits for which, and why.

Pure: a parsed TaskList in, a frozen Plan out. The runnable tasks are the leaves of the
task tree; a group is never run, it is done when all its subtasks are. Every edge carries
the reason it exists, so that `qw plan SPEC --explain` can show it.

How a group's lines reach its subtasks: a group's `_Depends:`, files, `_Leverage:` and
"task N" mentions apply to each of its leaves, and a dependency on a group is a dependency
on each of its leaves. Edges are computed for leaves only, in one pass in document order,
with the declared files indexed by path tail so that 10,000 tasks plan in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from qw.errors import ConfigError, SpecError, UsageError
from qw.tasks import Task, TaskList

DEPENDENCY_MODES = ("infer", "explicit", "sequential")
UNDECLARED_MODES = ("serial", "parallel")
SERIAL_REASON = ('declares no file or dependency: runs after the task before it '
                 '([plan] undeclared = "serial")')


class DependencyCycle(SpecError):
    """A cycle in the task graph; `cycle` holds (task, waits_for, reason) for each edge."""

    def __init__(self, what: str, where: str, fix: str,
                 cycle: Tuple[Tuple[str, str, str], ...]):
        super().__init__(what, where, fix)
        self.cycle = cycle


@dataclass(frozen=True)
class Plan:
    """The dependency graph of one tasks.md's runnable tasks.

    `deps[id]` are the direct prerequisites of a runnable task in document order,
    `reasons[id][dep]` says why each exists, `dependents` is the reverse graph,
    `groups[gid]` the leaves of every group (transitively), `ancestors[id]` the groups
    holding a runnable task (innermost first), and `layers` the Kahn levels.
    """

    path: str
    tasks: Tuple[Task, ...]
    groups: Dict[str, Tuple[str, ...]]
    deps: Dict[str, Tuple[str, ...]]
    reasons: Dict[str, Dict[str, str]]
    dependents: Dict[str, Tuple[str, ...]]
    ancestors: Dict[str, Tuple[str, ...]]
    layers: Tuple[Tuple[str, ...], ...]

    def ready(self, done: Iterable[str], exclude: Iterable[str] = ()) -> List[str]:
        """Runnable tasks not done and not excluded (running, failed...) whose
        prerequisites are all done, in document order."""
        done = set(done)
        skip = done.union(exclude)
        return [t.id for t in self.tasks
                if t.id not in skip and all(d in done for d in self.deps[t.id])]

    def batches(self) -> List[List[str]]:
        """The layers: each task sits one layer after its latest prerequisite."""
        return [list(layer) for layer in self.layers]

    def critical_path(self, durations: Optional[Dict[str, float]] = None) -> List[str]:
        """The chain of tasks with the largest summed duration, first task first.

        Without `durations` each task counts 1; a task missing from `durations` counts
        as the mean of the given ones. Ties go to the task earlier in the document.
        """
        if durations is None:
            cost: Callable[[str], float] = lambda task_id: 1.0
        else:
            known = dict(durations)
            mean = sum(known.values()) / len(known) if known else 1.0
            cost = lambda task_id: float(known.get(task_id, mean))
        total: Dict[str, float] = {}
        previous: Dict[str, Optional[str]] = {}
        for layer in self.layers:
            for task_id in layer:
                best = None
                for dep in self.deps[task_id]:  # document order: the first maximum wins ties
                    if best is None or total[dep] > total[best]:
                        best = dep
                total[task_id] = cost(task_id) + (total[best] if best is not None else 0.0)
                previous[task_id] = best
        end = None
        for task in self.tasks:
            if end is None or total[task.id] > total[end]:
                end = task.id
        path = []
        while end is not None:
            path.append(end)
            end = previous[end]
        return path[::-1]

    def closure(self, ids: Iterable[str]) -> List[str]:
        """The given tasks (a group stands for its leaves) and everything they
        transitively wait for, in document order. UsageError for an unknown id."""
        needed = set()
        stack: List[str] = []
        for task_id in ids:
            stack.extend(self.leaves(task_id))
        while stack:
            task_id = stack.pop()
            if task_id not in needed:
                needed.add(task_id)
                stack.extend(self.deps[task_id])
        return [t.id for t in self.tasks if t.id in needed]

    def leaves(self, task_id: str) -> Tuple[str, ...]:
        """The runnable tasks an id stands for: a group's leaves, or the task itself."""
        if task_id in self.groups:
            return self.groups[task_id]
        if task_id in self.deps:
            return (task_id,)
        raise UsageError(f"unknown task {task_id}", self.path,
                         "use an id from this tasks.md (`qw plan SPEC` lists them)")

    def to_json(self) -> dict:
        """The plan as built-in types, for `qw plan SPEC --json`."""
        return {
            "tasks": [{"id": t.id, "title": t.title, "line": t.line,
                       "deps": list(self.deps[t.id]), "reasons": dict(self.reasons[t.id])}
                      for t in self.tasks],
            "groups": {gid: list(leaves) for gid, leaves in self.groups.items()},
            "batches": self.batches(),
            "critical_path": self.critical_path(),
        }


def build_plan(tasks: TaskList, dependencies: str = "infer",
               undeclared: str = "serial") -> Plan:
    """The plan of a task list under `[plan] dependencies` and `[plan] undeclared`.

    Raises ConfigError for an unknown mode, SpecError for a `_Depends:` naming an unknown
    task or a group that holds the task, and DependencyCycle when the tasks wait in a circle.
    """
    _check_mode("dependencies", dependencies, DEPENDENCY_MODES)
    _check_mode("undeclared", undeclared, UNDECLARED_MODES)
    builder = _Builder(tasks)
    builder.check_depends()
    if dependencies == "sequential":
        builder.chain_all()
    else:
        builder.infer(explicit_only=dependencies == "explicit",
                      serial=undeclared == "serial")
    return builder.plan()


def normalise_path(path: str) -> str:
    """A declared path in the one spelling used for matching: "/" separators, no
    leading "./", no trailing "/"."""
    path = path.strip().replace("\\", "/")
    while path.startswith("./"):
        path = path[2:]
    return path.rstrip("/")


def _check_mode(key: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        names = ", ".join(f'"{a}"' for a in allowed)
        raise ConfigError(f'[plan] {key} = "{value}" is not one of {names}',
                          f"[plan] {key}", f"use one of {names}")


def _tails(path: str) -> List[str]:
    """The path and each shorter tail of it that starts after a "/"."""
    tails = [path]
    cut = path.find("/")
    while cut != -1:
        if cut + 1 < len(path):
            tails.append(path[cut + 1:])
        cut = path.find("/", cut + 1)
    return tails


def _dirs(path: str) -> List[str]:
    """Every directory above a path: "a/b/c.ts" -> ["a", "a/b"]."""
    dirs = []
    cut = path.find("/", 1)
    while cut != -1:
        dirs.append(path[:cut])
        cut = path.find("/", cut + 1)
    return dirs


class _FileIndex:
    """The declared paths seen so far and the position of their latest declarer,
    indexed by every tail (and, with `dirs`, every directory) so that a lookup costs
    O(path depth)."""

    def __init__(self, dirs: bool) -> None:
        self._latest: Dict[str, int] = {}           # declared path -> its latest position
        self._by_tail: Dict[str, List[str]] = {}    # tail -> declared paths ending with it
        self._by_dir: Dict[str, List[str]] = {}     # directory -> declared paths under it
        self._tails: Dict[str, Tuple[str, ...]] = {}   # path -> its shorter tails
        self._dirs = dirs

    def _shorter_tails(self, path: str) -> Tuple[str, ...]:
        tails = self._tails.get(path)
        if tails is None:
            tails = self._tails[path] = tuple(_tails(path)[1:])
        return tails

    def add(self, path: str, position: int) -> None:
        if path not in self._latest:  # new: index it (a later declarer only moves its position)
            for tail in (path,) + self._shorter_tails(path):
                self._by_tail.setdefault(tail, []).append(path)
            if self._dirs:
                for directory in _dirs(path):
                    self._by_dir.setdefault(directory, []).append(path)
        self._latest[path] = position

    def declarers(self, path: str, under: bool = False) -> List[Tuple[int, str]]:
        """(position, declared path) of the latest earlier declarers a task touching
        `path` (or, with `under` and an index of directories, anything under the
        directory `path`) must wait for, nearest first, leaving out those a later declarer
        already waits for."""
        if not under and path[path.rfind("/") + 1:] not in self._by_tail:
            return []  # no declared path has its file name: most lookups
        latest = self._latest
        ending = self._by_tail.get(path)             # declared paths ending with `path`
        found = {declared: latest[declared] for declared in ending} if ending else {}
        for tail in self._shorter_tails(path):     # declared paths `path` ends with
            position = latest.get(tail)
            if position is not None:
                found[tail] = position
        if under:
            for declared in self._by_dir.get(path, ()):
                found[declared] = latest[declared]
        if len(found) < 2:
            return [(position, declared) for declared, position in found.items()]
        return self._uncovered(found)

    def _uncovered(self, found: Dict[str, int]) -> List[Tuple[int, str]]:
        """Drop a declarer when a later one declared a matching path: that one already
        waits for it (by induction over document order), so the edge would be redundant."""
        latest_ending: Dict[str, int] = {}  # tail -> latest position of a found path with it
        for path, position in found.items():
            for tail in self._shorter_tails(path):
                if latest_ending.get(tail, -1) < position:
                    latest_ending[tail] = position
        kept = []
        for path, position in found.items():
            if latest_ending.get(path, -1) > position:
                continue  # a later declarer of a longer path ending with this one
            if any(found.get(tail, -1) > position for tail in self._shorter_tails(path)):
                continue  # a later declarer of a shorter path this one ends with
            kept.append((position, path))
        kept.sort(reverse=True)
        return kept


class _Builder:
    """Collects the edges of one plan; `plan()` orders them and checks for cycles."""

    def __init__(self, tasks: TaskList) -> None:
        self.path = tasks.path
        self.name = tasks.path.replace("\\", "/").rsplit("/", 1)[-1] or "tasks.md"
        self.by_id = {t.id: t for t in tasks.tasks}
        self.ids = [t.id for t in tasks.tasks]  # position in the document -> id
        self.position = {task_id: i for i, task_id in enumerate(self.ids)}
        self.leaves = [t for t in tasks.tasks if not t.children]
        self.ancestors = {t.id: self._ancestors_of(t) if t.parent is not None else ()
                          for t in tasks.tasks}
        self.groups: Dict[str, List[str]] = {t.id: [] for t in tasks.tasks if t.children}
        for leaf in self.leaves:
            for group_id in self.ancestors[leaf.id]:
                self.groups[group_id].append(leaf.id)
        # leaf id -> {prerequisite leaf id: first reason}; insertion order = rule order
        self.edges: Dict[str, Dict[str, str]] = {leaf.id: {} for leaf in self.leaves}

    def _ancestors_of(self, task: Task) -> Tuple[str, ...]:
        chain: List[str] = []
        parent = task.parent
        while parent is not None and parent in self.by_id and parent not in chain:
            chain.append(parent)
            parent = self.by_id[parent].parent
        return tuple(chain)

    def _where(self, task: Task) -> str:
        return f"{self.path}:{task.depends_line or task.line}"

    def _expand(self, task_id: str) -> List[str]:
        return self.groups.get(task_id) or [task_id]

    def _add(self, leaf_id: str, dep_id: str, reason: str) -> bool:
        """Record an edge unless it is a self-edge; the first reason for a pair wins."""
        if dep_id == leaf_id:
            return False
        self.edges[leaf_id].setdefault(dep_id, reason)
        return True

    def check_depends(self) -> None:
        """Every `_Depends:` id exists and is not a group holding the task."""
        for task in self.by_id.values():
            for dep in task.depends or ():
                if dep not in self.by_id:
                    raise SpecError(f"_Depends names unknown task {dep}", self._where(task),
                                    "use an id from this tasks.md")
                if dep in self.ancestors[task.id] or (dep == task.id and task.children):
                    # The group is done only once this task is: it could never start.
                    raise SpecError(f"_Depends of task {task.id} names {dep}, a group "
                                    f"that holds it", self._where(task),
                                    "name the sibling subtasks it needs instead")

    def chain_all(self) -> None:
        """`sequential`: each runnable task after the one before it."""
        reason = 'runs after the task before it ([plan] dependencies = "sequential")'
        for before, leaf in zip(self.leaves, self.leaves[1:]):
            self._add(leaf.id, before.id, reason)

    def infer(self, explicit_only: bool, serial: bool) -> None:
        """`infer` (rules 1-5 of DESIGN §3) or, with `explicit_only`, `_Depends:` alone."""
        # Only a `_Leverage:` looks files up by directory: index them only for a spec that has one.
        index = _FileIndex(dirs=any(task.leverage for task in self.by_id.values()))
        previous: Optional[Task] = None
        for leaf in self.leaves:
            groups = self.ancestors[leaf.id]
            scope = (leaf,) + tuple(self.by_id[g] for g in groups) if groups else (leaf,)
            origins: Set[str] = set()  # the tasks of `scope` whose lines gave `leaf` an edge
            self._explicit_edges(leaf, scope, origins)
            if not explicit_only:
                files = self._declared_files(scope)
                self._file_edges(leaf, files, index, origins)
                self._leverage_edges(leaf, scope, index, origins)
                for path in files:
                    index.add(path, self.position[leaf.id])
                self._mention_edges(leaf, scope, origins)
                if serial and previous is not None and not self._declared(leaf, previous, origins):
                    self._add(leaf.id, previous.id, SERIAL_REASON)
            previous = leaf

    def _declared_files(self, scope: Sequence[Task]) -> Dict[str, str]:
        """{normalised path: id of the task declaring it} over a leaf and its groups."""
        seen: Dict[str, str] = {}
        for task in scope:
            for raw in task.files:
                path = normalise_path(raw)
                if path and path not in seen:
                    seen[path] = task.id
        return seen

    def _explicit_edges(self, leaf: Task, scope: Sequence[Task], origins: Set[str]) -> None:
        """Rule 1: `_Depends:` of the leaf and of its groups."""
        for task in scope:
            if not task.depends:
                continue
            where = f" ({self.name}:{task.depends_line})" if task.depends_line else ""
            reason = f"_Depends: {', '.join(task.depends)}{where}"
            for dep in task.depends:
                for dep_leaf in self._expand(dep):
                    if self._add(leaf.id, dep_leaf, reason):
                        origins.add(task.id)

    def _file_edges(self, leaf: Task, files: Dict[str, str], index: _FileIndex,
                    origins: Set[str]) -> None:
        """Rule 2: after the nearest earlier task declaring the same file."""
        for path, origin in files.items():
            for position, declared in index.declarers(path):
                shown = declared if len(declared) > len(path) else path
                if self._add(leaf.id, self.ids[position], f"both change {shown}"):
                    origins.add(origin)

    def _leverage_edges(self, leaf: Task, scope: Sequence[Task], index: _FileIndex,
                        origins: Set[str]) -> None:
        """Rule 3: after the nearest earlier task declaring a leveraged file, or any
        file under a leveraged directory."""
        for task in scope:
            for raw in task.leverage:
                path = normalise_path(raw)
                if not path:
                    continue
                shown = path + "/" if raw.strip().replace("\\", "/").endswith("/") else path
                for position, _ in index.declarers(path, under=True):
                    dep_id = self.ids[position]
                    if self._add(leaf.id, dep_id, f"leverages {shown} from task {dep_id}"):
                        origins.add(task.id)

    def _mention_edges(self, leaf: Task, scope: Sequence[Task], origins: Set[str]) -> None:
        """Rule 4: "task N" in a block, for an earlier task that is not an enclosing group."""
        for task in scope:
            suffix = "" if task is leaf else f" (in group {task.id})"
            for ref in task.task_refs:
                if (ref not in self.position or self.position[ref] >= self.position[task.id]
                        or ref in self.ancestors[leaf.id]):
                    continue  # prose may mention a later or unknown task: not an edge
                for dep_leaf in self._expand(ref):
                    if self._add(leaf.id, dep_leaf, f"mentions task {ref}{suffix}"):
                        origins.add(task.id)

    def _declared(self, leaf: Task, previous: Task, origins: Set[str]) -> bool:
        """Whether rule 5 leaves `leaf` alone: it, or a group it enters here, declares a
        file, a `_Depends:` (also `none`) or an edge. A group around both `leaf` and
        `previous` does not count: its edges bind the task before it too, so its
        subtasks still follow one another."""
        entering = [leaf]
        if self.ancestors[leaf.id]:
            shared = self.ancestors[previous.id]
            entering += [self.by_id[g] for g in self.ancestors[leaf.id] if g not in shared]
        for task in entering:
            if task.files or task.depends is not None or task.id in origins:
                return True
        return False

    def plan(self) -> Plan:
        """Order the edges, find the layers, and refuse a cycle.

        The "runs after the task before it" default gives way to what the spec says: a
        default edge that closes a cycle (task 1 `_Depends: 2`, task 2 declaring nothing)
        is dropped. A cycle of declared edges alone is the spec's to fix.
        """
        while True:
            try:
                return self._plan()
            except DependencyCycle as cycle:
                defaults = [(t, dep) for t, dep, reason in cycle.cycle if reason == SERIAL_REASON]
                if not defaults:
                    raise
                for task_id, dep in defaults:
                    del self.edges[task_id][dep]

    def _plan(self) -> Plan:
        deps: Dict[str, Tuple[str, ...]] = {}
        reasons: Dict[str, Dict[str, str]] = {}
        dependents: Dict[str, List[str]] = {leaf.id: [] for leaf in self.leaves}
        for leaf in self.leaves:
            edges = self.edges[leaf.id]
            if len(edges) < 2:  # most tasks: nothing to sort
                deps[leaf.id] = tuple(edges)
                reasons[leaf.id] = edges  # the builder's own: it is discarded with it
            else:
                deps[leaf.id] = tuple(sorted(edges, key=self.position.__getitem__))
                reasons[leaf.id] = {dep: edges[dep] for dep in deps[leaf.id]}
            for dep in deps[leaf.id]:
                dependents[dep].append(leaf.id)
        layers = self._layers(deps, dependents)
        return Plan(path=self.path, tasks=tuple(self.leaves),
                    groups={g: tuple(leaves) for g, leaves in self.groups.items()},
                    deps=deps, reasons=reasons,
                    dependents={k: tuple(v) for k, v in dependents.items()},
                    ancestors={leaf.id: self.ancestors[leaf.id] for leaf in self.leaves},
                    layers=layers)

    def _layers(self, deps: Dict[str, Tuple[str, ...]],
                dependents: Dict[str, List[str]]) -> Tuple[Tuple[str, ...], ...]:
        """Kahn's algorithm, level by level (iterative: no recursion limit)."""
        waiting = {task_id: len(d) for task_id, d in deps.items()}
        level = [leaf.id for leaf in self.leaves if not deps[leaf.id]]
        layers = []
        placed = 0
        while level:
            layers.append(tuple(level))
            placed += len(level)
            following = []
            for task_id in level:
                for dependent in dependents[task_id]:
                    waiting[dependent] -= 1
                    if waiting[dependent] == 0:
                        following.append(dependent)
            level = sorted(following, key=self.position.__getitem__)
        if placed < len(deps):
            self._raise_cycle(deps, {t for t, n in waiting.items() if n > 0})
        return tuple(layers)

    def _raise_cycle(self, deps: Dict[str, Tuple[str, ...]], stuck: set) -> None:
        # Every stuck task waits for another stuck task, so walking from one must loop.
        start = min(stuck, key=self.position.__getitem__)
        seen: Dict[str, int] = {}
        walk: List[str] = []
        current = start
        while current not in seen:
            seen[current] = len(walk)
            walk.append(current)
            current = next(d for d in deps[current] if d in stuck)
        cycle = walk[seen[current]:]
        first = cycle.index(min(cycle, key=self.position.__getitem__))
        cycle = cycle[first:] + cycle[:first]
        steps = [f"{t} ({self.name}:{self.by_id[t].line})" for t in cycle]
        edges = tuple((t, cycle[(i + 1) % len(cycle)], self.edges[t][cycle[(i + 1) % len(cycle)]])
                      for i, t in enumerate(cycle))
        why = "; ".join(f"{t} waits for {dep}: {reason}" for t, dep, reason in edges[:6])
        if len(edges) > 6:
            why += f"; and {len(edges) - 6} more"
        raise DependencyCycle("dependency cycle " + " -> ".join(steps) + f" -> {cycle[0]}"
                              + f" ({why})", f"{self.path}:{self.by_id[cycle[0]].line}",
                              "remove one of these _Depends or file overlaps", edges)
