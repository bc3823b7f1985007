"""`backprop`: full backpropagation with AdamW, the reference every other method is measured
against. Every parameter of the model that requires a gradient trains: all of them for
`backprop`; the adapters (and head) of a PEFT model for `lora`, which is this step on it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from edgetune.methods.base import Batch, MethodSettings, StepResult, backward_step, merged_model
from edgetune.methods.optim import lr_lambda, make_adamw
from edgetune.methods.state import load_named, named_trainable
from edgetune.placement import loss_scaler


class Backprop:
    def __init__(self, model: nn.Module, settings: MethodSettings, name: str = "backprop") -> None:
        self.name = name
        self.model = model
        self.settings = settings
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.eval_modules: list[nn.Module] = []
        self.optimizer = make_adamw(model, settings)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(settings))
        self.scaler = loss_scaler(model, settings.loss_scale)

    def step(self, batches: Sequence[Batch]) -> StepResult:
        return backward_step(self, batches)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return named_trainable(self.model)

    def load_trainable_state(self, state: Mapping[str, torch.Tensor]) -> None:
        load_named(self.model, state)

    def state_dict(self) -> dict[str, Any]:
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])

    def export_model(self) -> nn.Module:
        return merged_model(self.model)
