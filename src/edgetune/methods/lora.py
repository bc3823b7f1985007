"""`lora`: low-rank adapters through PEFT (Hu et al. 2021), AdamW like `backprop`.

W x becomes W x + (alpha / r) B A x with A (r, in), B (out, r), B = 0 at the start; W stays
frozen. Targets default to the qkv projections of every block (names from
`edgetune.models.anatomy`, per family); for classification the task head trains whole
(`modules_to_save`), for LM tasks the head stays frozen (a tied LM head is the embedding matrix).
`trainable_state()` is the adapters plus the head; `export_model()` merges the adapters into
the model's weights in place (`merge_and_unload`) so the saved model is a plain transformers
model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from edgetune.errors import EdgetuneError
from edgetune.methods.base import Batch, MethodSettings, StepResult, backward_step, options_of
from edgetune.methods.optim import lr_lambda, make_adamw
from edgetune.methods.options import LoraOptions
from edgetune.methods.state import load_named, named_trainable
from edgetune.models.anatomy import describe
from edgetune.scheme import UNITS


class Lora:
    name = "lora"

    def __init__(self, model: nn.Module, settings: MethodSettings) -> None:
        from peft import LoraConfig, get_peft_model

        self.options = options_of(settings, LoraOptions, self.name)
        self.settings = settings
        anatomy = describe(model)
        targets: list[str] = []
        for t in self.options.target_modules:
            targets += anatomy.leaf_names(t) if t in UNITS and t != "head" else [t]
        train_head = self.options.train_head
        if train_head is None:
            train_head = anatomy.task == "classify"
        # head roots: top-level head modules ("classifier", "score") and the pooler
        roots = {
            n[: n.index(".pooler") + 7] if ".pooler" in n else n.split(".")[0] for n in anatomy.head
        }
        to_save = sorted(roots) if train_head and roots else None
        config = LoraConfig(
            r=self.options.r,
            lora_alpha=self.options.alpha,
            lora_dropout=self.options.dropout,
            target_modules=sorted(set(targets)),
            modules_to_save=to_save,
            fan_in_fan_out=anatomy.family == "gpt2",  # GPT-2's Conv1D stores W as (in, out)
        )
        try:
            self.model = get_peft_model(model, config)
        except ValueError as e:
            raise EdgetuneError(f"lora: {e}") from None
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.eval_modules: list[nn.Module] = []
        self.optimizer = make_adamw(self.model, settings)
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
        """The base model with the adapters merged into its weights, in place."""
        return self.model.merge_and_unload()
