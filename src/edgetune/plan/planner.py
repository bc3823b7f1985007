"""Planning a run: the contribution table of its model and data, then the scheme of most gain
within its memory budget (and step-time limit), forecast by the one cost-model adapter.

    plan = make_plan(session, budget="64MB")        # or device="rpi4"
    plan.scheme, plan.forecast                      # an UpdateScheme and its forecast numbers

The budget means what it means everywhere (`edgetune.forecast`): the process's peak resident
memory. The search itself works in *training memory*, the budget minus the process around the
step (runtime, tokenizer, data) and the weights (what fine-tuning adds to holding the model),
so the same plans come out for the same room.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console

from edgetune.cost import StepCost
from edgetune.errors import EdgetuneError
from edgetune.forecast import StepInputs, budget_bytes, predict
from edgetune.pipeline import Session
from edgetune.plan.analysis import analyze, measure_schemes
from edgetune.plan.search import Cost, Judge, search
from edgetune.plan.table import AnalysisSettings, ContributionTable, scheme_key
from edgetune.scheme import UpdateScheme
from edgetune.units import human_bytes


@dataclass
class Plan:
    """A searched scheme, its predicted gain and its forecast cost."""

    scheme: UpdateScheme
    gain: float  # summed gain of the scheme's units (the contribution table)
    budget: float
    forecast: dict
    measured_gain: float | None = None  # the judge's joint gain, where one was asked

    def save(self, path) -> None:
        """The scheme as YAML (`UpdateScheme.load` reads it back) with gain and forecast."""
        self.scheme.save(
            path,
            {
                "budget_bytes": float(self.budget),
                "predicted_gain": float(self.gain),
                "measured_gain": self.measured_gain,
                "forecast": self.forecast,
            },
        )


def forecast_numbers(cost: StepCost) -> dict:
    """A plan's forecast as the YAML file keeps it (bytes, FLOPs; `step_forwards`: the step in
    forward passes, by FLOPs)."""
    m = cost.memory
    return {
        "batch": cost.batch,
        "seq": cost.seq,
        "training_bytes": float(m.peak - m.weights),
        "peak_bytes": float(m.peak),
        "weights_bytes": float(m.weights),
        "gradient_bytes": float(m.gradients),
        "optimizer_bytes": float(m.optimizer),
        "activation_bytes": float(m.activations),
        "copy_bytes": float(m.copies),
        "flops": float(cost.flops),
        "forward_flops": float(cost.fwd_flops),
        "step_forwards": float(cost.flops / cost.fwd_flops),
        "trained_params": float(cost.trained_params),
    }


def training_budget(
    budget: str | float | None, device: str | None, weights: float, overhead: float = 0.0
) -> float:
    """The search's room: the process's budget (`budget`, else the device's memory) minus the
    process around the step (`overhead`: runtime, tokenizer, data) and the weights, which
    every scheme holds."""
    if (budget is None) == (device is None):
        raise EdgetuneError("give exactly one of a memory budget (e.g. 64MB) or a device")
    total = budget_bytes(budget, device)
    assert total is not None
    where = (
        f"the budget of {human_bytes(total)}"
        if budget is not None
        else (f"{device}'s {human_bytes(total)}")
    )
    if total <= overhead + weights:
        besides = (
            f" beside the runtime, tokenizer and data ({human_bytes(overhead)})" if overhead else ""
        )
        raise EdgetuneError(
            f"the model's weights ({human_bytes(weights)}) do not fit {where}{besides}"
        )
    return total - overhead - weights


class Planner:
    """The exact forecast of any scheme of one run, memoized (the search asks again for the
    same schemes at every budget): the run's method with only its scheme option changed."""

    def __init__(self, inputs: StepInputs, method: str, options: object) -> None:
        from edgetune.methods.registry import get_method

        self.inputs, self.method, self.spec = inputs, method, get_method(method)
        if self.spec.scheme_option is None:
            raise EdgetuneError(f"method {method} has no update scheme to plan")
        self.options = self.spec.parse(options)
        self._known: dict[str, StepCost] = {}

    def cost(self, scheme: UpdateScheme) -> StepCost:
        key = scheme_key(scheme)
        if key not in self._known:
            option = self.spec.scheme_option
            assert option is not None  # checked in __init__
            opts = replace(self.options, **{option: scheme})
            self._known[key] = predict(self.inputs, self.method, opts)
        return self._known[key]

    def exact(self, scheme: UpdateScheme) -> Cost:
        c = self.cost(scheme)
        return Cost(c.memory.peak - c.memory.weights, c.flops / c.fwd_flops)

    @property
    def weights(self) -> float:
        return predict(self.inputs, self.method, self.options).memory.weights


def plan_blocks(
    inputs: StepInputs,
    method: str,
    options: object,
    budget: str | float | None = None,
    device: str | None = None,
    overhead: float = 0.0,
) -> tuple[int, StepCost]:
    """The most top blocks trained by backprop (the method's `blocks_option`; `hybrid`'s
    boundary) whose forecast fits the budget (the process's peak: `overhead` bytes around the
    step and the step's peak; or a device's memory), with that step's forecast: every count
    from all blocks down to none, the first that fits."""
    from edgetune.methods.registry import get_method

    spec = get_method(method)
    option = spec.blocks_option
    if option is None:
        raise EdgetuneError(f"method {method} has no count of backprop blocks to plan")
    limit = budget_bytes(budget, device)
    if limit is None:
        raise EdgetuneError("give a memory budget (e.g. 64MB) or a device")
    opts = spec.parse(options)
    n = inputs.shape.n_layers + inputs.shape.n_dec_layers
    for k in range(n, -1, -1):
        cost = predict(inputs, method, replace(opts, **{option: k}))
        if overhead + cost.memory.peak <= limit:
            return k, cost
    raise EdgetuneError(
        f"{method} does not fit {human_bytes(limit)} even with no block by backprop (process "
        f"peak {human_bytes(overhead + cost.memory.peak)}): raise the budget, or lower the "
        "batch or sequence"
    )


def make_plan(
    session: Session,
    budget: str | float | None = None,
    device: str | None = None,
    settings: AnalysisSettings | None = None,
    cache: Path | None = None,
    console: Console | None = None,
    max_step: float | None = None,
    verify: int = 0,
) -> tuple[Plan, ContributionTable]:
    """Contribution analysis (cached) of the session's model and data, then the best scheme
    for its method within the budget (the step's peak, weights included; or a device's
    memory) at its batch size and sequence length. `max_step` bounds the forecast step at that
    many forwards (FLOPs); `verify` > 0 fine-tunes that many of the best shortlisted schemes
    jointly (the analysis' protocol, cached) and keeps the best measured."""
    planner = Planner(session.step_inputs(), session.cfg.train.method, session.cfg.method)
    # the budget check needs only the shape: fail before an analysis that may take minutes
    limit = training_budget(budget, device, planner.weights, session.overhead().total)
    table = analyze(session, settings, cache, console)

    def judge(schemes: list[UpdateScheme]) -> list[float]:
        return measure_schemes(session, schemes, settings, cache, console)

    plan = plan_from_table(table, planner, limit, max_step, judge if verify else None, verify)
    return plan, table


def plan_from_table(
    table: ContributionTable,
    planner: Planner,
    budget: float,
    max_step: float | None = None,
    judge: Judge | None = None,
    top: int = 4,
) -> Plan:
    """The best scheme of an analysed table within `budget` bytes of training memory and
    `max_step` forwards per step (see `search`), with its forecast."""
    best = search(table, planner.exact, budget, max_step, judge, top)
    return Plan(best.scheme, best.gain, budget, forecast_numbers(planner.cost(best.scheme)),
                best.measured)  # fmt: skip
