"""`forward_grad`: the forward gradient (Baydin et al. 2022, "Gradients without
Backpropagation"), over LoRA factors as Spry does (Panchal et al., 2024).

Per step, with a tangent v ~ N(0, I) over the trainable tensors, drawn from a per-step seed:
    (L, d) = jvp(L, (theta,), (v,))           d = <grad L(theta), v>, in one forward
    theta <- theta - lr (d v + wd theta)      (wd on matrices only, as `mezo`)
d v is an unbiased estimate of the gradient (E[v v^T] = I). One forward with forward-mode
automatic differentiation (`torch.func.jvp` through `torch.func.functional_call`): every
activation carries its tangent beside it, nothing is kept for a backward, no graph is built
(the parameters do not require grad). Attention runs through PyTorch's math kernel of
`scaled_dot_product_attention` (its fused CPU and CUDA kernels have no forward-mode formula).

The step is `mezo`'s with the two perturbed losses replaced by the exact directional
derivative, so it reuses that class: the same trainable tensors (`trainable: all`, or `lora`:
PEFT adapters on `target_modules`, the base frozen), the same seeded directions (tensor i's
v is `Mezo.z(seed, i)`, regenerated chunk by chunk), the same update (`Mezo.replay`), the same
history of (seed, d / n, lr) entries a federated client sends and a server replays bit for
bit, the same `queries` (n tangents at the same theta, applied one after the other).

What differs from MeZO: the tangents of every trained tensor exist whole during the forward
(`jvp` takes them as tensors), so the step holds one copy of the trained parameters beside the
weights, and the forward carries each activation downstream of a trained tensor twice; a
matrix product whose output carries a tangent costs three (PyTorch's formula forms both
operand terms, multiplying a frozen operand's missing tangent as zeros).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call, jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

from edgetune.errors import EdgetuneError
from edgetune.methods.base import Batch, MethodSettings, StepResult, check_finite, forward_loss
from edgetune.methods.mezo import Mezo
from edgetune.methods.options import ForwardGradOptions
from edgetune.seeds import mix_seed


class _Loss(nn.Module):
    """The mean loss of micro-batches as a module's forward, so that `functional_call` can
    run it with the trained tensors swapped for the ones `jvp` passes (names under `model.`)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batches: Sequence[Batch]) -> torch.Tensor:
        return torch.stack([forward_loss(self.model, b) for b in batches]).mean()


class ForwardGrad(Mezo):
    name = "forward_grad"
    options_type = ForwardGradOptions

    def __init__(self, model: nn.Module, settings: MethodSettings) -> None:
        if settings.chunked_loss:  # a torch.autograd.Function with a backward, no jvp
            raise EdgetuneError(
                "forward_grad cannot run train.chunked_loss (the chunked loss has no "
                "forward-mode derivative); set train.chunked_loss=false"
            )
        super().__init__(model, settings)

    @property
    def perturbation_rank(self) -> int:
        return 0  # dense tangents

    def directional_derivative(self, seed: int, batches: Sequence[Batch]) -> tuple[float, float]:
        """(L(theta), <grad L(theta), v>) with v = z(seed) over the trainable tensors: one
        forward of the model with tangents, no backward."""
        loss_of = _Loss(self.model)
        names = [f"model.{t.key}" for t in self.tensors]

        def f(*params: torch.Tensor) -> torch.Tensor:
            return functional_call(loss_of, dict(zip(names, params, strict=True)), (batches,))

        primals = tuple(t.param.detach() for t in self.tensors)
        tangents = tuple(self.z(seed, i) for i in range(len(self.tensors)))
        with sdpa_kernel(SDPBackend.MATH):  # the fused kernels have no forward-mode formula
            out = jvp(f, primals, tangents)  # (loss, its derivative along the tangents)
        return float(out[0]), float(out[1])

    def step(self, batches: Sequence[Batch]) -> StepResult:
        self.model.eval()  # no dropout: the derivative is that of the function evaluated
        seed = mix_seed(self.settings.seed, self.steps)
        n = self.queries
        seeds = [seed] if n == 1 else [mix_seed(seed, q) for q in range(n)]
        lr = self.settings.lr * self.lam(self.steps)
        losses, grads = [], []
        for s in seeds:  # every tangent at the same theta, before any update
            loss, d = self.directional_derivative(s, batches)
            check_finite(loss + d)
            losses.append(loss)
            grads.append(d)
        for s, d in zip(seeds, grads, strict=True):  # each query's share, as a server replays
            self.replay(s, d / n, lr, self.settings.weight_decay)
            self.history.append((s, d / n, lr))
        self.steps += 1
        return StepResult(sum(losses) / n, {"projected_grad": sum(grads) / n, "lr": lr})
