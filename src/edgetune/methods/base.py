"""The `Method` protocol: what a learning rule gives the training loop, and shared pieces.

A method owns how parameters change (optimizer, schedule, perturbations); the loop owns data,
evaluation, checkpoints and logging. Methods are built from a model and `MethodSettings` by the
factory their registry entry names (`edgetune.methods.registry`); they are protocols, not
subclasses of a base class. Shared here: the loss every method takes (`forward_loss`) and the
step of the methods that backpropagate (`backward_step`).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import torch
from torch import nn

from edgetune.errors import EdgetuneError
from edgetune.fields import build
from edgetune.methods.chunked_loss import chunked_cross_entropy, plain_frozen_head
from edgetune.models.anatomy import inner_model
from edgetune.models.quantized import is_held

T = TypeVar("T")

# A batch as the collators build it: input_ids, attention_mask, labels (and decoder fields).
Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class MethodSettings:
    """What the loop tells a method when it is built.

    options holds the method's own settings (the run config's `method:` section): its options
    object (`edgetune.methods.options`), or a mapping that `options_of` reads into one.
    """

    lr: float
    total_steps: int
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "linear"
    max_grad_norm: float | None = 1.0
    seed: int = 0
    options: Any = field(default_factory=dict)
    loss_scale: bool = False  # fp16 compute: scale the loss so small gradients survive
    chunked_loss: bool = False  # a causal LM's loss chunk by chunk over the vocabulary


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
    settings: MethodSettings

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
        """The model to save once training is over, as a plain transformers model: LoRA merges
        its adapters and sparse its split weights here, in place (no second copy of the model
        at the end of a run), so the method does not train after it."""
        ...


class SendsSeeds(Method, Protocol):
    """What a method whose registry entry `sends` seeds adds (MeZO): its steps as (seed,
    projected gradient, learning rate) triples, `queries` of them a step, and their replay on
    another copy of the model, bit for bit (a federated server rebuilds a client's state from
    them)."""

    @property
    def queries(self) -> int:
        """History entries per step."""
        ...

    def clear_history(self) -> list[tuple[int, float, float]]:
        """The (seed, projected gradient, lr) of every step since the last call, forgotten."""
        ...

    def replay(
        self, seed: int, projected_grad: float, lr: float, weight_decay: float = 0.0
    ) -> None:
        """Apply one step's update from its (seed, projected gradient, lr)."""
        ...


# -- shared pieces --------------------------------------------------------------------------


def options_of(settings: MethodSettings, cls: type[T], method: str) -> T:
    """The method's options object: as given, or read from a mapping."""
    if isinstance(settings.options, cls):
        return settings.options
    return build(cls, settings.options or {}, "method", f"{method} option")


def forward_loss(model: nn.Module, batch: Batch, chunked: bool = False) -> torch.Tensor:
    """The model's loss on a batch: its own (HF models compute it from `labels`) or, for a
    causal LM whose loss skips positions (a prompt's, padding), the same mean cross-entropy
    with logits formed only where a label is: the head over the vocabulary runs on the
    scored rows, forward and backward, and the (rows, vocab) logits of the rest never exist.
    `chunked`: a causal LM with a frozen plain head forms its logits a vocabulary chunk at a
    time (`edgetune.methods.chunked_loss`), never whole."""
    labels = batch.get("labels")
    head = plain_frozen_head(model) if chunked and labels is not None and labels.ndim == 2 else None
    if head is not None:
        assert labels is not None
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        decoder = inner_model(model).get_decoder()
        hidden = decoder(**inputs).last_hidden_state  # (batch, seq, width)
        keep = labels[:, 1:] != -100  # position t predicts token t + 1
        return chunked_cross_entropy(hidden[:, :-1][keep], labels[:, 1:][keep], head)
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


def scored_share(model: nn.Module, batches: Iterable[Batch]) -> float:
    """Share of the batches' positions whose logits the loss forms (`scored_positions`; all
    where the model forms them everywhere)."""
    kept = total = 0
    for batch in batches:
        mask = scored_positions(model, batch)
        kept += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
        total += batch["input_ids"].numel()
    return kept / total if total else 1.0


def _keeps_logits(model: nn.Module) -> bool:
    """Whether `model` (or the model a PEFT wrapper holds) is a causal LM that takes
    `logits_to_keep`."""
    inner: nn.Module = inner_model(model)
    config = getattr(inner, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return False
    # mypy takes type(inner) for unhashable (its __hash__ is read as the instances' method)
    return _forward_takes_logits_to_keep(type(inner))  # type: ignore[arg-type]


@functools.cache
def _forward_takes_logits_to_keep(cls: type[nn.Module]) -> bool:
    """Read once per model class: the check runs on every training step."""
    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def merged_model(model: nn.Module) -> nn.Module:
    """The model to save: a PEFT model (`lora`, `mezo` over LoRA) merges its adapters into its
    base weights, in place, unless the base is held in a low-precision format: then the PEFT
    model itself, whose `save_pretrained` writes the adapter."""
    merge = getattr(model, "merge_and_unload", None)
    return merge() if merge is not None and not is_held(model) else model


def check_finite(loss: float) -> None:
    if not math.isfinite(loss):
        raise EdgetuneError(
            f"training loss became {loss}: lower the learning rate, or check the data"
        )


def train_mode(method) -> None:
    """The model in train mode, except the modules the method lists in `eval_modules` (sparse:
    the frozen modules below the lowest trained one), which run without dropout."""
    method.model.train()
    for m in method.eval_modules:
        m.eval()


def backward_step(method, batches: Sequence[Batch]) -> StepResult:
    """Forward, backward, clip, optimizer step, schedule step, zero_grad, for any method that
    has `model`, `params`, `eval_modules`, `optimizer`, `scheduler`, `scaler` and `settings`
    (backprop, sparse, lora)."""
    train_mode(method)
    total = 0.0
    scaler = method.scaler  # fp16 compute: a dynamic loss scaler (None otherwise)
    chunked = method.settings.chunked_loss
    for batch in batches:
        loss = forward_loss(method.model, batch, chunked) / len(batches)
        (loss if scaler is None else scaler.scale(loss)).backward()
        total += loss.item()
    check_finite(total)
    metrics = {"lr": method.scheduler.get_last_lr()[0]}
    if scaler is not None:
        scaler.unscale_(method.optimizer)
    if method.settings.max_grad_norm:
        norm = torch.nn.utils.clip_grad_norm_(method.params, method.settings.max_grad_norm)
        metrics["grad_norm"] = float(norm)
    if scaler is None:
        method.optimizer.step()
    else:  # skips the step when a gradient overflowed, and adapts the scale
        scaler.step(method.optimizer)
        scaler.update()
    method.scheduler.step()
    method.optimizer.zero_grad(set_to_none=True)
    return StepResult(total, metrics)
