"""The PEPITA rule on any network of Linear layers: two forward passes, no backward pass.

`PepitaCore` is model-agnostic (a 2-layer MLP or a transformer): it gets a `run(batch) ->
logits` function, the Linear modules that take the hidden-layer rule, the output modules that take
the last-layer rule, the modules whose output is the network input (where x + F e is injected),
the fixed feedback matrix F and the loss. `accumulate` leaves each update in `p.grad`, in the
parameter's layout, so any torch optimizer applies it (W -= lr * dW).

Forms (Dellaferrera & Kreiman 2022), for a Linear with input a and output h, rows r (tokens):
    hidden and first layer  dW = (h - h')^T a' / r,  db = sum_rows(h - h') / r
    last layer              dW = e'^T a' / N,        db = sum_rows(e') / N
where ' marks the modulated pass (input x + F e), e = softmax(out) - onehot(target) of the clean
pass, e' the same of the modulated pass, N the number of loss terms (examples or tokens). The first
layer is the hidden form with a' = x + F e (its input in the modulated pass). h is the Linear's
output before any activation. The last-layer form is taken through autograd on the loss of the
modulated pass with the output layer's output as the only leaf: exactly e'^T a' / N, including
pooling (Llama's last-token score) and label shifts, with a graph one layer deep.

`lockstep=True` is MEMPEPITA: after the clean pass (for e), one forward of the concatenated batch
[x ; x + F e] in which every hooked Linear sees h and h' together, forms its update and keeps
nothing; an update is handed to `on_ready` as soon as it is final, so the optimizer can apply it
and free it (PEPITA keeps every h of the clean pass until the modulated pass reaches it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from edgetune.methods.base import Batch
from edgetune.models.anatomy import is_conv1d

# run(inputs) -> logits; loss(logits, batch) -> scalar mean loss; error(logits, batch) -> e
Run = Callable[[Batch], torch.Tensor]
LossFn = Callable[[torch.Tensor, Batch], torch.Tensor]


def feedback_matrix(d_in: int, d_out: int, scale: float, seed: int) -> torch.Tensor:
    """F (d_in, d_out) = scale * U[-sqrt(6/d_in), sqrt(6/d_in)], from its own generator."""
    g = torch.Generator().manual_seed(seed)
    bound = (6.0 / d_in) ** 0.5
    return scale * bound * (2.0 * torch.rand(d_in, d_out, generator=g) - 1.0)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), labels)


def output_error(logits: torch.Tensor, labels: torch.Tensor, causal: bool) -> torch.Tensor:
    """e = softmax(logits) - onehot(labels), zero where the label is -100. Classification:
    logits (B, C) -> e (B, C). LM: logits (B, T, V) -> e (B, T, V); for a causal LM the
    logits at t are scored against the label at t + 1 (the last position gets e = 0)."""
    logits = logits.detach().float()
    if causal:
        labels = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], 1)
    valid = labels != -100
    e = torch.softmax(logits, -1)
    e.scatter_add_(-1, labels.clamp(min=0).unsqueeze(-1), -torch.ones_like(e[..., :1]))
    return e * valid.unsqueeze(-1)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, causal: bool) -> torch.Tensor:
    if causal:
        logits, labels = logits[:, :-1], labels[:, 1:]
    return F.cross_entropy(logits.flatten(0, -2).float(), labels.flatten(), ignore_index=-100)


class PepitaCore:
    """Hooks and passes of PEPITA / MEMPEPITA (see the module docstring)."""

    def __init__(
        self,
        run: Run,
        hidden: Mapping[str, nn.Module],
        output: Mapping[str, nn.Module],
        inputs: Sequence[tuple[nn.Module, bool]],
        feedback: torch.Tensor,
        loss: LossFn,
        error: Callable[[torch.Tensor, Batch], torch.Tensor],
        lockstep: bool = False,
    ) -> None:
        """inputs: (module, per_token) pairs; per_token False broadcasts one modulation over
        the module's positions (T5's encoder when the error lives on decoder tokens)."""
        self.run, self.hidden, self.output = run, dict(hidden), dict(output)
        self.inputs, self.feedback, self.loss, self.error = list(inputs), feedback, loss, error
        self.lockstep = lockstep
        self.calls: dict[str, int] = {}

    # -- one micro-batch --------------------------------------------------------------------
    def accumulate(
        self,
        batch: Batch,
        scale: float = 1.0,
        on_ready: Callable[[nn.Module], None] | None = None,
    ) -> float:
        """Run the passes on one batch, add scale * update to each target's p.grad, and return
        the clean loss. With lockstep, `on_ready(module)` is called once a module's update is
        final (modules run once per forward), so it can be applied and freed at once."""
        self._scale, self._on_ready = scale, on_ready
        self._stored: dict[str, list[torch.Tensor]] = {n: [] for n in self.hidden}
        self._leaves: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []
        self._rows = batch_rows(batch)
        # pass 1: clean, no graph; PEPITA keeps every hidden output h here, MEMPEPITA none
        with torch.no_grad(), self._hooks("clean"):
            logits = self.run(batch)
        clean_loss = float(self.loss(logits, batch))
        e = self.error(logits, batch)  # (B, C) or (B, T, V)
        # (B, d) or (B, T, d); None again once the passes are done
        self._modulation: torch.Tensor | None = e.to(self.feedback.dtype) @ self.feedback.t()
        self._valid = (e != 0).any(-1) if e.ndim == 3 else None
        del logits, e
        # pass 2: modulated (PEPITA) or [clean ; modulated] (MEMPEPITA); grad mode on, but no
        # parameter requires grad, so the only graph is from the output leaves to the loss
        run_batch = concat(batch) if self.lockstep else batch
        with torch.enable_grad(), self._hooks("lockstep" if self.lockstep else "modulated"):
            logits = self.run(run_batch)
            if self.lockstep:
                logits = logits[self._rows :]
            if logits.requires_grad:  # False only without output layers
                self.loss(logits, batch).backward()
        for module, leaf, a in self._leaves:  # last layer: e'^T a' / N from the leaf's grad
            g = leaf.grad  # (rows, out): dL'/d(output), zero where the loss does not look
            assert g is not None  # the leaf is on the path to the loss: backward filled it
            g = g.flatten(0, -2)
            self._add(module, g.t().to(a.dtype) @ a.flatten(0, -2), g.sum(0))
            if on_ready is not None:
                on_ready(module)
        self._leaves, self._stored, self._modulation = [], {}, None
        return clean_loss

    # -- hooks ------------------------------------------------------------------------------
    @contextmanager
    def _hooks(self, mode: str):
        handles = [
            m.register_forward_hook(self._input_hook(per_token))
            for m, per_token in self.inputs
            if mode != "clean"
        ]
        for name, m in self.hidden.items():
            handles.append(m.register_forward_hook(self._hidden_hook(name, mode)))
        if mode != "clean":
            for m in self.output.values():
                handles.append(m.register_forward_hook(self._output_hook))
        else:
            self.calls = dict.fromkeys(self.hidden, 0)
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def _input_hook(self, per_token: bool):
        def hook(_m: nn.Module, _inp, out: torch.Tensor) -> torch.Tensor:
            m = self._modulation
            assert m is not None  # set before the modulated pass installs this hook
            if m.ndim == 3 and (not per_token or m.shape[1] != out.shape[1]):
                assert self._valid is not None  # set where the error, so m, is 3-d
                valid = self._valid.unsqueeze(-1).to(m.dtype)  # mean over scored tokens
                m = (m * valid).sum(1) / valid.sum(1).clamp(min=1)
            while m.ndim < out.ndim:
                m = m.unsqueeze(1)  # broadcast over positions
            m = m.to(out.dtype)
            if self.lockstep:
                b = self._rows
                return torch.cat([out[:b], out[b:] + m], 0).detach()
            return (out + m).detach()

        return hook

    def _hidden_hook(self, name: str, mode: str):
        def hook(module: nn.Module, inp: tuple, out: torch.Tensor) -> None:
            if mode == "clean":
                self.calls[name] += 1
                if not self.lockstep:
                    self._stored[name].append(out.detach())
                return
            a = inp[0].detach()
            if mode == "lockstep":
                b = self._rows
                h, h_mod, a_mod = out[:b], out[b:], a[b:]
            else:
                h, h_mod, a_mod = self._stored[name].pop(0), out, a
            d = (h - h_mod).flatten(0, -2)  # (r, out)
            r = d.shape[0]
            self._add(module, d.t() @ a_mod.flatten(0, -2) / r, d.sum(0) / r)
            if mode == "lockstep" and self._on_ready is not None and self.calls[name] == 1:
                self._on_ready(module)

        return hook

    def _output_hook(self, module: nn.Module, inp: tuple, out: torch.Tensor) -> torch.Tensor:
        # the output layer's (modulated) output becomes the one leaf of a graph to the loss
        a, out = inp[0].detach(), out.detach()
        if not self.lockstep:
            leaf = out.requires_grad_(True)
            self._leaves.append((module, leaf, a))
            return leaf
        b = self._rows  # lockstep: only the modulated half needs a gradient
        leaf = out[b:].requires_grad_(True)
        self._leaves.append((module, leaf, a[b:]))
        return torch.cat([out[:b], leaf], 0)

    def _add(self, module: nn.Module, dw: torch.Tensor, db: torch.Tensor) -> None:
        """p.grad += scale * update, in the parameter's own layout (Conv1D is (in, out))."""
        dw = dw.t() if is_conv1d(module) else dw
        updates = [(cast(torch.Tensor, module.weight), dw)]
        if getattr(module, "bias", None) is not None:
            updates.append((cast(torch.Tensor, module.bias), db))
        for p, u in updates:
            u = (u * self._scale).to(p.dtype)
            if p.grad is None:
                p.grad = u
            else:
                p.grad += u


def batch_rows(batch: Batch) -> int:
    return next(iter(batch.values())).shape[0]


def concat(batch: Batch) -> Batch:
    """[x ; x]: the batch twice along dim 0 (the modulation goes on the second half)."""
    return {k: torch.cat([v, v], 0) for k, v in batch.items()}
