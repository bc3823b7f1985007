"""The one adapter from a run to the cost model: what a step of this method, on this model and
batch, will cost; the budget check behind `--budget` and `--device`; the model-shape resolver.

    inputs = StepInputs(model_shape("minilm-l6"), batch=16, seq=128, head="classifier")
    cost = predict(inputs, "sparse", {"scheme": "last-2"})
    fc = session.forecast()                 # a loaded run (`edgetune.pipeline`), its budget
    print(fc.line())                        # the line `finetune` prints before step 1

`finetune`, `plan`, `cost`, `bench` and the federated MFU all ask here, so they agree. The
method's cost traits come from its registry entry (`edgetune.methods.registry`): its `rule`,
its optimizer and what its options mean to the cost model (`cost_inputs`).

A budget is the whole process's resident memory, what `ps` shows: the step's `peak` (weights,
gradients, optimizer state, activations and working buffers, split copies) plus the
`Overhead` of the process around it: the runtime (the interpreter, PyTorch, transformers and
edgetune, measured once per machine and software set: `edgetune.measure.runtime`) and what the
run loaded besides its weights (tokenizer, tokenized data; measured as it loads). The printed
line gives each part. Torch-free.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgetune.cost import (
    NAMED_SHAPES,
    Device,
    ModelShape,
    Precision,
    StepCost,
    eval_peak,
    load_device,
    roofline,
    shape_from_config,
    step_cost,
    step_time,
)
from edgetune.cost.latency import MAPPED_DEFAULT, MAPPED_LEAN
from edgetune.errors import EdgetuneError
from edgetune.families import ENCODER_DECODER
from edgetune.methods.registry import METHODS, get_method
from edgetune.precision import WEIGHT_BYTES
from edgetune.units import human, parse_bytes, seconds


@dataclass(frozen=True)
class Overhead:
    """What a process holds besides the step's tensors: the runtime (interpreter, libraries,
    the kernels' caches after a first step) and what the run loaded besides its weights
    (tokenizer, tokenized data), in bytes; `source` says where the runtime figure comes from."""

    runtime: float
    loaded: float = 0.0
    source: str = ""

    @property
    def total(self) -> float:
        return self.runtime + self.loaded

    def parts(self) -> str:
        def b(x: float) -> str:
            return human(x, "B", 1024)

        loaded = f" + tokenizer and data {b(self.loaded)}" if self.loaded else ""
        return f"runtime {b(self.runtime)}{loaded}"


NO_OVERHEAD = Overhead(0.0)


# -- shapes -----------------------------------------------------------------------------------
def model_shape(name: str) -> ModelShape:
    """The cost model's shape of a model, without its weights: a named paper shape
    (`alexatm-20b`), a registry name, a local model folder or .gguf file, or a hub id (its
    config is downloaded)."""
    if name in NAMED_SHAPES:
        return NAMED_SHAPES[name]
    from edgetune.models.registry import SPECS  # imports transformers' config classes

    if name in SPECS:
        return shape_from_config(SPECS[name].config().to_dict(), name)
    path = Path(name)
    if path.exists() and not path.is_file() and not (path / "config.json").is_file():
        raise EdgetuneError(f"{path} is not a model folder (no config.json in it)")
    from transformers import AutoConfig

    try:  # the full config: a saved config.json leaves out the class's defaults
        if path.suffix == ".gguf":
            config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
        else:
            config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as e:
        known = ", ".join(sorted([*SPECS, *NAMED_SHAPES]))
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EdgetuneError(
            f"unknown model {name!r}: not a registry name ({known}), a local folder or a "
            f"reachable hub id ({first})"
        ) from None
    return shape_from_config(config.to_dict(), name)


# -- one step ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepInputs:
    """What the cost model needs of a run besides its method: the model's shape, the
    micro-batch, the head and the share of positions the loss scores."""

    shape: ModelShape
    batch: int
    seq: int
    head: str = "lm"  # lm | classifier | none
    n_labels: int = 2
    tgt_seq: int = 0  # target tokens of an encoder-decoder
    scored: float = 1.0
    precision: Precision = field(default_factory=Precision)
    optimizer: str | None = None  # the method's own unless set (a cost-model experiment)
    held_bytes: float | None = None  # bytes per weight of a base held low (`model.weights`)
    checkpointing: bool = False  # blocks recompute their activations in the backward
    chunked_loss: bool = False  # a causal LM's logits formed a vocabulary chunk at a time
    lean_allocator: bool = False  # glibc maps every buffer of 128 KiB or more afresh


def predict(inputs: StepInputs, method: str, options: Any = None) -> StepCost:
    """The cost model's prediction of one step of `method` with `options` (its options object
    or a mapping)."""
    spec = get_method(method)
    opts = spec.parse(options)
    cost = step_cost(
        inputs.shape,
        spec.rule_for(opts),
        batch=inputs.batch,
        seq=inputs.seq,
        tgt_seq=inputs.tgt_seq if inputs.shape.kind == ENCODER_DECODER else 0,
        head=inputs.head,
        n_labels=max(2, inputs.n_labels),
        precision=inputs.precision,
        optimizer=inputs.optimizer or spec.optimizer(opts),
        scored=inputs.scored,
        label=spec.label(opts),
        held_bytes=inputs.held_bytes,
        checkpointing=inputs.checkpointing,
        chunked_loss=inputs.chunked_loss,
        **spec.cost_inputs(opts, inputs.shape),
    )
    mapped = MAPPED_LEAN if inputs.lean_allocator else MAPPED_DEFAULT  # the step's fresh pages
    return replace(cost, work=replace(cost.work, mapped_from=mapped))


# -- the forecast of a run and its budget -----------------------------------------------------
@dataclass(frozen=True)
class Forecast:
    cost: StepCost
    device: Device | None
    budget: float | None  # bytes the step may use (weights included)
    latency_s: float | None
    steps: int | None = None  # the run's optimizer steps, for its total time
    overhead: Overhead = NO_OVERHEAD  # the process around the step
    limit_name: str | None = None  # what sets `budget`: "the budget of 1 GiB", a cgroup's limit

    @property
    def peak(self) -> float:
        """The process's forecast peak resident memory: the overhead and the step's peak."""
        return self.overhead.total + self.cost.memory.peak

    @property
    def fits(self) -> bool | None:
        return None if self.budget is None else self.peak <= self.budget

    def line(self) -> str:
        """One line: FLOPs, the process's peak and its parts, latency and total time on the
        device, and the budget."""
        m = self.cost.memory

        def b(x: float) -> str:
            return human(x, "B", 1024)

        parts = [
            f"forecast ({self.cost.method}, batch {self.cost.batch} x {self.cost.seq}): "
            f"{human(self.cost.flops, 'FLOP')} per step",
            (
                f"process peak {b(self.peak)} = {self.overhead.parts()} + step {b(m.peak)} "
                if self.overhead.total
                else f"peak {b(m.peak)}, the step's tensors only "
            )
            + f"(weights {b(m.weights)}, grads {b(m.gradients)}, optimizer {b(m.optimizer)}, "
            f"activations {b(m.activations)}, working {b(m.workspace)}"
            + (f", split copies {b(m.copies)})" if m.copies else ")"),
        ]
        if self.device is not None:
            total = (
                ""
                if self.steps is None or self.latency_s is None
                else (f", {seconds(self.latency_s * self.steps)} for {self.steps} steps")
            )
            parts.append(f"on {self.device.name}: {seconds(self.latency_s)} per step{total}")
        if self.budget is not None:
            parts.append(f"{self.limit_name or 'budget ' + b(self.budget)}: "
                         f"{'fits' if self.fits else 'DOES NOT FIT'}")  # fmt: skip
        return "; ".join(parts)


def budget_bytes(budget: str | float | None, device: str | None) -> float | None:
    """The bytes the process may use: `budget` as given, else the device's memory, else
    None."""
    if budget is not None:
        return parse_bytes(budget)
    if device is not None:
        dev = load_device(device)
        if dev.memory is None:
            raise EdgetuneError(f"device {device} has no known memory size; pass a budget")
        return dev.memory.value
    return None


def alternatives(inputs: StepInputs, exclude: str) -> dict[str, StepCost]:
    """Every method's suggested option sets (its registry `suggestions`) at these inputs,
    except `exclude` (the run's own label)."""
    out = {}
    for spec in METHODS.values():
        for options in spec.suggestions:
            if inputs.held_bytes is not None and not runs_held(
                spec.rule_for(spec.parse(options)).trains
            ):
                continue
            cost = predict(inputs, spec.name, options)
            if cost.method != exclude:
                out[cost.method] = cost
    return out


def runs_held(trains: str) -> bool:
    """Whether a rule that trains `trains` can run over a base held in a low-precision format
    (it must leave the base's matrices frozen: adapters or a scheme's units)."""
    return trains in ("adapters", "scheme")


def held_alternatives(
    inputs: StepInputs, method: str, options: Any, limit: float, overhead: float = 0.0
) -> list[str]:
    """The lower-precision bases (`model.weights`) under which this method's step fits in
    `limit` bytes, with their process peaks (`overhead` bytes more; none for a method that
    changes every weight)."""
    spec = get_method(method)
    if not runs_held(spec.rule_for(spec.parse(options)).trains):
        return []
    out = []
    for fmt in ("q8_0", "q4_0"):
        if inputs.held_bytes is not None and WEIGHT_BYTES[fmt] >= inputs.held_bytes:
            continue
        cost = predict(replace(inputs, held_bytes=WEIGHT_BYTES[fmt]), method, options)
        if cost.memory.peak <= limit:
            out.append(f"model.weights={fmt} ({human(overhead + cost.memory.peak, 'B', 1024)})")
    return out


def check_budget(
    cost: StepCost,
    inputs: StepInputs,
    budget: str | float | None,
    device: str | None,
    steps: int | None = None,
    run: tuple[str, Any] | None = None,
    overhead: Overhead = NO_OVERHEAD,
    enforced: tuple[float, str] | None = None,
    clock: str | None = None,
) -> Forecast:
    """A forecast of the process (`overhead` and the step) against its limit: the budget
    (explicit bytes, else the device's memory), or the limit the system `enforced` on the
    process (bytes and what sets it, e.g. a cgroup's) where that is lower. A run that does not
    fit is refused, naming what would (`fitting_hint`). The step time is the device's, else
    `clock`'s (a profile that times steps without setting a budget: `this-machine`)."""
    dev = load_device(device) if device else None
    timer = dev
    if timer is None and clock is not None:
        timer = load_device(clock)
        if not timer.peak(inputs.precision.activations):
            timer = None  # not measured (this-machine before `edgetune bench hardware`)
    limit = budget_bytes(budget, device)
    where = None if limit is None else (
        f"{dev.name}'s {human(limit, 'B', 1024)}" if dev and budget is None
        else f"the budget of {human(limit, 'B', 1024)}"
    )  # fmt: skip
    if enforced is not None and (limit is None or enforced[0] < limit):
        limit, where = enforced[0], f"{enforced[1]} of {human(enforced[0], 'B', 1024)}"
    latency = step_time(cost, timer, inputs.precision.activations) if timer else None
    fc = Forecast(cost, timer, limit, latency, steps, overhead, where)
    if fc.fits is False:
        assert limit is not None
        hint = fitting_hint(inputs, cost, limit - overhead.total, overhead.total, run)
        parts = f"{overhead.parts()} + step" if overhead.total else "the step's tensors"
        raise EdgetuneError(
            f"this run needs about {human(fc.peak, 'B', 1024)} ({parts}: {cost.method}, batch "
            f"{cost.batch} x {cost.seq}), more than {where}; {hint}"
        )
    return fc


def fitting_hint(
    inputs: StepInputs,
    cost: StepCost,
    room: float,
    overhead: float,
    run: tuple[str, Any] | None,
) -> str:
    """What would fit when a step may take `room` bytes beside `overhead`: the run itself at
    a smaller batch or over a lower-precision base (`run`: its method and options), the
    methods' suggested alternatives; each with its forecast process peak."""

    def b(x: float) -> str:
        return human(overhead + x, "B", 1024)

    fitting = []
    if run is not None:

        def step_peak(n: int) -> float:
            return predict(replace(inputs, batch=n), *run).memory.peak

        if cost.batch > 1 and step_peak(1) <= room:
            n = largest_batch(step_peak, cost.batch - 1, room)
            fitting.append(f"this run at train.batch_size={n} ({b(step_peak(n))})")
        fitting += [f"this run with {h}" for h in held_alternatives(inputs, *run, room, overhead)]
    fitting += [f"{name} ({b(c.memory.peak)})"
                for name, c in alternatives(inputs, cost.method).items()
                if c.memory.peak <= room]  # fmt: skip
    if not fitting:
        return "nothing among the built-in alternatives fits: try a shorter sequence"
    return "what would fit: " + ", ".join(fitting)


def eval_batch(
    inputs: StepInputs,
    cost: StepCost,
    budget: float | None,
    largest: int,
    overhead: Overhead = NO_OVERHEAD,
) -> tuple[int, float]:
    """The evaluation's batch and its forecast process peak: the largest batch up to `largest`
    whose forward without autograd, beside what the run still holds then (the `overhead`, and
    the weights, optimizer state and split copies of `cost`), fits `budget` bytes (None:
    `largest`); refused when none does."""
    m = cost.memory
    held = overhead.total + m.weights + m.optimizer + m.copies

    def peak(batch: int) -> float:
        return held + eval_peak(inputs.shape, batch, inputs.seq, inputs.tgt_seq, inputs.head,
                                inputs.n_labels, inputs.precision, inputs.scored,
                                inputs.chunked_loss)  # fmt: skip

    if budget is None or peak(largest) <= budget:
        return largest, peak(largest)
    if peak(1) > budget:
        raise EdgetuneError(
            f"evaluating needs about {human(peak(1), 'B', 1024)} even at batch 1, more than the "
            f"budget of {human(budget, 'B', 1024)}; train without it (train.final_eval=false "
            "train.eval_every=0)"
        )
    low = largest_batch(peak, largest, budget)
    return low, peak(low)


def largest_batch(peak: Callable[[int], float], largest: int, limit: float) -> int:
    """The largest batch from 1 to `largest` whose `peak` fits `limit` (batch 1 must fit);
    the peak grows with the batch, so a bisection."""
    low, high = 1, largest
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if peak(mid) <= limit else (low, mid - 1)
    return low


# -- sweeps (`edgetune cost`) -----------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """One (method, context length) of a sweep, with fit and latency on a device and the
    change against backprop at the same length."""

    cost: StepCost
    device: str | None
    fits: bool | None
    latency_s: float | None
    bound: str
    macs_vs_backprop: float | None  # relative change, e.g. -0.3 = 30 % fewer
    memory_vs_backprop: float | None  # of the peak

    def to_dict(self) -> dict:
        c, m = self.cost, self.cost.memory
        return {
            "method": c.method, "model": c.model, "batch": c.batch, "seq": c.seq,
            "tgt_seq": c.tgt_seq, "macs": c.macs, "fwd_macs": c.fwd_macs,
            "bwd_macs": c.bwd_macs, "update_macs": c.update_macs, "flops": c.flops,
            "fwd_flops": c.fwd_flops, "bwd_flops": c.bwd_flops, "params": c.params,
            "trained_params": c.trained_params,
            "memory_bytes": {
                "weights": m.weights, "gradients": m.gradients, "optimizer": m.optimizer,
                "activations": m.activations, "workspace": m.workspace, "copies": m.copies,
                "total": m.total, "peak": m.peak,
            },
            "device": self.device, "fits": self.fits, "latency_s": self.latency_s,
            "bound": self.bound, "macs_vs_backprop": self.macs_vs_backprop,
            "memory_vs_backprop": self.memory_vs_backprop,
        }  # fmt: skip


def sweep(
    inputs: StepInputs,
    methods: dict[str, Any],
    seqs: list[int],
    device: Device | None = None,
) -> list[Row]:
    """One row per method (name -> its options) and context length; backprop at the same
    length is the reference of the 'vs' columns."""
    rows = []
    for seq in seqs:
        at = replace(inputs, seq=seq)
        ref = predict(at, "backprop")
        for name, options in methods.items():
            c = predict(at, name, options)
            fits = latency = None
            bound = "unknown"
            if device is not None:
                r = roofline(c, device, inputs.precision.activations)
                fits, bound = r.fits, r.bound
                latency = step_time(c, device, inputs.precision.activations)
            rows.append(Row(
                c, device.name if device else None, fits, latency, bound,
                c.macs / ref.macs - 1, c.memory.peak / ref.memory.peak - 1,
            ))  # fmt: skip
    return rows
