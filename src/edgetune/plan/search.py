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
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console

from edgetune.config import RunConfig
from edgetune.cost import ModelShape
from edgetune.errors import EdgetuneError
from edgetune.plan.contribution import AnalysisSettings, Candidate, ContributionTable, scheme_of
from edgetune.plan.scheme import UpdateScheme

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1e3,
    "mb": 1e6,
    "gb": 1e9,
    "tb": 1e12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_bytes(text: str | float | int) -> float:
    """Bytes from `64MB`, `1.5GB`, `512MiB`, `2e8` (decimal units for MB/GB, binary for MiB)."""
    if isinstance(text, int | float):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgt]?i?b?)\s*", text.lower())
        if not m or m[2] not in _UNITS:
            raise EdgetuneError(f"cannot read {text!r} as a memory size; write e.g. 64MB or 1.5GB")
        value = float(m[1]) * _UNITS[m[2]]
    if value <= 0:
        raise EdgetuneError(f"a memory budget must be positive, got {text!r}")
    return value


def human_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


@dataclass(frozen=True)
class Item:
    """A candidate with its gain and its memory cost on top of its block's depth cost."""

    candidate: Candidate
    gain: float
    cost: float

    @property
    def group(self) -> tuple[str, int]:
        return (self.candidate.unit, self.candidate.layer)


@dataclass
class Costs:
    """The additive cost model of the search (bytes of training memory)."""

    base: float  # the base alone (head, or nothing)
    depth: dict[int, float]  # opening backward down to block l


