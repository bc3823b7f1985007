"""`hybrid`: backpropagation on the top blocks, zeroth-order below them (ElasticZO-style).

A boundary block k (`backprop_blocks`: the top n - k blocks): the blocks from k up and the
head train by backprop, as `sparse` trains its scheme (the last-N scheme, or a sparser scheme
over the same blocks); the input embeddings and the blocks below k train by MeZO's SPSA with
the seed trick, over all their weights or LoRA factors on them (`zo_trainable`). One step, with
z drawn from the step's seed (`edgetune.methods.mezo.Directions`):

    L- = L(bottom - eps z)       no graph anywhere (the top's dropout masks recorded)
    L+ = L(bottom + eps z)       autograd from block k up only (nothing below requires a
                                 gradient: the bottom runs without a graph), then its backward:
                                 the top's gradients at the perturbed bottom; the same masks
    bottom <- bottom - zo_lr (g z + wd bottom),  g = (L+ - L-) / (2 eps)
    top    <- AdamW step on its gradients (clipped, scheduled), `sparse`'s own step

Both losses are taken before either update, at the same parameters. The stored bottom weights
are never written by the two evaluations (MeZO's exact restoration); only the update writes
them. The memory is a sparse step's over the top blocks (activations saved from block k up,
the top's gradients and AdamW state) plus one module's perturbed copy; the compute is a sparse
step's plus one forward without a graph. With `zo_trainable: frozen` the step is exactly
`sparse`'s over the top scheme.

Names: the trainable state of the top is sparse's (row keys for split weights); the bottom's
tensors by their parameter names in the transformers model (inside the PEFT wrapper when the
bottom trains LoRA factors).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from edgetune.errors import EdgetuneError
from edgetune.methods.backprop import Backprop
from edgetune.methods.base import (
    Batch,
    MethodSettings,
    StepResult,
    backward_step,
    check_finite,
    forward_loss,
    merged_model,
    options_of,
    train_mode,
)
from edgetune.methods.lora import adapt, head_roots
from edgetune.methods.mezo import Directions, ZoTensor
from edgetune.methods.optim import lr_lambda
from edgetune.methods.options import HybridOptions, SparseOptions
from edgetune.methods.select import frozen_prefix
from edgetune.methods.sparse import Sparse
from edgetune.methods.state import copy_checked
from edgetune.models.anatomy import describe, inner_model
from edgetune.models.quantized import is_held
from edgetune.seeds import mix_seed


class Hybrid:
    name = "hybrid"

    def __init__(self, model: nn.Module, settings: MethodSettings) -> None:
        self.options = o = options_of(settings, HybridOptions, self.name)
        if is_held(model) and o.zo_trainable == "all":
            raise EdgetuneError(
                "hybrid with zo_trainable all changes the bottom's weights, and model.weights "
                "holds them frozen in a low-precision format: use zo_trainable lora or frozen, "
                "or model.weights=fp32"
            )
        anatomy = describe(model)
        n = anatomy.n_layers
        self.boundary = k = o.boundary(n)
        top_lora = o.top_lora(n)
        # the top: its blocks, their units' modules outside them (a stack's final norm), the head
        units = [m for (_, i), names in anatomy.units.items() if i >= k for m in names]
        top_names = (*anatomy.blocks[k:], *anatomy.head, *head_roots(anatomy), *units)
        lora = o.lora
        targets: tuple[str, ...] = ()
        if lora is not None:  # adapters on the bottom blocks' units only
            targets = anatomy.unit_modules(lora.target_modules, range(k))
            if not targets:
                raise EdgetuneError(
                    "hybrid: zo_trainable lora needs blocks below the boundary; lower "
                    "backprop_blocks or use zo_trainable frozen"
                )
        if top_lora is not None:  # one PEFT model: the top's adapters and the bottom's
            targets += anatomy.unit_modules(top_lora.target_modules, range(k, n))
            model = adapt(model, replace(top_lora, target_modules=targets, layers="all"))
        elif lora is not None:
            model = adapt(model, replace(lora, target_modules=targets))
        self.model, self.settings = model, settings
        self.lam = lr_lambda(settings)
        base = inner_model(model)
        self.top: Sparse | Backprop
        if top_lora is None:  # sparse backprop over its scheme (freezes the rest, SplitLinears)
            top = SparseOptions(scheme=o.top_scheme(n), dropout=o.dropout)
            self.top = Sparse(base, replace(settings, options=top))
        else:  # AdamW over the top's adapters (and a new classifier head) only
            below = tuple(f"{m}." for m in (*anatomy.embeddings, *anatomy.blocks[:k]))
            for name, p in base.named_parameters():
                if name.startswith(below):  # the bottom's adapters move by SPSA only
                    p.requires_grad_(False)
            self.top = Backprop(model, replace(settings, options=top_lora), name="lora")
            self.top.eval_modules = frozen_prefix(base, anatomy)  # the bottom: no dropout
        self.steps = 0
        self.directions: Directions | None = None
        if o.zo_trainable == "frozen":
            return
        # the bottom: every other parameter (embedding tables, the blocks under k) that
        # backprop does not train (a tied head's table does)
        tensors = [
            ZoTensor(n, p, None)
            for n, p in base.named_parameters()
            if not p.requires_grad
            and not any(n.startswith(f"{t}.") for t in top_names)
            and (lora is None or ".lora_" in n)
        ]
        if not tensors:
            raise EdgetuneError(
                f"hybrid: nothing below the boundary to train by zeroth-order "
                f"(backprop_blocks={o.backprop_blocks}); use zo_trainable frozen"
            )
        self.directions = Directions(base, tensors, o.perturbation_rank)

    def step(self, batches: Sequence[Batch]) -> StepResult:
        d = self.directions
        if d is None:
            return backward_step(self.top, batches)
        seed = mix_seed(self.settings.seed, self.steps)
        eps = self.options.eps
        train_mode(self.top)  # the bottom in eval mode (no dropout), as MeZO's
        cuda = sorted({p.device.index or 0 for p in self.top.params if p.device.type == "cuda"})
        # L- first; fork_rng gives the random state back on exit, so L+ draws the same
        # dropout masks in the top
        rng = torch.random.fork_rng(devices=cuda, device_type="cuda")
        with rng, torch.no_grad(), d.perturbed(seed, -eps):
            chunked = self.settings.chunked_loss
            minus = sum(float(forward_loss(self.top.model, b, chunked)) for b in batches)
            minus /= len(batches)
        check_finite(minus)
        with d.perturbed(seed, eps):  # the top's backward at the perturbed bottom, its update
            result = backward_step(self.top, batches)
        plus = result.loss
        g = (plus - minus) / (2 * eps)
        zo_lr = self.options.zo_lr * self.lam(self.steps)
        d.replay(seed, g, zo_lr, self.settings.weight_decay)
        self.steps += 1
        metrics = {**result.metrics, "projected_grad": g, "loss_plus": plus,
                   "loss_minus": minus, "zo_lr": zo_lr}  # fmt: skip
        return StepResult((plus + minus) / 2, metrics)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        state = self.top.trainable_state()
        if self.directions is not None:
            state.update({t.key: t.view().detach() for t in self.directions.tensors})
        return state

    def load_trainable_state(self, state: Mapping[str, torch.Tensor]) -> None:
        bottom = {t.key: t for t in self.directions.tensors} if self.directions else {}
        top = {k: v for k, v in state.items() if k not in bottom}
        self.top.load_trainable_state(top)
        for key, value in state.items():
            if key in bottom:
                copy_checked(bottom[key].view(), value, key)

    def state_dict(self) -> dict[str, Any]:
        return {"top": self.top.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.top.load_state_dict(state["top"])
        self.steps = int(state["steps"])

    def export_model(self) -> nn.Module:
        """Sparse's split weights merged back, then the adapters merged (PEFT)."""
        if isinstance(self.top, Sparse):
            self.top.export_model()  # in place, on the transformers model inside
        return merged_model(self.model)
