"""`mezo`: zeroth-order SPSA with the seed trick (Malladi et al., NeurIPS 2023).

Per step, with z ~ N(0, I) regenerated from a per-step seed and never stored:
    L+ = L(theta + eps z),  L- = L(theta - eps z),  g = (L+ - L-) / (2 eps)
    theta <- theta - lr (g z + wd theta)       (wd on matrices only, as the reference code)
Two forward passes, no backward, no optimizer state: training memory is inference memory plus
one module's weight.

Exact restoration. The reference perturbs in place (+eps z, -2 eps z, +eps z), which in floating
point does not give back the same bits. Here the stored weights are never written during the
two evaluations: a forward pre-hook on each module that owns a trainable tensor swaps in
theta +- eps z (computed into a temporary from the regenerated z) and its forward hook swaps the
original back, so the weights after the evaluations are the weights before, bit for bit, and
at most one module's perturbed copy exists at a time. An embedding table (the largest tensor of
a small encoder) is not copied at all: its lookup adds eps z[ids] to the looked-up rows. Only
the update writes the weights.

Seeds. The step seed is a hash of (settings.seed, step); tensor i of the trainable list draws its
z from a torch.Generator seeded with a hash of (step seed, i), so a step can be replayed from
(seed, g) alone: `history` keeps (seed, g, lr) since the last `clear_history()` (what a
FedKSeed-style client ships) and `replay(seed, g, lr)` applies one.

Subspaces and queries (options, `edgetune.methods.options.MezoOptions`):
- `trainable: lora` confines theta to the factors of LoRA adapters (PEFT, as `lora` adds them;
  the base stays frozen): the estimate lives in a space of a few hundred thousand dimensions
  instead of the whole model (ZO over LoRA, as MobiZO and the ZO-LoRA line of work);
- `perturbation_rank: k` draws each matrix's z as U V^T / sqrt(k) (LOZO, ICLR 2025): U row by
  row in the same chunks as a dense z, V once per tensor, both from the seed;
- `queries: n` averages n SPSA estimates per step, query q with seed mix_seed(step seed, q)
  (query 0 of a one-query step uses the step seed itself). The update is applied query by
  query, lr (g_q / n z_q + wd / n theta) each, and each is one history entry (seed_q, g_q / n,
  lr), so a server replays the same n updates in the same order, bit for bit.

Classification: encoders train their classifier head like any parameter (a head set first by a
cheap fit, e.g. a few backprop steps on the head alone or a linear probe, is allowed and speeds
MeZO up a lot); for a causal LM, classify through label words of the LM head
(`edgetune.methods.label_words.LabelWords`), as the paper does.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from edgetune.errors import EdgetuneError
from edgetune.methods.base import (
    Batch,
    MethodSettings,
    StepResult,
    check_finite,
    forward_loss,
    merged_model,
    options_of,
)
from edgetune.methods.lora import adapt
from edgetune.methods.optim import lr_lambda
from edgetune.methods.options import MezoOptions
from edgetune.methods.select import freeze_all, plan_modules, plan_parameters
from edgetune.methods.state import copy_checked, parse_key, row_key
from edgetune.models.anatomy import describe, is_conv1d
from edgetune.scheme import resolve_scheme
from edgetune.seeds import mix_seed

CHUNK = 1 << 18  # elements of z generated at a time (1 MB in fp32)


@dataclass
class ZoTensor:
    """One tensor a zeroth-order estimate perturbs and trains (or the trained rows of one)."""

    key: str  # trainable_state key (row key for a part of a weight)
    param: nn.Parameter
    index: tuple[slice, ...] | None  # the part that trains; None: all of it

    def view(self) -> torch.Tensor:
        return self.param.data if self.index is None else self.param.data[self.index]


class Directions:
    """Seeded directions z over a list of tensors, regenerated chunk by chunk and never stored;
    the forward in which every module sees its tensors at theta + scale z (`perturbed`); and the
    update theta <- theta - lr (g z + decay theta) (`replay`): MeZO's perturbation machinery,
    which `mezo` runs over the tensors it trains and `hybrid` over the blocks below its
    boundary."""

    def __init__(self, model: nn.Module, tensors: list[ZoTensor], perturbation_rank: int = 0):
        self.tensors, self.perturbation_rank = tensors, perturbation_rank
        ids = {id(t.param) for t in tensors}
        self._owners = [
            m for m in model.modules() if any(id(p) in ids for p in m.parameters(recurse=False))
        ]

    def chunks(self, seed: int, i: int) -> Iterator[tuple[slice, torch.Tensor]]:
        """z for trainable tensor i at seed `seed`, as (rows, z[rows]) chunks of at most
        CHUNK elements along dim 0; chunk j draws from its own generator seeded with
        mix_seed(mix_seed(seed, i), j), so z is regenerated piece by piece, never whole. With a
        perturbation rank k, a matrix's chunk is U[rows] V^T / sqrt(k): chunk j draws U[rows]
        from that generator, V (columns, k) comes once from mix_seed(mix_seed(seed, i), -1)."""
        t = self.tensors[i]
        shape, device = t.view().shape, t.param.device
        row = max(1, math.prod(shape[1:]))
        step = max(1, CHUNK // row) if shape else 1
        base = mix_seed(seed, i)
        k = self.perturbation_rank if len(shape) >= 2 else 0
        if k:
            g = torch.Generator(device=device).manual_seed(mix_seed(base, -1))
            v = torch.randn(row, k, generator=g, device=device) / math.sqrt(k)  # (columns, k)
        for j, start in enumerate(range(0, shape[0] if shape else 1, step)):
            rows = slice(start, min(start + step, shape[0])) if shape else slice(None)
            g = torch.Generator(device=device).manual_seed(mix_seed(base, j))
            n = (rows.stop - rows.start,) if shape else ()
            if k:  # (n, k) @ (k, columns), in the tensor's shape
                u = torch.randn(rows.stop - rows.start, k, generator=g, device=device)
                z = (u @ v.T).view(n + tuple(shape[1:]))
            else:
                z = torch.randn(n + tuple(shape[1:]), generator=g, device=device)
            yield rows, z.to(t.param.dtype)

    def z(self, seed: int, i: int) -> torch.Tensor:
        """The whole direction for trainable tensor i, filled chunk by chunk (no second copy
        of it while it is made): `forward_grad`'s tangent, and for tests."""
        view = self.tensors[i].view()
        out = torch.empty(view.shape, dtype=view.dtype, device=view.device)
        for rows, z in self.chunks(seed, i):
            if out.ndim:
                out[rows] = z
            else:
                out.copy_(z)
        return out

    @contextmanager
    def perturbed(self, seed: int, scale: float):
        """Inside, every module sees its trainable tensors as theta + scale * z(seed); the stored
        weights are never written. A module swaps in a perturbed copy of its tensors for its own
        forward; an embedding table trained whole instead adds scale * z[ids] to its output (the
        same numbers, W[ids] + scale * z[ids], without a copy of the table)."""
        by_param = {id(t.param): i for i, t in enumerate(self.tensors)}
        swapped: dict[int, tuple[torch.Tensor, int]] = {}  # param id -> (original, owner id)

        def looked_up(module: nn.Embedding) -> bool:
            i = by_param.get(id(module.weight))
            return i is not None and self.tensors[i].index is None

        def pre(module: nn.Module, _args) -> None:
            for p in module.parameters(recurse=False):
                if id(p) not in by_param or id(p) in swapped:
                    continue
                i = by_param[id(p)]
                t = self.tensors[i]
                original = p.data
                new = original.clone()
                part = new if t.index is None else new[t.index]
                for rows, z in self.chunks(seed, i):
                    part[rows].add_(z, alpha=scale)
                swapped[id(p)] = (original, id(module))
                p.data = new

        def post(module: nn.Module, _args, _out) -> None:
            for p in module.parameters(recurse=False):
                if swapped.get(id(p), (None, None))[1] == id(module):
                    p.data = swapped.pop(id(p))[0]

        def lookup(module: nn.Embedding, args, kwargs, out: torch.Tensor) -> torch.Tensor:
            ids = (args[0] if args else kwargs["input"]).reshape(-1)
            rows_z = out.new_empty(ids.numel(), module.embedding_dim)
            for rows, z in self.chunks(seed, by_param[id(module.weight)]):
                hit = (ids >= rows.start) & (ids < rows.stop)
                rows_z[hit] = z[ids[hit] - rows.start]
            return out.add(rows_z.view_as(out), alpha=scale)

        handles = []
        for m in self._owners:
            if isinstance(m, nn.Embedding) and looked_up(m):
                handles.append(m.register_forward_hook(lookup, with_kwargs=True))
            else:
                handles.append(m.register_forward_pre_hook(pre))
                handles.append(m.register_forward_hook(post))
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            for pid, (original, _) in swapped.items():  # after an exception mid-forward
                next(t.param for t in self.tensors if id(t.param) == pid).data = original

    def replay(self, seed: int, projected_grad: float, lr: float, decay: float = 0.0) -> None:
        """theta <- theta - lr (g z(seed) + decay theta), decay on matrices only."""
        with torch.no_grad():
            for i, t in enumerate(self.tensors):
                wd = decay if t.param.ndim >= 2 else 0.0
                view = t.view()
                for rows, z in self.chunks(seed, i):
                    v = view[rows]
                    v.sub_(lr * (projected_grad * z + wd * v))