def knapsack(
    items: Sequence[Item], costs: Costs, budget: float, resolution: int = 4000
) -> tuple[list[Item], float]:
    """The items of most summed gain with base + depth(lowest block) + sum(cost) <= budget,
    at most one item per (unit, block). Costs (bytes) are rounded *up* to cells of
    max(1, room / resolution) bytes, so the result always fits; it is exact when the costs
    are whole numbers and the room is at most `resolution` bytes."""
    best: tuple[float, float, list[Item]] = (0.0, 0.0, [])  # gain, -cost, items
    for l0 in sorted(costs.depth):
        room = budget - costs.base - costs.depth[l0]
        if room < 0:
            continue
        unit = max(room / resolution, 1.0)  # bytes per cell; whole bytes stay exact
        cells = int(room // unit)
        groups: dict[tuple[str, int], list[tuple[int, Item]]] = {}
        for it in items:
            c = math.ceil(round(it.cost / unit, 9))
            if it.candidate.layer >= l0 and it.gain > 0 and c <= cells:
                groups.setdefault(it.group, []).append((c, it))
        chosen, gain = _multiple_choice(list(groups.values()), cells)
        if not chosen:
            continue
        total = costs.base + costs.depth[l0] + sum(it.cost for it in chosen)
        if (gain, -total) > best[:2]:
            best = (gain, -total, chosen)
    return best[2], best[0]


def _multiple_choice(groups: list[list[tuple[int, Item]]], cap: int):
    """Multiple-choice knapsack DP over exact used capacity: at most one option per group."""
    dp = np.full(cap + 1, -np.inf)
    dp[0] = 0.0
    choices = []
    for options in groups:
        new, choice = dp.copy(), np.full(cap + 1, -1, dtype=np.int32)
        for j, (c, it) in enumerate(options):
            cand = np.full(cap + 1, -np.inf)
            cand[c:] = dp[: cap + 1 - c] + it.gain
            better = cand > new
            new[better], choice[better] = cand[better], j
        dp = new
        choices.append(choice)
    at = int(np.argmax(dp))
    gain, chosen = float(dp[at]), []
    for options, choice in zip(reversed(groups), reversed(choices), strict=True):
        j = int(choice[at])
        if j >= 0:
            chosen.append(options[j][1])
            at -= options[j][0]
    return chosen, gain


@dataclass
class Plan:
    """A searched scheme, its predicted gain and its forecast cost."""

    scheme: UpdateScheme
    gain: float
    budget: float
    forecast: dict

    def save(self, path) -> None:
        """The scheme as YAML (`UpdateScheme.load` reads it back) with gain and forecast."""
        self.scheme.save(
            path,
            {
                "budget_bytes": float(self.budget),
                "predicted_gain": float(self.gain),
                "forecast": self.forecast,
            },
        )


def search(
    table: ContributionTable,
    exact: Callable[[UpdateScheme], float],
    budget: float,
    tries: int = 8,
) -> tuple[UpdateScheme, float]:
    """The best scheme of `table` whose exact training memory `exact(scheme)` fits `budget`.

    Builds the additive cost model from `exact` (one call per block and candidate), runs the
    knapsack, and lowers its budget by the excess while the exact forecast is over budget.
    Raises EdgetuneError naming the smallest scheme when nothing fits."""
    head, hb = table.head, table.has_bias
    base_scheme = scheme_of([], head, hb, "base")
    base = exact(base_scheme) if head else 0.0
    depth, extra = {}, {}
    for layer in range(table.n_layers):
        bias = Candidate("bias", layer, 0.0)
        depth[layer] = exact(scheme_of([bias], head, hb)) - base
        for key in table.entries:
            c = Candidate.from_key(key)
            if c.layer == layer and c.unit != "bias":
                extra[key] = max(0.0, exact(scheme_of([bias, c], head, hb)) - base - depth[layer])
    costs = Costs(base, depth)
    items = [
        Item(Candidate.from_key(k), e.gain, extra.get(k, 0.0)) for k, e in table.entries.items()
    ]
    smallest = base if head else min(depth.values())
    if budget < smallest:
        what = "training the head alone" if head else "the biases of the cheapest block"
        raise EdgetuneError(
            f"memory budget {human_bytes(budget)} is too small: the smallest scheme "
            f"({what}) needs {human_bytes(smallest)} of training memory"
        )
    target = budget
    for _ in range(tries):
        chosen, gain = knapsack(items, costs, target)
        if not chosen:  # nothing with a positive gain fits: the cheapest fitting scheme
            if head:
                return base_scheme, 0.0
            layer = min(depth, key=lambda m: depth[m])
            chosen = [Item(Candidate("bias", layer, 0.0), 0.0, 0.0)]
            gain = table.gain(chosen[0].candidate)
        scheme = scheme_of([it.candidate for it in chosen], head, hb, "planned")
        over = exact(scheme) - budget
        if over <= 0:
            return scheme, gain
        target -= over + 0.01 * budget
    raise EdgetuneError(f"could not find a scheme within {human_bytes(budget)}: raise the budget")


# -- planning a run -------------------------------------------------------------------------


def model_shape_of(name: str) -> ModelShape:
    """The cost model's shape of a registry model or a local model folder (config only)."""
    from edgetune.cost import shape_from_config
    from edgetune.models.registry import SPECS  # imports transformers: only here

    if name in SPECS:
        return shape_from_config(SPECS[name].config().to_dict(), name)
    from transformers import AutoConfig

    try:
        return shape_from_config(AutoConfig.from_pretrained(name).to_dict(), name)
    except OSError as e:
        raise EdgetuneError(f"cannot read the config of model {name!r}: {e}") from None


def forecast(
    shape: ModelShape, scheme: UpdateScheme, batch: int, seq: int, head: str, n_labels: int
) -> dict:
    """The cost model's numbers for one sparse step under `scheme` (bytes, FLOPs)."""
    from edgetune.cost import step_cost

    c = step_cost(shape, "sparse", batch, seq, head=head, n_labels=max(2, n_labels), scheme=scheme)
    m = c.memory
    return {
        "batch": batch,
        "seq": seq,
        "training_bytes": float(m.peak - m.weights),
        "peak_bytes": float(m.peak),
        "weights_bytes": float(m.weights),
        "gradient_bytes": float(m.gradients),
        "optimizer_bytes": float(m.optimizer),
        "activation_bytes": float(m.activations),
        "flops": float(c.flops),
        "trained_params": float(c.trained_params),
    }


def resolve_budget(
    budget: str | float | None, device: str | None, weights: float, whole_peak: bool = False
) -> float:
    """Training-memory budget in bytes: `budget` as given (with `whole_peak`, the budget holds
    the weights too, so they are taken off), or a device's memory minus the weights."""
    if (budget is None) == (device is None):
        raise EdgetuneError("give exactly one of a memory budget (e.g. 64MB) or a device")
    if budget is not None:
        total, where = parse_bytes(budget), f"the budget of {human_bytes(parse_bytes(budget))}"
        if not whole_peak:
            return total
    else:
        from edgetune.cost import load_device

        dev = load_device(device)
        if dev.memory is None:
            raise EdgetuneError(f"device {device} has no known memory size; pass a budget")
        total, where = dev.memory.value, f"{device}'s {human_bytes(dev.memory.value)}"
    if total <= weights:
        raise EdgetuneError(f"the model's weights ({human_bytes(weights)}) do not fit {where}")
    return total - weights


def make_plan(
    cfg: RunConfig,
    budget: str | float | None = None,
    device: str | None = None,
    settings: AnalysisSettings | None = None,
    cache: Path | None = None,
    console: Console | None = None,
    whole_peak: bool = False,
) -> tuple[Plan, ContributionTable]:
    """Contribution analysis (cached) of `cfg`'s model and data, then the best scheme within
    the budget at `cfg`'s batch size and sequence length. The budget is training memory
    beyond the weights; with `whole_peak` it is the step's whole peak, weights included (as
    `edgetune finetune --budget` reads it)."""
    from edgetune.cost import n_params
    from edgetune.plan.contribution import analyze

    shape = model_shape_of(cfg.model.name)
    batch, seq = cfg.train.batch_size, cfg.data.seq_len
    # the budget check needs only the shape: fail before an analysis that may take minutes
    limit = resolve_budget(budget, device, 4.0 * n_params(shape), whole_peak)
    table = analyze(cfg, settings, cache, console)
    return plan_from_table(table, shape, limit, batch, seq), table


def plan_from_table(
    table: ContributionTable, shape: ModelShape, budget: float, batch: int, seq: int
) -> Plan:
    """The best scheme of an analysed table within `budget` bytes of training memory, with
    the cost model's forecast at this batch size and sequence length."""
    head = "classifier" if table.task == "classify" else "lm"

    def exact(scheme: UpdateScheme) -> float:
        return forecast(shape, scheme, batch, seq, head, table.n_labels)["training_bytes"]

    scheme, gain = search(table, exact, budget)
    return Plan(scheme, gain, budget, forecast(shape, scheme, batch, seq, head, table.n_labels))


def plan_scheme(
    cfg: RunConfig,
    budget: str | float | None = None,
    device: str | None = None,
    settings: AnalysisSettings | None = None,
    cache: Path | None = None,
    console: Console | None = None,
    whole_peak: bool = False,
) -> UpdateScheme:
    """The planned scheme for `cfg` within `budget` (e.g. "64MB") or a device's memory: what
    the loop calls for `--method sparse --budget 64MB` (see `make_plan` for `whole_peak`)."""
    return make_plan(cfg, budget, device, settings, cache, console, whole_peak)[0].scheme
