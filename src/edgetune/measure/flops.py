"""Measured FLOPs of a model's forward and forward+backward, from PyTorch's flop counter.

`torch.utils.flop_counter.FlopCounterMode` counts matrix products (mm, addmm, bmm, baddbmm,
convolutions, scaled-dot-product attention kernels) at 2 FLOPs per multiply-accumulate. It does
not count element-wise work: softmax, norms, activations, residual adds, the loss, embedding
lookups and optimizer updates. `edgetune.cost` adds its own estimate of those to `flops`
(`fwd_elementwise`, `bwd_elementwise`), so compare the counter with the cost model's
`2 * fwd_macs` and `2 * bwd_macs`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class MeasuredFlops:
    forward: int
    backward: int

    @property
    def total(self) -> int:
        return self.forward + self.backward


def count_flops(loss_fn: Callable[[], torch.Tensor], backward: bool = True) -> MeasuredFlops:
    """FLOPs of `loss_fn()` (a closure running the model and returning a scalar loss) and,
    if `backward`, of `loss.backward()`. Gradients left in `.grad` are the caller's to clear."""
    with FlopCounterMode(display=False) as fwd:
        loss = loss_fn()
    f = fwd.get_total_flops()
    if not backward:
        return MeasuredFlops(f, 0)
    with FlopCounterMode(display=False) as bwd:
        loss.backward()
    return MeasuredFlops(f, bwd.get_total_flops())
