"""The `Method` protocol: what a learning rule gives the training loop, and shared pieces.

A method owns how parameters change (optimizer, schedule, perturbations); the loop owns data,
evaluation, checkpoints and logging. Methods are built by a factory in `edgetune.methods` from
a model and `MethodSettings`; they are protocols, not subclasses of a base class.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from edgetune.errors import EdgetuneError

# A batch as the collators build it: input_ids, attention_mask, labels (and decoder fields).
Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class MethodSettings:
    """What the loop tells a method when it is built.

    options holds the method's own settings from the run config's `method:` section; each
    method validates them in its own options dataclass.
    """

    lr: float
    total_steps: int
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "linear"
    max_grad_norm: float | None = 1.0
    seed: int = 0
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class StepResult:
    """The outcome of one optimizer step: the batch's training loss before the update and
    method-specific numbers (gradient norm, projected gradient, ...)."""

    loss: float
    metrics: dict[str, float] = field(default_factory=dict)


class Method(Protocol):
    """A learning rule. `model` is the module the loop evaluates and saves."""

    name: str
    model: nn.Module

    def step(self, batches: Sequence[Batch]) -> StepResult:
        """One optimizer step over micro-batches (gradient accumulation when more than one)."""
        ...

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The tensors this method changes, by name: what a checkpoint or a federated client
        ships."""
        ...

    def load_trainable_state(self, state: Mapping[str, torch.Tensor]) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        """Optimizer, schedule and internal state needed to resume bit-for-bit."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...

    def export_model(self) -> nn.Module:
        """The model to save at the end of a run (LoRA merges its adapters here)."""
        ...


# -- shared pieces --------------------------------------------------------------------------


def lr_lambda(settings: MethodSettings):
    """Multiplier of the base learning rate at each step: linear warm-up, then the schedule."""
    warm, total, kind = settings.warmup_steps, max(1, settings.total_steps), settings.schedule
    if kind not in ("linear", "cosine", "constant"):
        raise EdgetuneError(f"unknown schedule {kind!r}; use linear, cosine or constant")

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return 1.0 - progress if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def forward_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """The model's loss on a batch: its own (HF models compute it from `labels`) or, for a
    causal LM whose loss skips positions (a prompt's, padding), the same mean cross-entropy
    with logits formed only where a label is: the head over the vocabulary runs on the
    scored rows, forward and backward, and the (rows, vocab) logits of the rest never exist."""
    mask = scored_positions(model, batch)
    if mask is None:
        return model(**batch).loss
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, logits_to_keep=mask).logits  # (scored rows, vocab)
    targets = batch["labels"][:, 1:][mask[:, :-1]]  # position t predicts token t + 1
    return nn.functional.cross_entropy(logits.float(), targets)


def scored_positions(model: nn.Module, batch: Batch) -> torch.Tensor | None:
    """(batch, seq) bool: the positions whose next token is labelled, where `model` is a
    causal LM that can form logits at chosen positions only (`logits_to_keep`) and the
    labels skip at least one position; None where the model's own loss is as cheap."""
    labels = batch.get("labels")
    if labels is None or labels.ndim != 2 or not _keeps_logits(model):
        return None
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != -100
    if not mask.any() or bool(mask[:, :-1].all()):
        return None
    return mask


def _keeps_logits(model: nn.Module) -> bool:
    """Whether `model` (or the model a PEFT wrapper holds) is a causal LM that takes
    `logits_to_keep`."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(inner, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return False
    return _forward_takes_logits_to_keep(type(inner))


@functools.cache
def _forward_takes_logits_to_keep(cls: type) -> bool:
    """Read once per model class: the check runs on every training step."""
    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def check_finite(loss: float) -> None:
    if not math.isfinite(loss):
        raise EdgetuneError(
            f"training loss became {loss}: lower the learning rate, or check the data"
        )


def named_trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that require grad, detached, by name."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def load_named(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy tensors into the model's parameters by name, checking names and shapes; tied
    parameters answer to every name."""
    params = dict(model.named_parameters(remove_duplicate=False))
    for name, value in state.items():
        if name not in params:
            raise EdgetuneError(f"checkpoint tensor {name!r} does not exist in this model")
        if params[name].shape != value.shape:
            raise EdgetuneError(
                f"checkpoint tensor {name!r} has shape {tuple(value.shape)}, "
                f"the model expects {tuple(params[name].shape)}"
            )
        with torch.no_grad():
            params[name].copy_(value)
