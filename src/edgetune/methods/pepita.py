"""`pepita` and `mempepita`: forward-only learning on transformer models (BERT, Llama, T5, ...).

The rule and its passes are in `edgetune.methods.pepita_core`; this module maps a model onto it:
- the modulated input is the embedding output (a forward hook on the embedding module adds F e;
  T5 has one per stack);
- the rule applies to every Linear of the chosen layers (`layers`: all, last-K, head) with the
  hidden form, and to the head's output layer (classifier, score, lm_head) with the last-layer
  form; norms and embeddings do not train;
- classification: e (B, C) and F e (B, d) is added to every position; LM: e is per token over the
  vocabulary (B, T, V) and F e (B, T, d) is added at the same positions (for a causal LM the
  error at t scores the token t + 1; T5's encoder gets the mean over the scored decoder tokens),
  which costs B T V d multiply-adds and a (d, V) matrix F;
- both passes run in eval mode (no dropout): the rule compares two passes, and dropout noise
  would dominate the difference h - h';
- the update is applied by plain SGD (momentum option, weight decay on matrices) with the run's
  learning-rate schedule; `mempepita` applies each layer's update inside the concatenated pass
  as soon as it is formed (modules that run more than once per forward, or share weights, wait
  for the end of the pass), so it never holds more than one layer's activations or update.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from edgetune.methods.base import Batch, MethodSettings, StepResult, check_finite, options_of
from edgetune.methods.optim import ParamSteppers, adamw_factory, sgd_factory
from edgetune.methods.options import PepitaOptions
from edgetune.methods.pepita_core import (
    PepitaCore,
    classification_loss,
    feedback_matrix,
    lm_loss,
    output_error,
)
from edgetune.methods.select import freeze_all, shared_parameters
from edgetune.methods.state import load_named
from edgetune.models.anatomy import Anatomy, describe, is_linear


class Pepita:
    """PEPITA (clean pass, modulated pass, every layer's update from the two); with
    lockstep=True, MEMPEPITA (the second pass runs [x ; x + F e] so no layer's activations
    outlive that layer)."""

    def __init__(self, model: nn.Module, settings: MethodSettings, lockstep: bool = False) -> None:
        self.name = "mempepita" if lockstep else "pepita"
        self.lockstep = lockstep
        self.options = options_of(settings, PepitaOptions, self.name)
        self.model, self.settings = model, settings
        anatomy = describe(model)
        modules = dict(model.named_modules())
        hidden_names = _hidden_modules(anatomy, self.options)
        self.hidden = {n: modules[n] for n in hidden_names if is_linear(modules[n])}
        self.output = {n: modules[n] for n in anatomy.output}
        self.targets = {**self.hidden, **self.output}
        freeze_all(model)
        self.params = _unique(p for m in self.targets.values() for p in m.parameters(False))
        self._shared = shared_parameters(model)

        d = model.get_input_embeddings().weight.shape[1]  # type: ignore[operator]
        config: Any = model.config  # a transformers config (nn.Module types it Tensor | Module)
        n_out = config.num_labels if anatomy.task == "classify" else config.vocab_size
        word_ids = getattr(model, "word_ids", None)
        if isinstance(word_ids, torch.Tensor):  # LabelWords
            n_out = len(word_ids)
        self.feedback = feedback_matrix(d, n_out, self.options.feedback_scale, settings.seed)
        causal, classify = anatomy.causal, anatomy.task == "classify"
        enc_dec = anatomy.family == "t5"
        inputs = [
            (modules[n], not (enc_dec and ".encoder." in f".{n}")) for n in anatomy.embeddings
        ]

        def loss(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
            if classify:
                return classification_loss(logits, batch["labels"])
            return lm_loss(logits, batch["labels"], causal)

        self.core = PepitaCore(
            run=self._run,
            hidden=self.hidden,
            output=self.output,
            inputs=inputs,
            feedback=self.feedback,
            loss=loss,
            error=lambda logits, batch: output_error(logits, batch["labels"], causal),
            lockstep=self.lockstep,
        )
        factory = (
            adamw_factory(settings)
            if self.options.optimizer == "adamw"
            else sgd_factory(settings, self.options.momentum)
        )
        self.steppers = ParamSteppers(self.params, settings, factory)

    def _run(self, batch: Batch) -> torch.Tensor:
        """The model's logits, without letting it compute its own loss."""
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        if (
            getattr(self.model.config, "is_encoder_decoder", False)
            and "decoder_input_ids" not in inputs
            and hasattr(self.model, "prepare_decoder_input_ids_from_labels")
            and "labels" in batch
        ):
            labels = batch["labels"]
            prepare = self.model.prepare_decoder_input_ids_from_labels  # a transformers method
            inputs["decoder_input_ids"] = prepare(labels=labels)  # type: ignore[operator]
        return self.model(**inputs).logits

    # -- protocol -------------------------------------------------------------------------
    def step(self, batches: Sequence[Batch]) -> StepResult:
        self.model.eval()
        self.steppers.begin()
        lr, total, done = self.steppers.lr, 0.0, set()

        def apply(module: nn.Module) -> None:
            for p in module.parameters(False):
                if id(p) not in self._shared:
                    self.steppers.step(p)
                    done.add(id(p))

        for i, batch in enumerate(batches):
            last = i == len(batches) - 1
            on_ready = apply if (self.lockstep and last) else None
            loss = self.core.accumulate(batch, 1.0 / len(batches), on_ready)
            check_finite(loss)
            total += loss / len(batches)
        for p in self.params:  # PEPITA: every update at the end; MEMPEPITA: the deferred ones
            if id(p) not in done:
                self.steppers.step(p)
        self.steppers.end()
        return StepResult(total, {"lr": lr})

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {
            f"{n}.{pn}": p.detach()
            for n, m in self.targets.items()
            for pn, p in m.named_parameters(recurse=False)
        }

    def load_trainable_state(self, state: Mapping[str, torch.Tensor]) -> None:
        load_named(self.model, state)

    def state_dict(self) -> dict[str, Any]:
        return {"steppers": self.steppers.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.steppers.load_state_dict(state["steppers"])

    def export_model(self) -> nn.Module:
        return self.model


def mempepita(model: nn.Module, settings: MethodSettings) -> Pepita:
    """The `mempepita` factory: PEPITA in lockstep."""
    return Pepita(model, settings, lockstep=True)


def _hidden_modules(anatomy: Anatomy, options: PepitaOptions) -> list[str]:
    first = options.first_block(anatomy.n_layers)
    names = [
        n
        for i in range(first, anatomy.n_layers)
        for u in ("qkv", "attn_out", "ffn1", "ffn2")
        for n in anatomy.modules(u, i)
    ]
    return names + [n for n in anatomy.head if n not in anatomy.output]


def _unique(params) -> list[torch.Tensor]:
    seen, out = set(), []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out
