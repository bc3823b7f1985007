"""Rows of a cost report: one per (method, context length), ready for a table, JSON or a plot.

Used by `edgetune cost`. Each row carries MACs, FLOPs, the memory breakdown, fit and roofline
latency on a device, and the change of MACs and memory against backprop at the same length.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgetune.cost.device import Device, roofline
from edgetune.cost.methods import METHODS, Precision, StepCost, step_cost
from edgetune.cost.shapes import ModelShape
from edgetune.errors import EdgetuneError
from edgetune.plan.scheme import UpdateScheme


@dataclass(frozen=True)
class Row:
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
            "method": c.method,
            "model": c.model,
            "batch": c.batch,
            "seq": c.seq,
            "tgt_seq": c.tgt_seq,
            "macs": c.macs,
            "fwd_macs": c.fwd_macs,
            "bwd_macs": c.bwd_macs,
            "update_macs": c.update_macs,
            "flops": c.flops,
            "fwd_flops": c.fwd_flops,
            "bwd_flops": c.bwd_flops,
            "params": c.params,
            "trained_params": c.trained_params,
            "memory_bytes": {
                "weights": m.weights,
                "gradients": m.gradients,
                "optimizer": m.optimizer,
                "activations": m.activations,
                "workspace": m.workspace,
                "copies": m.copies,
                "total": m.total,
                "peak": m.peak,
            },
            "device": self.device,
            "fits": self.fits,
            "latency_s": self.latency_s,
            "bound": self.bound,
            "macs_vs_backprop": self.macs_vs_backprop,
            "memory_vs_backprop": self.memory_vs_backprop,
        }


def cost_rows(
    shape: ModelShape,
    methods: list[str],
    seqs: list[int],
    device: Device | None = None,
    batch: int = 1,
    dtype: str = "fp32",
    head: str = "lm",
    tgt_seq: int = 0,
    optimizer: str = "adamw",
    scheme: UpdateScheme | None = None,
    lora_rank: int = 8,
) -> list[Row]:
    """One row per method and context length; backprop is the reference of the 'vs' columns."""
    for m in methods:
        if m not in METHODS:
            raise EdgetuneError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    prec = (
        Precision.uniform(dtype) if dtype != "mixed" else Precision("bf16", "bf16", "fp32", "bf16")
    )
    rows = []
    for seq in seqs:
        kw = dict(batch=batch, seq=seq, tgt_seq=tgt_seq, head=head, precision=prec,
                  optimizer=optimizer, scheme=scheme, lora_rank=lora_rank)  # fmt: skip
        ref = step_cost(shape, "backprop", **kw)
        for m in methods:
            c = ref if m == "backprop" else step_cost(shape, m, **kw)
            fits = latency = None
            bound = "unknown"
            if device is not None:
                r = roofline(c, device, prec.activations)
                fits, latency, bound = r.fits, r.latency_s, r.bound
            rows.append(Row(
                c, device.name if device else None, fits, latency, bound,
                c.macs / ref.macs - 1, c.memory.peak / ref.memory.peak - 1,
            ))  # fmt: skip
    return rows


def human(n: float | None, unit: str = "", base: int = 1000) -> str:
    """1.23G, 45.6M ...; base 1024 gives binary prefixes (KiB, MiB, GiB)."""
    if n is None:
        return "?"
    for p in ("", "K", "M", "G", "T", "P"):
        if abs(n) < 1000 or p == "P":
            if not p:
                return f"{n:.0f}{unit}"
            return f"{n:.3g}{p}{'i' if base == 1024 else ''}{unit}"
        n /= base
    return f"{n}"


def seconds(s: float | None) -> str:
    if s is None:
        return "unknown"
    if s < 1:
        return f"{s * 1e3:.3g} ms"
    if s < 120:
        return f"{s:.3g} s"
    return f"{s / 60:.3g} min"
