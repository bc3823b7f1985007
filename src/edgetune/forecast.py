"""The forecast `edgetune finetune` prints before training, and the budget check behind
`--budget 256MB` / `--device rpi4`: the cost model's prediction of one step of this run."""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgetune.cost import Device, StepCost, load_device, roofline, shape_from_config, step_cost
from edgetune.cost.table import human, seconds
from edgetune.errors import EdgetuneError

_UNITS = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 2**10, "mib": 2**20,
          "gib": 2**30}  # fmt: skip


def parse_bytes(text: str) -> float:
    """'256MB' -> 256e6, '1.5GiB' -> 1.5 * 2**30 (decimal and binary units, case-insensitive)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise EdgetuneError(f"cannot read {text!r} as a memory size; write e.g. 256MB or 1.5GiB")
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if value <= 0:
        raise EdgetuneError(f"a memory budget must be positive, got {text!r}")
    return value


@dataclass(frozen=True)
class Forecast:
    cost: StepCost
    device: Device | None
    budget: float | None  # bytes the step may use
    latency_s: float | None

    @property
    def fits(self) -> bool | None:
        return None if self.budget is None else self.cost.memory.peak <= self.budget

    def line(self) -> str:
        m = self.cost.memory

        def b(x: float) -> str:
            return human(x, "B", 1024)

        parts = [
            f"forecast ({self.cost.method}, batch {self.cost.batch} x {self.cost.seq}): "
            f"{human(self.cost.flops, 'FLOP')} per step",
            f"peak {b(m.peak)} (weights {b(m.weights)}, grads {b(m.gradients)}, optimizer "
            f"{b(m.optimizer)}, activations {b(m.activations)}, working {b(m.workspace)}"
            + (f", split copies {b(m.copies)})" if m.copies else ")"),
        ]
        if self.device is not None:
            parts.append(f"on {self.device.name}: {seconds(self.latency_s)} per step")
        if self.budget is not None:
            parts.append(
                f"budget {human(self.budget, 'B', 1024)}: {'fits' if self.fits else 'DOES NOT FIT'}"
            )
        return "; ".join(parts)


def _optimizer(method: str, options: dict) -> str:
    if method in ("backprop", "sparse", "lora"):
        return "adamw"
    if method in ("pepita", "mempepita") and float(options.get("momentum", 0) or 0) > 0:
        return "sgd-momentum"
    return "sgd"


def forecast_step(
    model_config: dict,
    method: str,
    *,
    task: str,
    batch: int,
    seq: int,
    n_labels: int = 2,
    scheme=None,
    options: dict | None = None,
) -> StepCost:
    """The cost model's prediction of one step of `method` on this model and batch."""
    options = options or {}
    shape = shape_from_config(model_config)
    head = "classifier" if task == "classify" else "lm"
    lora_units = ("q", "k", "v")
    return step_cost(
        shape,
        method,
        batch=batch,
        seq=seq,
        tgt_seq=max(8, seq // 4) if shape.kind == "encoder-decoder" else 0,
        head=head,
        n_labels=n_labels,
        optimizer=_optimizer(method, options),
        scheme=scheme,
        lora_rank=int(options.get("r", 8)),
        lora_units=lora_units,
    )


def forecast_run(p, budget: str | None, device: str | None) -> Forecast:
    """The forecast of a prepared run (`edgetune.train.Prepared`), checked against the budget;
    the alternatives named on refusal are the other methods at the same batch."""
    from edgetune.plan.scheme import UpdateScheme

    cfg = p.cfg
    common = dict(task=p.data.task, batch=cfg.train.batch_size, seq=cfg.data.seq_len,
                  n_labels=max(2, len(p.data.labels)))  # fmt: skip
    config = p.loaded.model.config.to_dict()
    cost = forecast_step(config, cfg.train.method, scheme=getattr(p.method, "scheme", None),
                         options=cfg.method, **common)  # fmt: skip
    n_layers = shape_from_config(config).n_layers
    others = {
        "sparse bias-only": ("sparse", UpdateScheme.bias_only(n_layers)),
        "sparse qkv-ffn1-2": ("sparse", UpdateScheme.qkv_ffn1(n_layers, min(2, n_layers))),
        "lora": ("lora", None), "mempepita": ("mempepita", None), "mezo": ("mezo", None),
    }  # fmt: skip
    alternatives = {
        name: forecast_step(config, method, scheme=scheme, **common)
        for name, (method, scheme) in others.items()
        if method != cfg.train.method or scheme is not None
    }
    return check_budget(cost, budget, device, alternatives)


def check_budget(
    cost: StepCost, budget: str | None, device: str | None, alternatives: dict[str, StepCost]
) -> Forecast:
    """A forecast against the budget (explicit bytes, else the device's memory). A step that
    does not fit is refused, naming the alternatives that would."""
    dev = load_device(device) if device else None
    limit = parse_bytes(budget) if budget else (dev.memory.value if dev and dev.memory else None)
    latency = roofline(cost, dev).latency_s if dev else None
    fc = Forecast(cost, dev, limit, latency)
    if fc.fits is False:
        fitting = [
            f"{name} ({human(c.memory.peak, 'B', 1024)})"
            for name, c in alternatives.items()
            if c.memory.peak <= limit
        ]
        where = (
            f"{dev.name}'s {human(limit, 'B', 1024)}"
            if dev and not budget
            else human(limit, "B", 1024)
        )
        hint = (
            ("what would fit: " + ", ".join(fitting))
            if fitting
            else ("nothing among the built-in alternatives fits: try a smaller batch or sequence")
        )
        raise EdgetuneError(
            f"this run needs about {human(cost.memory.peak, 'B', 1024)} per step "
            f"({cost.method}, batch {cost.batch} x {cost.seq}), more than {where}; {hint}"
        )
    return fc
