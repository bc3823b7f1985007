"""Budgeted search: the update scheme with the most summed gain within a memory budget.

The budget is on *training memory*: what fine-tuning adds to holding the model for inference
(gradients, optimizer state, saved activations, workspace) = the cost model's peak minus the
weights. A device profile's budget is its memory minus the weights.

Why a knapsack and not an evolutionary search (PockEngine uses the summed gains of a
contribution analysis; so do we): the gains are additive by construction, and the memory of a
scheme is, to a close approximation, additive too once the *lowest trained block* l0 is fixed:

    memory(S) ~ base + depth(l0) + sum of item costs of S     (items: units of blocks >= l0)

depth(l0) is what opening backward down to block l0 costs (activations of the frozen path);
an item's cost is what training its weight adds on top (its saved input, gradient and AdamW
state, all proportional to its channel fraction). For each l0 this is a multiple-choice 0/1
knapsack (one fraction per unit and block), solved exactly by dynamic programming over a
discretized budget; the best l0 wins. That is exact and fast (milliseconds for 30 blocks),
where an evolutionary search is neither. The cost model's real peak is not exactly additive
(a step's peak is a max over phases), so the chosen scheme is checked against the exact
forecast and, if over budget, searched again under a budget lowered by the excess.

The search keeps a *shortlist* rather than one answer: the knapsack's best scheme for each
lowest block, and every built-in scheme (last-k, last-k@f, qkv-ffn1-k, bias-only) whose exact
forecast fits, each with its summed gain. Two reasons (docs/planning.md): the additive cost is
an upper bound of the exact one (a step's peak is a max over phases), so a built-in can fit
where the knapsack thinks it does not; and summed gains ignore that units trained together
overlap (summing favours deep schemes: more units to sum), so with a `judge` (a short joint
fine-tune of each scheme, `measure_schemes`) the best *measured* of the shortlist's best
schemes for several lowest blocks wins.

`max_step` bounds the step time too, in the cost model's terms: a step's FLOPs at most
`max_step` times a forward's. Step time is additive in the same way (the backward of the
frozen path down to l0, plus each trained weight's gradient), so the knapsack becomes a
two-constraint one, memory and time, solved by the same dynamic programming over a grid of
both; the exact forecast is checked against both limits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np

from edgetune.errors import EdgetuneError
from edgetune.plan.table import Candidate, ContributionTable, scheme_key, scheme_of, summed_gain
from edgetune.scheme import UpdateScheme
from edgetune.units import human_bytes


class Cost(NamedTuple):
    """A scheme's forecast: training memory (bytes) and step time (step FLOPs over a
    forward's, so 1.0 is a forward alone)."""

    memory: float
    step: float = 1.0


@dataclass(frozen=True)
class Item:
    """A candidate with its gain and its memory cost (and step time, in forwards) on top of
    its block's depth cost."""

    candidate: Candidate
    gain: float
    cost: float
    time: float = 0.0

    @property
    def group(self) -> tuple[str, int]:
        return (self.candidate.unit, self.candidate.layer)


@dataclass
class Costs:
    """The additive cost model of the search (bytes of training memory)."""

    base: float  # the base alone (head, or nothing)
    depth: dict[int, float]  # opening backward down to block l
    base_time: float = 1.0  # the base's step, in forwards
    depth_time: dict[int, float] = field(default_factory=dict)  # backward down to block l


Exact = Callable[[UpdateScheme], Cost]
"""The cost model's forecast of a whole scheme (`plan_from_table` builds one)."""


