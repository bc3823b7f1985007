"""`sparse`: PockEngine-style sparse backpropagation over an `UpdateScheme`.

Only what the scheme names trains; every other parameter (embeddings included) has
requires_grad off, so autograd builds no graph below the lowest trainable module and never forms
a gradient the scheme does not need. A weight trained at a fraction of its output channels is
replaced by a `SplitLinear` that holds the trained rows as a Parameter and the frozen rows as a
buffer, so only the trained rows' dW is ever formed. Over a base held in a low-precision format
(`model.weights`), the trained rows are dequantized into an fp32 Parameter and the frozen rows
stay held (a `QuantLinear` over the same blocks); a held weight trained whole becomes an fp32
Linear; the exported model is dense fp32 again. With `in_place`, each parameter's AdamW
update runs inside its post-accumulate-grad hook and frees the gradient at once, so gradients of
different parameters never coexist (PockEngine's operator reordering).

Checkpoint names: see `edgetune.methods.state` (row keys `name[0:k]`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from edgetune.errors import EdgetuneError
from edgetune.methods.base import (
    Batch,
    MethodSettings,
    StepResult,
    backward_step,
    check_finite,
    forward_loss,
    options_of,
    train_mode,
)
from edgetune.methods.optim import ParamSteppers, adamw_factory, lr_lambda, make_adamw
from edgetune.methods.options import SparseOptions
from edgetune.methods.select import (
    freeze_all,
    frozen_prefix,
    plan_modules,
    plan_parameters,
    shared_parameters,
)
from edgetune.methods.state import copy_checked, parse_key, row_key
from edgetune.models.anatomy import describe, is_conv1d, linear_weight, set_module
from edgetune.models.lowbit import densify
from edgetune.models.quantized import QuantLinear
from edgetune.placement import loss_scaler
from edgetune.scheme import resolve_scheme


class SplitLinear(nn.Module):
    """A Linear (or GPT-2 Conv1D) whose first `rows` output channels train and the rest do not.

    weight_train (rows, in) is a Parameter, weight_frozen (out - rows, in) a buffer; the output
    is cat([x W_t^T + b[:rows], x W_f^T + b[rows:]]), so autograd forms dW for W_t only. The
    trained rows are a copy; the frozen rows are a view of the original weight where its rows
    are contiguous (a Linear), so the split adds the trained rows only, whether the original
    is memory-mapped or not.
    """

    weight_frozen: torch.Tensor | None  # a buffer (register_buffer); None when held

    def __init__(self, module: nn.Module, rows: int, train_bias: bool) -> None:
        super().__init__()
        self.rows, self.conv1d = rows, is_conv1d(module)
        self.held: QuantLinear | None = None
        if isinstance(module, QuantLinear):  # the frozen rows stay held, as they were
            out = module.out_features
            self.weight_train = nn.Parameter(module.packed.dense(0, rows))
            self.held = QuantLinear(module.rows(rows, out).packed, None)
            self.register_buffer("weight_frozen", None)
        else:
            w = linear_weight(module).detach()  # (out, in)
            self.weight_train = nn.Parameter(w[:rows].clone())
            frozen = w[rows:]
            self.register_buffer("weight_frozen",
                                 frozen if frozen.is_contiguous() else frozen.clone())  # fmt: skip
        b = cast("torch.Tensor | None", module.bias)
        self.bias = None if b is None else nn.Parameter(b.detach().clone(), train_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, k = self.bias, self.rows
        trained = F.linear(x, self.weight_train, None if b is None else b[:k])
        if self.held is not None:
            frozen = self.held(x)
            frozen = frozen if b is None else frozen + b[k:].to(frozen.dtype)
        else:
            assert self.weight_frozen is not None  # dense frozen rows
            frozen = F.linear(x, self.weight_frozen, None if b is None else b[k:])
        return torch.cat([trained.to(frozen.dtype), frozen], dim=-1)  # (..., out)

    def merged(self) -> nn.Module:
        """A plain nn.Linear (or Conv1D) with the trained and frozen rows put back together."""
        rest = self.held.packed.dense() if self.held is not None else self.weight_frozen
        assert rest is not None
        w = torch.cat([self.weight_train.detach(), rest], 0)  # (out, in)
        if self.conv1d:
            from transformers.pytorch_utils import Conv1D

            m: nn.Module = Conv1D(w.shape[0], w.shape[1])
            m.weight = nn.Parameter(w.t().contiguous())
        else:
            m = nn.Linear(w.shape[1], w.shape[0], bias=self.bias is not None)
            m.weight = nn.Parameter(w)
        if self.bias is not None:
            m.bias = nn.Parameter(self.bias.detach().clone())
        return m.to(w.dtype)

    def extra_repr(self) -> str:
        frozen = self.held.qweight if self.held is not None else self.weight_frozen
        out = self.rows + (0 if frozen is None else frozen.shape[0])
        return f"trained rows {self.rows}/{out}, in={self.weight_train.shape[1]}"


def _tied(module: nn.Module, shared: set[int]) -> bool:
    """Whether the module's weight is also another module's (a tied LM head)."""
    if isinstance(module, QuantLinear):
        return id(module.packed) in shared
    return id(module.weight) in shared


class Sparse:
    name = "sparse"

    def __init__(self, model: nn.Module, settings: MethodSettings) -> None:
        self.options = options_of(settings, SparseOptions, self.name)
        self.model, self.settings = model, settings
        anatomy = describe(model)
        scheme = self.options.scheme or SparseOptions.DEFAULT_SCHEME
        self.scheme = resolve_scheme(scheme, anatomy.n_layers)
        self.plans = plan_modules(model, anatomy, self.scheme)
        if not self.plans:
            raise EdgetuneError(f"scheme {self.scheme.name!r} trains nothing in this model")
        for plan in self.plans:  # a held weight that trains whole trains as an fp32 Linear
            if isinstance(plan.module, QuantLinear) and plan.rows == plan.out:
                plan.module = plan.module.dense_linear()
                set_module(model, plan.name, plan.module)
        shared = shared_parameters(model)
        freeze_all(model)
        self.split: dict[str, SplitLinear] = {}
        for plan in self.plans:
            for _, p in plan_parameters(plan):
                p.requires_grad_(True)
            if plan.split:
                if _tied(plan.module, shared):
                    raise EdgetuneError(
                        f"{plan.name} shares its weight with another module (tied); train it "
                        "whole or not at all, not a fraction of its channels"
                    )
                self.split[plan.name] = SplitLinear(plan.module, plan.rows, plan.bias)
                set_module(model, plan.name, self.split[plan.name])
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.options.dropout:
            self.eval_modules = [model]
        else:
            self.eval_modules = [] if self.options.frozen_dropout else frozen_prefix(model, anatomy)
        # A trained tied head (lm_head = embeddings) must not open a path into the embedding
        # lookup: detach the embedding output so backward stops at the lowest scheme module.
        self._handles: list[Any] = []
        self._embeddings = [model.get_submodule(n) for n in anatomy.embeddings]
        self._tensor_hooks = bool(self.options.in_place)
        self._register_hooks()
        if self.options.in_place:
            if settings.max_grad_norm:
                raise EdgetuneError(
                    "sparse in_place updates each parameter as soon as its gradient exists, so "
                    "it cannot clip the global gradient norm: set max_grad_norm to null"
                )
            if settings.loss_scale:
                raise EdgetuneError(
                    "sparse in_place updates each parameter inside its backward, before an "
                    "fp16 loss scale could be checked for overflow: use train.dtype=bf16 or fp32"
                )
            self.steppers = ParamSteppers(self.params, settings, adamw_factory(settings))
            self._apply_now = False
        else:
            self.optimizer = make_adamw(model, settings)
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(settings))
        self.scaler = loss_scaler(model, settings.loss_scale)

    # -- hooks ----------------------------------------------------------------------------
    def _register_hooks(self) -> None:
        if any(p.requires_grad for m in self._embeddings for p in m.parameters()):
            for m in self._embeddings:
                self._handles.append(m.register_forward_hook(lambda _m, _i, out: out.detach()))
        if self._tensor_hooks:
            for p in self.params:
                self._handles.append(p.register_post_accumulate_grad_hook(self._on_grad))

    def _on_grad(self, p: torch.Tensor) -> None:
        # Called once per backward after p.grad is complete; earlier micro-batches only
        # accumulate, the last one applies the update and frees the gradient.
        if self._apply_now:
            self.steppers.step(p)

    # -- protocol -------------------------------------------------------------------------
    def step(self, batches: Sequence[Batch]) -> StepResult:
        if not self.options.in_place:
            return backward_step(self, batches)
        train_mode(self)
        self.steppers.begin()
        lr, total = self.steppers.lr, 0.0
        for i, batch in enumerate(batches):
            loss = forward_loss(self.model, batch, self.settings.chunked_loss) / len(batches)
            check_finite(loss.item())
            self._apply_now = i == len(batches) - 1
            loss.backward()
            total += loss.item()
        self._apply_now = False
        self.steppers.end()
        return StepResult(total, {"lr": lr})

    def trainable_state(self) -> dict[str, torch.Tensor]:
        state: dict[str, torch.Tensor] = {}
        for plan in self.plans:
            if plan.name in self.split:
                s = self.split[plan.name]
                w = s.weight_train.detach()
                key = row_key(f"{plan.name}.weight", s.rows, s.conv1d)
                state[key] = w.t().contiguous() if s.conv1d else w
                if plan.bias:
                    assert s.bias is not None  # plan.bias: the module has a bias Parameter
                    state[f"{plan.name}.bias"] = s.bias.detach()
            else:
                state.update({n: p.detach() for n, p in plan_parameters(plan)})
        return state

    def load_trainable_state(self, state: Mapping[str, torch.Tensor]) -> None:
        params = dict(self.model.named_parameters(remove_duplicate=False))
        for key, value in state.items():
            name, index = parse_key(key)
            module = name.rpartition(".")[0]
            if index is not None or (module in self.split and name.endswith(".weight")):
                s = self.split.get(module)
                if s is None or index is None:
                    raise EdgetuneError(f"{key!r} does not match this scheme's split weights")
                target, value = s.weight_train, (value.t() if s.conv1d else value)
            elif name in params:
                target = params[name]
            else:
                raise EdgetuneError(f"checkpoint tensor {key!r} does not exist in this model")
            copy_checked(target, value, key)

    def state_dict(self) -> dict[str, Any]:
        if self.options.in_place:
            return {"steppers": self.steppers.state_dict()}
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.options.in_place:
            self.steppers.load_state_dict(state["steppers"])
        else:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if self.scaler is not None:
                self.scaler.load_state_dict(state["scaler"])

    def export_model(self) -> nn.Module:
        """The model with every SplitLinear merged back into a plain Linear (Conv1D), so
        `save_pretrained` writes the original structure; in place, hooks removed."""
        for h in self._handles:
            h.remove()
        self._handles = []
        for name, s in self.split.items():
            set_module(self.model, name, s.merged())
        self.split = {}
        return densify(self.model)
