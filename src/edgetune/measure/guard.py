"""The memory guard: a run that watches the memory it may use and stops, saved, before the
kernel would kill it.

The limit is the lowest of the run's budget (`--budget`, else its `--device`'s memory) and
the limit the kernel enforces on the process's cgroup (a container's or a systemd unit's
memory cap). Before every step the guard resets the resident set's high-water mark; after it,
it predicts the next step's peak as what is in use now (the process's resident set, or under a
cgroup limit the cgroup's working set: other processes there count) plus what the step just
measured took above what it left resident (its transient: activations, gradients, buffers).
A prediction within `MARGIN` of the limit stops the run at this step's end, where its state
is whole: the loop saves a checkpoint and exits (code 75) with one line naming what fits
(`edgetune.forecast.fitting_hint`), and `--resume` continues it bit for bit.

What it cannot catch: a step whose own growth jumps past the limit (a longer batch than any
before: the forecast, checked before step 1, covers the configured length), or another process
taking the room within a step.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgetune.measure.memory import (
    cgroup_limit,
    cgroup_working_set,
    peak_since_reset,
    reset_peak,
    rss_mb,
)
from edgetune.units import human

MARGIN = 0.03  # of the limit, kept free for what a prediction misses


@dataclass
class Stop:
    """Why the guard stopped a run: the predicted peak of the next step against the limit."""

    predicted: float
    in_use: float
    own: float  # of `in_use`, this process's resident set
    growth: float
    limit: float
    limit_name: str

    def line(self) -> str:
        def b(x: float) -> str:
            return human(x, "B", 1024)

        return (f"the next step would reach about {b(self.predicted)} ({b(self.in_use)} in "
                f"use + {b(self.growth)} a step takes above it), within {MARGIN:.0%} of "
                f"{self.limit_name}")  # fmt: skip


class MemoryGuard:
    """Watches one run's memory against `limit` bytes (`limit_name` says what sets it);
    `cgroup`: the limit is the cgroup's, so the cgroup's working set is what is in use."""

    def __init__(self, limit: float, limit_name: str, cgroup: bool) -> None:
        self.limit, self.limit_name, self.cgroup = limit, limit_name, cgroup

    @classmethod
    def for_run(cls, budget: float | None, budget_name: str | None) -> MemoryGuard | None:
        """The guard of a run with this budget (None: none) under this process's cgroup limit;
        None where neither is set."""
        enforced = cgroup_limit()
        if enforced is not None and (budget is None or enforced <= budget):
            return cls(enforced, f"the cgroup's memory limit of {human(enforced, 'B', 1024)}", True)
        if budget is None:
            return None
        return cls(budget, budget_name or f"the budget of {human(budget, 'B', 1024)}", False)

    def before_step(self) -> None:
        reset_peak()

    def after_step(self) -> Stop | None:
        """A `Stop` where the next step is predicted to come within `MARGIN` of the limit."""
        own = int(rss_mb() * 2**20)
        growth = max(0, peak_since_reset() - own)  # above what the step left resident
        in_use = cgroup_working_set() if self.cgroup else None
        if in_use is None:
            in_use = own
        predicted = in_use + growth
        if predicted <= self.limit * (1 - MARGIN):
            return None
        return Stop(predicted, in_use, own, growth, self.limit, self.limit_name)
