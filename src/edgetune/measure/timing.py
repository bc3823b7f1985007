"""Wall time of a call, and of the forward pass a training step is compared with."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from edgetune.methods.base import Batch, forward_loss


def timed(fn: Callable[[], object]) -> float:
    """Seconds `fn()` takes (perf_counter)."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def forward(model: nn.Module, batch: Batch, train_mode: bool = False) -> None:
    """The training step's forward and loss (`forward_loss`: logits at the scored positions
    only, where the step forms only those) without autograd."""
    model.train(train_mode)
    with torch.no_grad():
        forward_loss(model, batch)


def inference_seconds(model: nn.Module, batch: Batch) -> float:
    """Seconds of one eval-mode forward (with the step's loss) without autograd on `batch`,
    the training step's physical floor; the model is left in train mode."""
    seconds = timed(lambda: forward(model, batch))
    model.train()
    return seconds
