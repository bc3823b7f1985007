"""A causal LM's cross-entropy over its vocabulary in chunks: the (tokens, vocab) logits never
exist whole (`train.chunked_loss`).

forward: for each chunk of the LM head's rows (vocabulary entries), logits = h W_c^T, folded into
    a running log-sum-exp and the target logits; saves h, the targets and the log-sum-exp.
backward: each chunk's logits again, softmax - one-hot, dL/dh += (p - y) W_c.
Both work on a chunk's logits in place and free it before the next: one chunk of fp32 logits
(tokens x chunk rows) is live at a time (`Tape.chunked_head` counts it).

The head must be frozen (LoRA and schemes that leave the head alone; a trained head takes the
ordinary loss) and plain (logits = h W^T: no bias, soft-capping or scale). Chunks have
`edgetune.precision.CHUNK` elements of weight at most, the size a held head dequantizes at once,
so a quantized tied head is dequantized chunk by chunk here too.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edgetune.models.anatomy import inner_model
from edgetune.models.quantized import QuantLinear, compute_dtype
from edgetune.precision import dense_chunk


def _rows(head: nn.Module, start: int, stop: int, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(head, QuantLinear):
        return head.packed.dense(start, stop, dtype)
    weight: Any = head.weight
    return weight[start:stop].to(dtype)


def _shape(head: nn.Module) -> tuple[int, int]:
    if isinstance(head, QuantLinear):
        return head.out_features, head.in_features
    weight: Any = head.weight
    return weight.shape[0], weight.shape[1]


class _ChunkedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, targets: torch.Tensor, head: nn.Module) -> torch.Tensor:
        vocab, width = _shape(head)
        dtype = compute_dtype(h)
        step = dense_chunk(vocab, width) // width
        x = h.to(dtype)
        n = h.shape[0]
        top = torch.full((n,), float("-inf"), device=h.device)
        total = torch.zeros(n, device=h.device)
        picked = torch.zeros(n, device=h.device)
        for start in range(0, vocab, step):
            stop = min(vocab, start + step)
            logits = (x @ _rows(head, start, stop, dtype).t()).float()
            inside = (targets >= start) & (targets < stop)
            rows = inside.nonzero().squeeze(1)
            picked[rows] = logits[rows, targets[rows] - start]
            new_top = torch.maximum(top, logits.amax(dim=1))
            # exp in place: one chunk of logits at a time, the last freed before the next
            total = total * torch.exp(top - new_top) + logits.sub_(new_top[:, None]).exp_().sum(1)
            top = new_top
            del logits
        lse = top + torch.log(total)
        ctx.save_for_backward(h, targets, lse)
        ctx.head, ctx.dtype, ctx.step = head, dtype, step
        return (lse - picked).mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        h, targets, lse = ctx.saved_tensors
        head, dtype, step = ctx.head, ctx.dtype, ctx.step
        vocab, _ = _shape(head)
        x = h.to(dtype)
        n = h.shape[0]
        gh = torch.zeros(h.shape, dtype=torch.float32, device=h.device)
        scale = grad.float() / n
        for start in range(0, vocab, step):
            stop = min(vocab, start + step)
            w = _rows(head, start, stop, dtype)
            p = (x @ w.t()).float().sub_(lse[:, None]).exp_()  # in place, as in the forward
            inside = (targets >= start) & (targets < stop)
            rows = inside.nonzero().squeeze(1)
            p[rows, targets[rows] - start] -= 1
            gh += (p.mul_(scale).to(dtype) @ w).float()
            del p, w
        return gh.to(h.dtype), None, None


def chunked_cross_entropy(h: torch.Tensor, targets: torch.Tensor, head: nn.Module) -> torch.Tensor:
    """Mean cross-entropy of logits h W^T (W: the frozen `head`'s weight) against `targets`,
    chunk by chunk over the vocabulary. h: (n, width), targets: (n,)."""
    out: torch.Tensor = _ChunkedCrossEntropy.apply(h, targets, head)
    return out


def plain_frozen_head(model: nn.Module) -> nn.Module | None:
    """The LM head of a causal LM (PEFT-wrapped or not) when the chunked loss can replace it:
    frozen, no bias, logits = h W^T; else None."""
    inner = inner_model(model)
    config = getattr(inner, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return None
    if any(getattr(config, k, None) for k in ("final_logit_softcapping", "logit_scale")):
        return None
    getter = getattr(inner, "get_output_embeddings", None)
    head = getter() if getter is not None else None
    if not isinstance(head, nn.Linear | QuantLinear) or getattr(head, "bias", None) is not None:
        return None
    if any(p.requires_grad for p in head.parameters()):
        return None
    return head
