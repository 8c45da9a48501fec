"""Admission control: may one more ready task start on this machine now?

Pure: no processes, no clock, no probing. The runner samples the machine (qw.probe's
Snapshot) and hands it to the Scheduler, which asks `Admission.hold` about each ready task
it could start; None means go, a Hold says why not.

A task may start while all of these hold ([resources] in qw.toml):

    load per CPU            <= cpu_limit_percent     (counted as at most 100%: CPU use cannot
                                                       exceed 100%, so a limit of 100 never holds)
    memory used             <= memory_limit_percent
    memory available - memory_reserve_mb >= the task's memory estimate

A figure the platform cannot give (None in the Snapshot) holds nothing. Memory that tasks
already started are expected to take but do not use yet (`committed_mb`: their estimates
minus the RSS last seen, which the Scheduler tracks) counts as used: a child needs seconds
to grow, and the next snapshot would otherwise see the room it is about to fill.

Estimates: a task's estimate is the largest peak RSS among the last PEAKS_KEPT attempts of
tasks with the same agent (tasks without an agent form one group of their own), and
`per_task_memory_mb` until one has been measured. The maximum, not an average: starting a
task that then does not fit costs swapping or the OOM killer, waiting costs a little time;
and keeping only the last few lets the estimate come down again when an agent's work
changes. The state keeps these peaks across runs (RunState.memory_peaks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence

PEAKS_KEPT = 5
NO_AGENT = ""     # the estimate group of tasks without an `_Agent:`

# What a task waits for. CPU and MEMORY_USED are the machine's, the same for every task;
# MEMORY_FREE depends on the task's own estimate.
CPU, MEMORY_USED, MEMORY_FREE = "cpu", "memory_used", "memory_free"


@dataclass(frozen=True)
class Hold:
    """Why a ready task may not start now: `kind` (CPU, MEMORY_USED, MEMORY_FREE) is what
    it waits for, `reason` says it with the figures, e.g. "waiting for memory: 300 MB
    available - 1024 MB reserve < 512 MB estimate"."""

    kind: str
    reason: str

    @property
    def machine_wide(self) -> bool:
        """Every other ready task waits for the same thing."""
        return self.kind != MEMORY_FREE


@dataclass(frozen=True)
class Limits:
    """The [resources] limits; the defaults hold nothing."""

    cpu_limit_percent: float = 100.0
    memory_limit_percent: float = 100.0
    memory_reserve_mb: float = 0.0
    per_task_memory_mb: float = 0.0

    @classmethod
    def from_config(cls, resources) -> "Limits":
        """The limits of a qw.config.ResourcesConfig."""
        return cls(float(resources.cpu_limit_percent), float(resources.memory_limit_percent),
                   float(resources.memory_reserve_mb), float(resources.per_task_memory_mb))


def agent_key(agent: Optional[str]) -> str:
    """The estimate group of a task with this `_Agent:` (None: without one)."""
    return agent or NO_AGENT


def remember(peaks: Sequence[float], peak_mb: float) -> List[float]:
    """`peaks` with `peak_mb` added, keeping the last PEAKS_KEPT."""
    return (list(peaks) + [float(peak_mb)])[-PEAKS_KEPT:]


def estimate_from(peaks: Sequence[float], default_mb: float) -> float:
    """The memory a task is expected to need, in whole MB: the largest of its group's
    recent peaks, else `default_mb` ([resources] per_task_memory_mb)."""
    return float(math.ceil(max(peaks))) if peaks else float(default_mb)


def hold_for(snapshot, limits: Limits, estimate_mb: float, committed_mb: float = 0.0,
             label: str = "estimate") -> Optional[Hold]:
    """Why a task estimated at `estimate_mb` may not start on the machine `snapshot`
    shows (a qw.probe.Snapshot), with `committed_mb` promised to tasks already started;
    None if it may. `label` names the estimate in the reason."""
    load = snapshot.load_per_cpu_percent
    if load is not None and min(load, 100.0) > limits.cpu_limit_percent:
        return Hold(CPU, f"waiting for CPU: load {load:.0f}% per CPU > "
                         f"{limits.cpu_limit_percent:.0f}% limit ([resources] cpu_limit_percent)")
    total = snapshot.memory_total_mb
    committed = max(0.0, committed_mb)
    promised = f" (counting {committed:.0f} MB that started tasks may still take)" \
        if committed >= 1 else ""
    used = snapshot.memory_used_percent
    if used is not None:
        if total:
            used += 100.0 * committed / total
        if used > limits.memory_limit_percent:
            return Hold(MEMORY_USED, f"waiting for memory: {used:.0f}% used{promised} > "
                                     f"{limits.memory_limit_percent:.0f}% limit "
                                     "([resources] memory_limit_percent)")
    available = snapshot.memory_available_mb
    if available is not None:
        available -= committed
        if available - limits.memory_reserve_mb < estimate_mb:
            return Hold(MEMORY_FREE, f"waiting for memory: {available:.0f} MB available"
                                     f"{promised} - {limits.memory_reserve_mb:.0f} MB reserve "
                                     f"< {estimate_mb:.0f} MB {label}")
    return None


class Admission:
    """The limits, and the memory estimates learned from measured attempts. `limits`
    None: nothing is ever held (estimates are still learned and kept)."""

    def __init__(self, limits: Optional[Limits] = None,
                 peaks: Optional[Mapping[str, Sequence[float]]] = None):
        self.limits = limits
        self.peaks: Dict[str, List[float]] = {}
        self.restore(peaks or {})

    def restore(self, peaks: Mapping[str, Sequence[float]]) -> None:
        """Start from what earlier runs learned ({agent key: recent peaks})."""
        for key, values in peaks.items():
            self.peaks[key] = [float(v) for v in values][-PEAKS_KEPT:]

    def learn(self, agent: Optional[str], peak_mb: Optional[float]) -> None:
        """Count one measured attempt's peak RSS (None: not measured) for its agent."""
        if peak_mb is not None and peak_mb > 0:
            key = agent_key(agent)
            self.peaks[key] = remember(self.peaks.get(key, ()), peak_mb)

    def estimate_mb(self, agent: Optional[str]) -> float:
        """The memory the next task with this agent is expected to need."""
        default = self.limits.per_task_memory_mb if self.limits is not None else 0.0
        return estimate_from(self.peaks.get(agent_key(agent), ()), default)

    def hold(self, snapshot, agent: Optional[str], committed_mb: float = 0.0) -> Optional[Hold]:
        """Why a task with this agent may not start now (None: it may, or there is no
        snapshot or no limits to apply)."""
        if snapshot is None or self.limits is None:
            return None
        label = f"estimate for agent {agent}" if agent else "estimate"
        return hold_for(snapshot, self.limits, self.estimate_mb(agent), committed_mb, label)
