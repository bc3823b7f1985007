"""`backprop`: full backpropagation with AdamW, the reference every other method is measured
against. Every parameter of the model trains."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from edgetune.methods.base import (
    Batch,
    MethodSettings,
    StepResult,
    check_finite,
    forward_loss,
    load_named,
    lr_lambda,
    named_trainable,
)
from edgetune.methods.common import fused_adamw


class Backprop:
    name = "backprop"

    def __init__(self, model: nn.Module, settings: MethodSettings) -> None:
        self.model = model
        self.settings = settings
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.eval_modules: list[nn.Module] = []
        self.optimizer = make_adamw(model, settings)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(settings))

    def step(self, batches: Sequence[Batch]) -> StepResult:
        return backward_step(self, batches)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return named_trainable(self.model)

    def load_trainable_state(self, state: Mapping[str, torch.Tensor]) -> None:
        load_named(self.model, state)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def export_model(self) -> nn.Module:
        return self.model


def make_adamw(model: nn.Module, settings: MethodSettings) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; no weight decay on biases and norms (1-D tensors).
    Fused (`fused_adamw`) where the parameters allow it."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": settings.weight_decay}]
    if rest:
        groups.append({"params": rest, "weight_decay": 0.0})
    return torch.optim.AdamW(groups, lr=settings.lr, fused=fused_adamw([*decay, *rest]))


def train_mode(method) -> None:
    """The model in train mode, except the modules the method lists in `eval_modules` (sparse:
    the frozen modules below the lowest trained one), which run without dropout."""
    method.model.train()
    for m in method.eval_modules:
        m.eval()


def backward_step(method, batches: Sequence[Batch]) -> StepResult:
    """Forward, backward, clip, optimizer step, schedule step, zero_grad, for any method that
    has `model`, `params`, `eval_modules`, `optimizer`, `scheduler` and `settings` (backprop,
    sparse, lora)."""
    train_mode(method)
    total = 0.0
    for batch in batches:
        loss = forward_loss(method.model, batch) / len(batches)
        loss.backward()
        total += loss.item()
    check_finite(total)
    metrics = {"lr": method.scheduler.get_last_lr()[0]}
    if method.settings.max_grad_norm:
        norm = torch.nn.utils.clip_grad_norm_(method.params, method.settings.max_grad_norm)
        metrics["grad_norm"] = float(norm)
    method.optimizer.step()
    method.scheduler.step()
    method.optimizer.zero_grad(set_to_none=True)
    return StepResult(total, metrics)
