"""A frozen base held in a low-precision format and dequantized one layer at a time.

`QuantLinear` and `QuantEmbedding` hold a frozen weight in one of `edgetune.precision`'s formats
(GGUF's Q8_0, Q4_0, Q4_1 blocks byte for byte, per-row int8, or a dense bf16/fp16 tensor) and
form dense rows only while an op needs them:

- forward: y = x W^T, W dequantized in chunks of at most `edgetune.precision.CHUNK`
  elements, into the compute dtype (the autocast dtype when autocast is on);
- backward: dL/dx = dL/dy W, W dequantized again the same way. Nothing is saved for backward
  (the weight is frozen: there is no dW), so a frozen quantized layer keeps no activation.

The whole model is never dequantized at once: the transient is one chunk. Whatever trains
(LoRA adapters, a sparse scheme's rows, a classifier head) is an fp32 Parameter beside it.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from edgetune.errors import EdgetuneError
from edgetune.precision import QUANTIZED, dense_chunk

BLOCK = 32  # GGUF's block of Q8_0, Q4_0, Q4_1
DENSE = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
HELD = (*QUANTIZED, "bf16", "fp16")  # formats a Quant module holds (fp32 stays nn.Linear)


class Packed(nn.Module):
    """One frozen matrix (rows, cols) in `fmt`, as buffers that slice by row.

    q8_0 / int8: `q` int8 (rows, blocks, block), `scale` (rows, blocks) fp16 / fp32.
    q4_0 / q4_1: `q` uint8 (rows, blocks, 16): value j of a block in the low nibble of byte
        j, value j + 16 in the high nibble (GGUF's order); `scale`, `minimum` fp16.
    bf16 / fp16: `q` the dense matrix in that dtype.
    """

    q: torch.Tensor  # buffers (register_buffer)
    scale: torch.Tensor | None
    minimum: torch.Tensor | None

    def __init__(self, fmt: str, rows: int, cols: int, q, scale=None, minimum=None) -> None:
        super().__init__()
        self.fmt, self.rows, self.cols = fmt, rows, cols
        self.register_buffer("q", q)
        self.register_buffer("scale", scale)
        self.register_buffer("minimum", minimum)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.q, self.scale, self.minimum)
                   if t is not None)  # fmt: skip

    def dense(self, start: int = 0, stop: int | None = None, dtype=torch.float32) -> torch.Tensor:
        """Rows [start, stop) as a dense (rows, cols) tensor of `dtype`."""
        stop = self.rows if stop is None else stop
        return dequantize(self.fmt, self.q[start:stop], _rows(self.scale, start, stop),
                          _rows(self.minimum, start, stop), dtype)  # fmt: skip

    def gather(self, index: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
        """The rows at `index` (any shape) as (*index.shape, cols)."""
        flat = index.reshape(-1)
        pick = None if self.scale is None else self.scale[flat]
        low = None if self.minimum is None else self.minimum[flat]
        rows = dequantize(self.fmt, self.q[flat], pick, low, dtype)
        return rows.reshape(*index.shape, self.cols)

    def chunk_rows(self) -> int:
        return dense_chunk(self.rows, self.cols) // self.cols

    def extra_repr(self) -> str:
        return f"{self.fmt}, ({self.rows}, {self.cols})"


def _rows(t: torch.Tensor | None, start: int, stop: int) -> torch.Tensor | None:
    return None if t is None else t[start:stop]


def quantize(w: torch.Tensor, fmt: str) -> Packed:
    """`w` (rows, cols) in `fmt`, with GGUF's reference rounding for the q-formats (the
    blocks equal `gguf.quants.quantize`'s)."""
    rows, cols = w.shape
    if fmt in ("bf16", "fp16"):
        return Packed(fmt, rows, cols, w.detach().to(DENSE[fmt]).clone())
    if fmt not in QUANTIZED:
        raise EdgetuneError(f"cannot hold weights as {fmt!r}; choose from {', '.join(HELD)}")
    x = w.detach().float()
    if fmt == "int8":
        amax = x.abs().amax(dim=1, keepdim=True)
        d = amax / 127
        q = _roundf(x * torch.where(d == 0, 0, 1 / d)).to(torch.int8)
        return Packed(fmt, rows, cols, q.reshape(rows, 1, cols), d)
    if cols % BLOCK:
        raise EdgetuneError(f"{fmt} needs rows of a multiple of {BLOCK} values, not {cols}")
    b = x.reshape(rows, cols // BLOCK, BLOCK)
    if fmt == "q8_0":
        d = b.abs().amax(dim=-1, keepdim=True) / 127
        q = _roundf(b * torch.where(d == 0, 0, 1 / d)).to(torch.int8)
        return Packed(fmt, rows, cols, q, d.squeeze(-1).half())
    if fmt == "q4_0":
        imax = b.abs().argmax(dim=-1, keepdim=True)
        d = torch.gather(b, -1, imax) / -8
        v = torch.trunc(b * torch.where(d == 0, 0, 1 / d) + 8.5).clamp(0, 15)
        return Packed(fmt, rows, cols, _pack4(v), d.squeeze(-1).half())
    low, high = b.amin(dim=-1, keepdim=True), b.amax(dim=-1, keepdim=True)
    d = (high - low) / 15
    v = torch.trunc((b - low) * torch.where(d == 0, 0, 1 / d) + 0.5).clamp(0, 15)
    return Packed(fmt, rows, cols, _pack4(v), d.squeeze(-1).half(), low.squeeze(-1).half())


def _roundf(x: torch.Tensor) -> torch.Tensor:
    """C's roundf: halves away from zero (torch.round rounds them to even)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def _pack4(v: torch.Tensor) -> torch.Tensor:
    u = v.to(torch.uint8)
    return u[..., : BLOCK // 2] | (u[..., BLOCK // 2 :] << 4)


def dequantize(fmt, q, scale, minimum, dtype=torch.float32) -> torch.Tensor:
    """Dense (rows, cols) of `dtype` from a format's buffers (rows first). The arithmetic runs
    in `dtype` (one fused multiply-add per value: v * d + m, or (v - 8) * d as v * d - 8 d)."""
    if fmt in ("bf16", "fp16"):
        return q.to(dtype)
    rows = q.shape[0]
    d = scale.to(dtype).unsqueeze(-1)
    if fmt in ("q8_0", "int8"):
        return (q.to(dtype) * d).reshape(rows, -1)
    base = minimum.to(dtype).unsqueeze(-1) if fmt == "q4_1" else d * -8
    out = torch.empty(*q.shape[:-1], BLOCK, dtype=dtype, device=q.device)
    half = BLOCK // 2
    torch.addcmul(base, (q & 0x0F).to(dtype), d, out=out[..., :half])
    torch.addcmul(base, (q >> 4).to(dtype), d, out=out[..., half:])
    return out.reshape(rows, -1)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype an op on `x` computes in: autocast's when it is on, else `x`'s own."""
    kind = x.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return x.dtype


class _FrozenLinear(torch.autograd.Function):
    """y = x W^T with W formed chunk by chunk in the forward and again in the backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: Packed) -> torch.Tensor:
        dtype = compute_dtype(x)
        ctx.weight, ctx.dtype, ctx.in_dtype = weight, dtype, x.dtype
        x = x.to(dtype)
        step = weight.chunk_rows()
        if step >= weight.rows:
            return F.linear(x, weight.dense(dtype=dtype))
        y = x.new_empty(*x.shape[:-1], weight.rows)
        for start in range(0, weight.rows, step):
            stop = min(weight.rows, start + step)
            y[..., start:stop] = F.linear(x, weight.dense(start, stop, dtype))
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight, dtype = ctx.weight, ctx.dtype
        grad = grad.to(dtype)
        step = weight.chunk_rows()
        if step >= weight.rows:
            gx = grad @ weight.dense(dtype=dtype)
        else:
            gx = grad.new_zeros(*grad.shape[:-1], weight.cols)
            for start in range(0, weight.rows, step):
                stop = min(weight.rows, start + step)
                gx += grad[..., start:stop] @ weight.dense(start, stop, dtype)
        return gx.to(ctx.in_dtype), None


class QuantLinear(nn.Module):
    """A frozen Linear whose weight is a `Packed` matrix; the bias, if any, stays fp32 (and
    may train). Duck-types nn.Linear's `in_features`/`out_features` for PEFT and the anatomy."""

    bias: nn.Parameter | None

    def __init__(self, weight: Packed, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.packed = weight
        self.in_features, self.out_features = weight.cols, weight.rows
        self.bias = None if bias is None else nn.Parameter(bias.detach().float(), False)

    @property
    def qweight(self) -> torch.Tensor:
        """The held codes (where PEFT looks for a quantized layer's device)."""
        return self.packed.q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _FrozenLinear.apply(x, self.packed)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def rows(self, start: int, stop: int) -> QuantLinear:
        """Output rows [start, stop) as a QuantLinear over the same storage (no copy)."""
        p = self.packed
        part = Packed(p.fmt, stop - start, p.cols, p.q[start:stop],
                      _rows(p.scale, start, stop), _rows(p.minimum, start, stop))  # fmt: skip
        b = None if self.bias is None else self.bias.detach()[start:stop]
        return QuantLinear(part, b)

    def dense_linear(self) -> nn.Linear:
        """A plain fp32 nn.Linear of the same weight (to merge into, or to save)."""
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        with torch.no_grad():
            out.weight.copy_(self.packed.dense())
            if self.bias is not None:
                out.bias.copy_(self.bias)
        return out


class QuantEmbedding(nn.Module):
    """A frozen embedding table held as a `Packed` matrix: a lookup dequantizes the rows it
    reads. (A tied LM head is a QuantLinear over the same `Packed`.)"""

    def __init__(self, weight: Packed, padding_idx: int | None = None) -> None:
        super().__init__()
        self.packed = weight
        self.num_embeddings, self.embedding_dim = weight.rows, weight.cols
        self.padding_idx = padding_idx

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.packed.gather(ids)

    def dense_embedding(self) -> nn.Embedding:
        out = nn.Embedding(self.num_embeddings, self.embedding_dim, self.padding_idx)
        with torch.no_grad():
            out.weight.copy_(self.packed.dense())
        return out


def holds(fmt: str, cols: int) -> bool:
    """Whether a matrix of `cols` columns can be held in `fmt` (the block formats need whole
    blocks per row; a matrix that cannot stays fp32, as llama.cpp keeps such rows wider)."""
    return fmt in ("int8", "bf16", "fp16") or cols % BLOCK == 0


def densify(model: nn.Module) -> nn.Module:
    """`model` with every held module replaced by its fp32 twin, in place, one at a time (tied
    matrices stay tied): a plain transformers model again, to save."""
    dense: dict[int, nn.Parameter] = {}
    for name, module in list(model.named_modules()):
        if isinstance(module, QuantLinear):
            twin: nn.Module = module.dense_linear()
        elif isinstance(module, QuantEmbedding):
            twin = module.dense_embedding()
        else:
            continue
        key = id(module.packed)
        if key in dense:
            twin.weight = dense[key]
        dense[key] = cast(nn.Parameter, twin.weight)
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, twin)
    return model


def is_held(model: nn.Module) -> bool:
    """Whether any matrix of `model` is held in a low-precision format."""
    return any(isinstance(m, Packed) for m in model.modules())


def bytes_per_weight(model: nn.Module) -> float | None:
    """Mean bytes per weight of the model's held matrices (None: nothing is held)."""
    packed = {id(m): m for m in model.modules() if isinstance(m, Packed)}
    if not packed:
        return None
    return sum(m.nbytes for m in packed.values()) / sum(m.rows * m.cols for m in packed.values())


def held_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes of the model's weights by holding: `packed` (low-precision matrices, shared ones
    once) and `dense` (parameters and other buffers)."""
    seen: set[int] = set()
    packed = 0
    for m in model.modules():
        if isinstance(m, Packed) and id(m) not in seen:
            seen.add(id(m))
            packed += m.nbytes
    packed_ids = {id(t) for m in model.modules() if isinstance(m, Packed)
                  for t in (m.q, m.scale, m.minimum) if t is not None}  # fmt: skip
    dense = sum(p.numel() * p.element_size() for p in model.parameters())
    dense += sum(b.numel() * b.element_size() for b in model.buffers() if id(b) not in packed_ids)
    return {"packed": packed, "dense": dense}
