"""Optimizers and the learning-rate schedule the methods share.

- `lr_lambda`: the multiplier of the base learning rate at each step (warm-up, then linear,
  cosine or constant), as LambdaLR or `ParamSteppers` apply it.
- `make_adamw`: AdamW over a model's trainable parameters, fused where torch allows it.
- `ParamSteppers`: one optimizer per parameter, so each parameter can be updated the moment
  its gradient (or PEPITA update) exists, and the gradient freed right after.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from edgetune.errors import EdgetuneError
from edgetune.methods.base import MethodSettings


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


def make_adamw(model: nn.Module, settings: MethodSettings) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; no weight decay on biases and norms (1-D tensors).
    Fused (`fused_adamw`) where the parameters allow it."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": settings.weight_decay}]
    if rest:
        groups.append({"params": rest, "weight_decay": 0.0})
    return torch.optim.AdamW(groups, lr=settings.lr, fused=fused_adamw([*decay, *rest]))


class ParamSteppers:
    """One optimizer per parameter (the torch tutorial's "fuse the optimizer step into the
    backward pass"): `step(p)` applies p's update from p.grad and frees p.grad.

    The learning rate follows `lr_lambda(settings)` of the step counter, exactly as LambdaLR
    would; weight decay applies to tensors of 2 or more dimensions only (as `make_adamw`).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        settings: MethodSettings,
        factory: Callable[[torch.Tensor, float], torch.optim.Optimizer],
    ) -> None:
        self.settings = settings
        self.lam = lr_lambda(settings)
        self.steps = 0
        self.optimizers: dict[int, torch.optim.Optimizer] = {}
        for p in params:
            wd = settings.weight_decay if p.ndim >= 2 else 0.0
            self.optimizers[id(p)] = factory(p, wd)

    @property
    def lr(self) -> float:
        return self.settings.lr * self.lam(self.steps)

    def begin(self) -> None:
        """Set this step's learning rate on every optimizer."""
        lr = self.lr
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = lr

    def step(self, p: torch.Tensor) -> None:
        opt = self.optimizers[id(p)]
        opt.step()
        opt.zero_grad(set_to_none=True)

    def end(self) -> None:
        self.steps += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "optimizers": [o.state_dict() for o in self.optimizers.values()],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        opts = list(self.optimizers.values())
        if len(state["optimizers"]) != len(opts):
            raise EdgetuneError("method state does not match this model's trainable parameters")
        for opt, s in zip(opts, state["optimizers"], strict=True):
            opt.load_state_dict(s)
        self.steps = int(state["steps"])


def fused_adamw(params: list[torch.Tensor]) -> bool | None:
    """True where torch's fused AdamW takes every parameter (floating point, on CPU or CUDA):
    one kernel per parameter updates it and its moments in place, with no temporaries of the
    parameter's size (the single-tensor path makes two) and several times faster on a CPU;
    the Hugging Face Trainer's default optimizer (`adamw_torch_fused`) too. None (torch's
    default) elsewhere."""
    ok = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return True if params and ok else None


def adamw_factory(
    settings: MethodSettings,
) -> Callable[[torch.Tensor, float], torch.optim.Optimizer]:
    return lambda p, wd: torch.optim.AdamW(
        [p], lr=settings.lr, weight_decay=wd, fused=fused_adamw([p])
    )


def sgd_factory(
    settings: MethodSettings, momentum: float
) -> Callable[[torch.Tensor, float], torch.optim.Optimizer]:
    return lambda p, wd: torch.optim.SGD(
        [p], lr=settings.lr, momentum=momentum, weight_decay=wd, foreach=False
    )