def knapsack(
    items: Sequence[Item],
    costs: Costs,
    budget: float,
    resolution: int = 4000,
    max_step: float | None = None,
    time_resolution: int = 100,
) -> dict[int, tuple[list[Item], float]]:
    """For each lowest block l0 that fits, the items of most summed gain with
    base + depth(l0) + sum(cost) <= budget and, with `max_step`, base_time + depth_time(l0) +
    sum(time) <= max_step; at most one item per (unit, block), all in blocks >= l0. Costs
    (bytes) are rounded *up* to cells of max(1, room / resolution) bytes and times to cells of
    (max_step - base_time) / time_resolution, so the result always fits; it is exact when the
    costs are whole numbers, the room is at most `resolution` bytes and the times are whole
    cells. Lowest blocks where no item of positive gain fits are left out."""
    out: dict[int, tuple[list[Item], float]] = {}
    # time cells of one size for every l0 (none without a limit: every item 0 cells); a limit
    # at the base's own step admits only items that add no time
    t_unit = math.inf
    if max_step is not None:
        t_unit = (
            (max_step - costs.base_time) / time_resolution if max_step > costs.base_time else 1.0
        )
    for l0 in sorted(costs.depth):
        room = budget - costs.base - costs.depth[l0]
        t_room = 0.0
        if max_step is not None:
            t_room = max_step - costs.base_time - costs.depth_time.get(l0, 0.0)
        if room < 0 or t_room < -1e-12:
            continue
        unit = max(room / resolution, 1.0)  # bytes per cell; whole bytes stay exact
        cells = int(room // unit)
        t_cells = max(0, math.floor(round(t_room / t_unit, 9)))
        groups: dict[tuple[str, int], list[tuple[int, int, Item]]] = {}
        for it in items:
            c = math.ceil(round(it.cost / unit, 9))
            t = 0 if it.time <= 0 else math.ceil(round(it.time / t_unit, 9))
            if it.candidate.layer >= l0 and it.gain > 0 and c <= cells and t <= t_cells:
                groups.setdefault(it.group, []).append((c, t, it))
        chosen, gain = _multiple_choice(list(groups.values()), cells, t_cells)
        if chosen:
            out[l0] = (chosen, gain)
    return out


def _multiple_choice(groups: list[list[tuple[int, int, Item]]], cap: int, t_cap: int):
    """Multiple-choice knapsack DP over exact used capacity in memory and time cells: at
    most one option per group."""
    dp = np.full((t_cap + 1, cap + 1), -np.inf)
    dp[0, 0] = 0.0
    choices = []
    for options in groups:
        new, choice = dp.copy(), np.full(dp.shape, -1, dtype=np.int32)
        for j, (c, t, it) in enumerate(options):
            cand = np.full(dp.shape, -np.inf)
            cand[t:, c:] = dp[: t_cap + 1 - t, : cap + 1 - c] + it.gain
            better = cand > new
            new[better], choice[better] = cand[better], j
        dp = new
        choices.append(choice)
    t_at, at = np.unravel_index(int(np.argmax(dp)), dp.shape)
    gain, chosen = float(dp[t_at, at]), []
    for options, choice in zip(reversed(groups), reversed(choices), strict=True):
        j = int(choice[t_at, at])
        if j >= 0:
            chosen.append(options[j][2])
            at -= options[j][0]
            t_at -= options[j][1]
    return chosen, gain


@dataclass(frozen=True)
class Option:
    """A scheme the search weighs: its summed gain, its exact forecast and, once a judge has
    run it, its measured joint gain."""

    scheme: UpdateScheme
    gain: float
    cost: Cost
    measured: float | None = None


Judge = Callable[[list[UpdateScheme]], list[float]]
"""Measured held-out gains of whole schemes (`edgetune.plan.analysis.measure_schemes`)."""


def builtin_schemes(n_layers: int, head: bool, has_bias: bool) -> list[UpdateScheme]:
    """The fixed built-ins the search also weighs: last-k and last-k@f (f = 1/2, 1/4, 1/8) and
    qkv-ffn1-k for every k, and bias-only where the family has biases; without the head where
    the base has none (a language model's tied head)."""
    names = ["bias-only"] if has_bias else []
    for k in range(1, n_layers + 1):
        names += [f"last-{k}", f"qkv-ffn1-{k}"] + [f"last-{k}@{f}" for f in (0.5, 0.25, 0.125)]
    out = []
    for name in names:
        ups = UpdateScheme.builtin(name, n_layers).updates
        out.append(UpdateScheme(tuple(u for u in ups if head or u.unit != "head"), name))
    return out


def shortlist(
    table: ContributionTable,
    exact: Exact,
    budget: float,
    max_step: float | None = None,
    tries: int = 8,
) -> list[Option]:
    """Schemes of `table` whose exact forecast `exact(scheme)` fits `budget` (training memory)
    and, with `max_step`, whose step is at most that many forwards; best summed gain first:
    the knapsack's best for each lowest block (searched again under limits lowered by the
    excess while the exact forecast is over) and every built-in that fits and opens backward
    no lower than the lowest measured block. Raises EdgetuneError naming the smallest (or
    quickest) scheme when nothing fits."""
    head, hb, n = table.head, table.has_bias, table.n_layers
    base_scheme = scheme_of([], head, hb, "base")
    base = exact(base_scheme) if head else Cost(0.0)
    depth, depth_time, extra, extra_time = {}, {}, {}, {}
    for layer in range(n):
        bias = Candidate("bias", layer, 0.0)
        opened = exact(scheme_of([bias], head, hb))
        depth[layer] = opened.memory - base.memory
        depth_time[layer] = opened.step - base.step
        for key in table.entries:
            c = Candidate.from_key(key)
            if c.layer == layer and c.unit != "bias":
                with_c = exact(scheme_of([bias, c], head, hb))
                extra[key] = max(0.0, with_c.memory - opened.memory)
                extra_time[key] = max(0.0, with_c.step - opened.step)
    _check_limits(table, base, depth, depth_time, budget, max_step)
    items = [
        Item(Candidate.from_key(k), e.gain, extra.get(k, 0.0), extra_time.get(k, 0.0))
        for k, e in table.entries.items()
    ]
    found: dict[str, Option] = {}

    def fits(cost: Cost) -> bool:
        return cost.memory <= budget and (max_step is None or cost.step <= max_step)

    def keep(scheme: UpdateScheme, gain: float) -> Cost:
        cost = exact(scheme)
        if fits(cost):
            found.setdefault(scheme_key(scheme), Option(scheme, gain, cost))
        return cost

    for l0 in depth:
        costs = Costs(base.memory, {l0: depth[l0]}, base.step, {l0: depth_time[l0]})
        target, t_target = budget, max_step
        for _ in range(tries):
            picked = knapsack(items, costs, target, max_step=t_target).get(l0)
            if picked is None:
                break
            chosen, gain = picked
            scheme = scheme_of([it.candidate for it in chosen], head, hb, "planned")
            cost = keep(scheme, gain)
            if fits(cost):
                break
            if cost.memory > budget:
                target -= cost.memory - budget + 0.01 * budget
            if t_target is not None and cost.step > t_target:
                t_target -= cost.step - t_target + 0.01 * (t_target - base.step)
    # built-ins too, but never opening backward below the lowest measured block (the
    # knapsack does not either: its gains are 0 there)
    measured = [Candidate.from_key(k).layer for k, e in table.entries.items() if e.measured]
    floor = min(measured, default=0)
    for scheme in builtin_schemes(n, head, hb):
        if (n if (low := scheme.lowest_layer()) is None else low) >= floor:
            keep(scheme, summed_gain(table, scheme))
    if not found:  # nothing with a positive gain fits: the cheapest fitting scheme
        if head:
            return [Option(base_scheme, 0.0, base)]
        ok = [m for m in depth if fits(Cost(base.memory + depth[m], base.step + depth_time[m]))]
        layer = min(ok, key=lambda m: depth[m])
        scheme = scheme_of([Candidate("bias", layer, 0.0)], head, hb, "planned")
        return [Option(scheme, table.gain(Candidate("bias", layer, 0.0)), exact(scheme))]
    return sorted(found.values(), key=lambda o: (-o.gain, o.cost.memory))


def _check_limits(
    table: ContributionTable,
    base: Cost,
    depth: dict[int, float],
    depth_time: dict[int, float],
    budget: float,
    max_step: float | None,
) -> None:
    """Raise EdgetuneError when not even the smallest (or quickest) scheme fits."""
    what = "training the head alone" if table.head else "the biases of the cheapest block"
    smallest = base.memory if table.head else base.memory + min(depth.values())
    if budget < smallest:
        raise EdgetuneError(
            f"memory budget {human_bytes(budget)} is too small: the smallest scheme "
            f"({what}) needs {human_bytes(smallest)} of training memory"
        )
    if max_step is None:
        return
    ok = [m for m in depth if base.memory + depth[m] <= budget]
    quickest = base.step if table.head else base.step + min(depth_time[m] for m in ok)
    if max_step < quickest:
        what = "training the head alone" if table.head else "the biases of the quickest block"
        raise EdgetuneError(
            f"step limit {max_step:g}x a forward is too tight: the quickest scheme ({what}) "
            f"is forecast at {quickest:.2f}x"
        )


def search(
    table: ContributionTable,
    exact: Exact,
    budget: float,
    max_step: float | None = None,
    judge: Judge | None = None,
    top: int = 4,
    halving: bool = True,
) -> Option:
    """The planned scheme within `budget` (exact training memory) and `max_step` (forwards
    per step): the shortlisted scheme of most summed gain or, with a `judge`, the best
    *measured* of the contenders: the shortlist's best scheme for up to `top` lowest blocks,
    those blocks spread evenly from the deepest to the shallowest (depth is what summed gains
    favour: deeper schemes have more units to sum), and, with `halving`, the plan of half
    this budget (planned the same way, down to the smallest budget anything fits). A smaller
    budget's plan fits this one too, so a budget never plans worse, as judged, than its half,
    its quarter, and so on. Its scheme is named `planned`, or after the built-in it is."""
    options = shortlist(table, exact, budget, max_step)
    if judge is None:
        return options[0]
    levels = [_spread(options, table.n_layers, top)]  # this budget's contenders, then its half's
    while halving:
        budget /= 2
        try:
            lower = shortlist(table, exact, budget, max_step)
        except EdgetuneError:  # nothing fits this small a budget
            break
        levels.append(_spread(lower, table.n_layers, top))
    pool = {scheme_key(o.scheme): o for level in levels for o in level}
    gains = judge([o.scheme for o in pool.values()])  # every contender once, in one call
    measured = {k: replace(o, measured=g) for (k, o), g in zip(pool.items(), gains, strict=True)}
    best: Option | None = None
    for level in reversed(levels):  # each budget: its own contenders or its half's plan
        here = [measured[scheme_key(o.scheme)] for o in level]
        best = max([*here, best] if best else here, key=_measured)
    assert best is not None  # levels holds at least this budget's contenders
    return best


def _measured(option: Option) -> float:
    assert option.measured is not None  # `search` measured every contender it compares
    return option.measured


def _spread(options: list[Option], n_layers: int, top: int) -> list[Option]:
    """The best option (by summed gain) for each of up to `top` lowest blocks, spread evenly
    from the deepest to the shallowest."""
    by_depth: dict[int, Option] = {}
    for o in options:  # best summed gain first
        low = o.scheme.lowest_layer()
        by_depth.setdefault(n_layers if low is None else low, o)
    depths = sorted(by_depth)
    picks = sorted({depths[round(i)] for i in np.linspace(0, len(depths) - 1, max(1, top))})
    return [by_depth[d] for d in picks]
