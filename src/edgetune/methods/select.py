"""Which modules of a model train under an `UpdateScheme`, and the freezing around them.

`plan_modules` maps a scheme to modules through `edgetune.models.anatomy`: which modules train
their weight (all rows, or the first `rows` output channels) and which their bias.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from edgetune.models.anatomy import Anatomy, is_linear, linear_shape
from edgetune.models.quantized import Packed
from edgetune.scheme import UpdateScheme


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


def shared_parameters(model: nn.Module) -> set[int]:
    """ids of parameters, and of held matrices (`Packed`), that appear under more than one
    name (tied weights)."""
    counts: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        counts[id(p)] = counts.get(id(p), 0) + 1
    for _, m in model.named_modules(remove_duplicate=False):
        if isinstance(m, Packed):
            counts[id(m)] = counts.get(id(m), 0) + 1
    return {i for i, c in counts.items() if c > 1}