class Mezo:
    name = "mezo"
    options_type: type = MezoOptions  # `forward_grad` (a subclass) reads its own

    def __init__(self, model: nn.Module, settings: MethodSettings) -> None:
        self.options: Any = options_of(settings, self.options_type, self.name)
        if self.options.lora is not None:
            model = adapt(model, self.options.lora)
        self.model, self.settings = model, settings
        self.lam = lr_lambda(settings)
        tensors = self._select(model)
        if not tensors:
            raise EdgetuneError(f"{self.name}: nothing to train")
        freeze_all(model)  # no autograd anywhere
        self.directions = Directions(model, tensors, self.perturbation_rank)
        self.steps = 0
        self.history: list[tuple[int, float, float]] = []

    @property
    def tensors(self) -> list[ZoTensor]:
        return self.directions.tensors

    def chunks(self, seed: int, i: int) -> Iterator[tuple[slice, torch.Tensor]]:
        return self.directions.chunks(seed, i)

    def z(self, seed: int, i: int) -> torch.Tensor:
        return self.directions.z(seed, i)

    def perturbed(self, seed: int, scale: float):
        """See `Directions.perturbed`."""
        return self.directions.perturbed(seed, scale)

    def replay(
        self, seed: int, projected_grad: float, lr: float, weight_decay: float = 0.0
    ) -> None:
        """theta <- theta - lr (g z(seed) + wd / n theta): one history entry's update from its
        (seed, g); n is `queries`, so the n entries of a step decay theta by wd once."""
        self.directions.replay(seed, projected_grad, lr, weight_decay / self.queries)

    @property
    def queries(self) -> int:
        """History entries per step: one per query."""
        return self.options.queries

    @property
    def perturbation_rank(self) -> int:
        """0: dense directions; k: each matrix's direction is rank k (`Directions.chunks`)."""
        return self.options.perturbation_rank

    def _select(self, model: nn.Module) -> list[ZoTensor]:
        if self.options.trainable == "all":
            return [ZoTensor(n, p, None) for n, p in model.named_parameters()]
        if self.options.trainable == "lora":  # the adapters (and head) PEFT left trainable
            return [ZoTensor(n, p, None) for n, p in model.named_parameters() if p.requires_grad]
        anatomy = describe(model)
        scheme = resolve_scheme(self.options.trainable, anatomy.n_layers)
        out: list[ZoTensor] = []
        for plan in plan_modules(model, anatomy, scheme):
            out += [ZoTensor(n, p, None) for n, p in plan_parameters(plan)]
            if plan.split:
                conv = is_conv1d(plan.module)
                rows = slice(0, plan.rows)
                index = (slice(None), rows) if conv else (rows,)
                out.append(
                    ZoTensor(
                        row_key(f"{plan.name}.weight", plan.rows, conv),
                        cast(nn.Parameter, plan.module.weight),
                        index,
                    )
                )
        return out

    # -- protocol -------------------------------------------------------------------------
    def step(self, batches: Sequence[Batch]) -> StepResult:
        self.model.eval()  # both evaluations must see the same function: no dropout
        seed = mix_seed(self.settings.seed, self.steps)
        n = self.queries
        seeds = [seed] if n == 1 else [mix_seed(seed, q) for q in range(n)]
        eps, lr = self.options.eps, self.settings.lr * self.lam(self.steps)
        chunked = self.settings.chunked_loss
        grads, losses = [], []
        with torch.no_grad():
            for s in seeds:  # every query at the same theta, before any update
                pair = []
                for scale in (eps, -eps):
                    with self.perturbed(s, scale):
                        total = sum(float(forward_loss(self.model, b, chunked)) for b in batches)
                    pair.append(total / len(batches))
                check_finite(pair[0] + pair[1])
                grads.append((pair[0] - pair[1]) / (2 * eps))
                losses.append(pair)
        for s, g in zip(seeds, grads, strict=True):  # each query's share, as a server replays
            self.replay(s, g / n, lr, self.settings.weight_decay)
            self.history.append((s, g / n, lr))
        self.steps += 1
        loss_plus = sum(p for p, _ in losses) / n
        loss_minus = sum(m for _, m in losses) / n
        metrics = {"projected_grad": sum(grads) / n, "loss_plus": loss_plus,
                   "loss_minus": loss_minus, "lr": lr}  # fmt: skip
        return StepResult((loss_plus + loss_minus) / 2, metrics)

    def clear_history(self) -> list[tuple[int, float, float]]:
        """The (seed, projected gradient share, lr) of every query of every step since the
        last call (`queries` entries a step), forgotten."""
        out, self.history = self.history, []
        return out

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {
            t.key: t.view().detach() if t.index is None else t.view().contiguous()
            for t in self.tensors
        }

    def load_trainable_state(self, state: Mapping[str, torch.Tensor]) -> None:
        by_key = {t.key: t for t in self.tensors}
        for key, value in state.items():
            if key not in by_key:
                raise EdgetuneError(
                    f"checkpoint tensor {key!r} ({parse_key(key)[0]}) is not "
                    f"trained by this {self.name} configuration"
                )
            copy_checked(by_key[key].view(), value, key)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.steps = int(state["steps"])

    def export_model(self) -> nn.Module:
        return merged_model(self.model)
