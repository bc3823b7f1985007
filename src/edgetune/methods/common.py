"""Pieces shared by the methods that train part of a model (sparse, mezo, pepita).

- `resolve_scheme` turns the `scheme` option (built-in name, YAML path or `UpdateScheme`) into a
  scheme for a model's layer count.
- `plan_modules` maps a scheme to modules through `edgetune.models.anatomy`: which modules train
  their weight (all rows, or the first `rows` output channels) and which their bias.
- Row keys: a tensor that holds only some output channels of a parameter is named
  `<parameter name>[a:b]` (rows a..b-1 of an nn.Linear weight, shape (b - a, in)) or, for
  GPT-2's Conv1D whose weight is stored (in, out), `<parameter name>[:,a:b]`. The suffix is a
  Python slice of the original parameter, so `merge_trainable_state` (a checkpoint reader, a
  federated server) can write it back with `full[name][index] = value`.
- `ParamSteppers`: one torch optimizer per parameter, so each parameter can be updated the moment
  its gradient (or PEPITA update) exists, and the gradient freed right after.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from edgetune.errors import EdgetuneError
from edgetune.methods.base import MethodSettings, lr_lambda
from edgetune.models.anatomy import Anatomy, is_linear, linear_shape
from edgetune.plan.scheme import UpdateScheme

T = TypeVar("T")


def parse_options(cls: type[T], options: Mapping[str, Any], method: str) -> T:
    """The method's options dataclass from the run config's `method:` mapping, with unknown
    keys reported by name."""
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise EdgetuneError(
            f"unknown {method} option(s) {', '.join(unknown)}; known: {', '.join(known)}"
        )
    return cls(**dict(options))


def resolve_scheme(value: str | Path | UpdateScheme, n_layers: int) -> UpdateScheme:
    """A scheme from a built-in name (`last-2`, `bias-only`, `qkv-ffn1-2@0.5`, ...), a YAML
    path, or an `UpdateScheme`; checks that its layer indices exist in the model."""
    if isinstance(value, UpdateScheme):
        scheme = value
    elif isinstance(value, Path) or str(value).endswith((".yaml", ".yml")):
        scheme = UpdateScheme.load(value)
    else:
        scheme = UpdateScheme.builtin(str(value), n_layers)
    for u in scheme.updates:
        if u.unit != "head" and u.layer >= n_layers:
            raise EdgetuneError(
                f"scheme {scheme.name!r} names layer {u.layer}, the model has {n_layers} layers"
            )
    return scheme


@dataclass
class ModulePlan:
    """How one module trains: `rows` of its weight's output channels (0: weight frozen, equal
    to `out`: all of it) and whether its bias trains."""

    name: str
    module: nn.Module
    rows: int
    out: int
    bias: bool

    @property
    def split(self) -> bool:
        return 0 < self.rows < self.out


def plan_modules(model: nn.Module, anatomy: Anatomy, scheme: UpdateScheme) -> list[ModulePlan]:
    """Modules named by the scheme, in model order. Non-linear modules (norms) train their
    weight whole when the unit's weight_fraction is above 0 (they are per-channel scales, not
    split); their bias follows the unit's `bias` flag."""
    modules = dict(model.named_modules())
    plans: dict[str, ModulePlan] = {}
    for u in scheme.updates:
        for name in anatomy.modules(u.unit, u.layer):
            m = modules[name]
            if is_linear(m):
                out = linear_shape(m)[0]
                rows = 0 if u.weight_fraction == 0 else max(1, round(u.weight_fraction * out))
            else:
                out = 1
                rows = 1 if u.weight_fraction > 0 else 0
            has_bias = isinstance(getattr(m, "bias", None), nn.Parameter)
            plan = ModulePlan(name, m, rows, out, u.bias and has_bias)
            if name in plans:  # named twice: the union
                old = plans[name]
                plan = ModulePlan(name, m, max(rows, old.rows), out, plan.bias or old.bias)
            plans[name] = plan
    order = {n: i for i, n in enumerate(modules)}
    return sorted((p for p in plans.values() if p.rows or p.bias), key=lambda p: order[p.name])


def plan_parameters(plan: ModulePlan) -> list[tuple[str, nn.Parameter]]:
    """The module's own parameters that train whole under the plan (split weights excluded)."""
    out = []
    for pname, p in plan.module.named_parameters(recurse=False):
        is_bias = pname == "bias"
        if (is_bias and plan.bias) or (not is_bias and plan.rows and not plan.split):
            out.append((f"{plan.name}.{pname}", p))
    return out


def frozen_prefix(model: nn.Module, anatomy: Anatomy) -> list[nn.Module]:
    """The modules below the lowest block with a trainable parameter: the input embeddings and
    every block under it (all blocks when only the head trains). Gradients never reach them, so
    for the trained modules they are a fixed feature extractor."""
    out = [model.get_submodule(n) for n in anatomy.embeddings]
    for name in anatomy.blocks:
        block = model.get_submodule(name)
        if any(p.requires_grad for p in block.parameters()):
            break
        out.append(block)
    return out


def freeze_all(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


# -- row keys -------------------------------------------------------------------------------

_KEY = re.compile(r"^(?P<name>.+)\[(?P<cols>:,)?(?P<a>\d+):(?P<b>\d+)\]$")


def row_key(name: str, rows: int, conv1d: bool = False) -> str:
    """The key of the first `rows` output channels of parameter `name`."""
    return f"{name}[:,0:{rows}]" if conv1d else f"{name}[0:{rows}]"


def parse_key(key: str) -> tuple[str, tuple[slice, ...] | None]:
    """(parameter name, index into it) for a row key; (key, None) for a whole tensor."""
    m = _KEY.match(key)
    if not m:
        return key, None
    rows = slice(int(m["a"]), int(m["b"]))
    return m["name"], ((slice(None), rows) if m["cols"] else (rows,))


def merge_trainable_state(
    full: Mapping[str, torch.Tensor], partial: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """A copy of the full state dict `full` with the tensors of `partial` written in, row keys
    into their rows: how a server or checkpoint reader rebuilds whole parameters. Entries of
    `full` that share memory (tied weights) share it in the copy too."""
    clones: dict[tuple[int, int], torch.Tensor] = {}  # tied tensors stay tied in the copy
    merged = {}
    for k, v in full.items():
        ref = (v.untyped_storage().data_ptr(), v.storage_offset())
        merged[k] = clones.setdefault(ref, v.clone())
    for key, value in partial.items():
        name, index = parse_key(key)
        if name not in merged:
            raise EdgetuneError(f"trainable tensor {key!r} names no parameter of the model")
        target = merged[name] if index is None else merged[name][index]
        if target.shape != value.shape:
            raise EdgetuneError(
                f"{key!r} has shape {tuple(value.shape)}, expected {tuple(target.shape)}"
            )
        target.copy_(value)
    return merged


def shared_parameters(model: nn.Module) -> set[int]:
    """ids of parameters that appear under more than one name (tied weights)."""
    counts: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        counts[id(p)] = counts.get(id(p), 0) + 1
    return {i for i, c in counts.items() if c > 1}


# -- one optimizer per parameter ------------------------------------------------------------


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
