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

import torch
import torch.nn.functional as F
from torch import nn

from edgetune.errors import EdgetuneError
from edgetune.precision import QUANTIZED, dense_chunk

BLOCK = 32  # GGUF's block of Q8_0, Q4_0, Q4_1
DENSE = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
HELD = (*QUANTIZED, "bf16", "fp16")  # formats a Quant module holds (fp32 stays nn.Linear)


BLOCK_BYTES = {"q8_0": 34, "q4_0": 18, "q4_1": 20}  # GGUF's bytes per block of 32


class Packed(nn.Module):
    """One frozen matrix (rows, cols) in `fmt`, as buffers that slice by row.

    q8_0 / q4_0 / q4_1: `data` uint8 (rows, blocks, block bytes), GGUF's blocks byte for
        byte: an fp16 scale d, for q4_1 an fp16 minimum m, then the 32 values (int8 for q8_0;
        4-bit for the others, value j in the low nibble of byte j and value j + 16 in its high
        nibble). A value is d q, d (q - 8) or d q + m. Read from a GGUF file, `data` is a view
        of the memory-mapped file itself: no copy.
    int8: `data` int8 (rows, cols) and `scale` fp32 (rows, 1): a value is scale q.
    bf16 / fp16: `data` the dense matrix in that dtype.
    """

    data: torch.Tensor  # buffers (register_buffer)
    scale: torch.Tensor | None

    def __init__(self, fmt: str, rows: int, cols: int, data, scale=None) -> None:
        super().__init__()
        self.fmt, self.rows, self.cols = fmt, rows, cols
        self.register_buffer("data", data)
        self.register_buffer("scale", scale)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.data, self.scale)
                   if t is not None)  # fmt: skip

    def dense(self, start: int = 0, stop: int | None = None, dtype=torch.float32) -> torch.Tensor:
        """Rows [start, stop) as a dense (rows, cols) tensor of `dtype`."""
        stop = self.rows if stop is None else stop
        scale = None if self.scale is None else self.scale[start:stop]
        return dequantize(self.fmt, self.data[start:stop], scale, dtype)

    def gather(self, index: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
        """The rows at `index` (any shape) as (*index.shape, cols)."""
        flat = index.reshape(-1)
        scale = None if self.scale is None else self.scale[flat]
        return dequantize(self.fmt, self.data[flat], scale, dtype).reshape(*index.shape, self.cols)

    def rows_of(self, start: int, stop: int) -> Packed:
        """Rows [start, stop) over the same storage (no copy)."""
        scale = None if self.scale is None else self.scale[start:stop]
        return Packed(self.fmt, stop - start, self.cols, self.data[start:stop], scale)

    def reordered(self, order: torch.Tensor) -> Packed:
        """The rows in `order` (a copy)."""
        scale = None if self.scale is None else self.scale[order]
        return Packed(self.fmt, self.rows, self.cols, self.data[order], scale)

    def chunk_rows(self) -> int:
        return dense_chunk(self.rows, self.cols) // self.cols

    def extra_repr(self) -> str:
        return f"{self.fmt}, ({self.rows}, {self.cols})"


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
        d = x.abs().amax(dim=1, keepdim=True) / 127
        q = _roundf(x * torch.where(d == 0, 0, 1 / d)).to(torch.int8)
        return Packed(fmt, rows, cols, q, d)
    if cols % BLOCK:
        raise EdgetuneError(f"{fmt} needs rows of a multiple of {BLOCK} values, not {cols}")
    b = x.reshape(rows, cols // BLOCK, BLOCK)
    if fmt == "q8_0":
        d = b.abs().amax(dim=-1, keepdim=True) / 127
        q = _roundf(b * torch.where(d == 0, 0, 1 / d)).to(torch.int8).view(torch.uint8)
        return Packed(fmt, rows, cols, torch.cat([_half_bytes(d), q], -1))
    if fmt == "q4_0":
        imax = b.abs().argmax(dim=-1, keepdim=True)
        d = torch.gather(b, -1, imax) / -8
        v = torch.trunc(b * torch.where(d == 0, 0, 1 / d) + 8.5).clamp(0, 15)
        return Packed(fmt, rows, cols, torch.cat([_half_bytes(d), _pack4(v)], -1))
    low, high = b.amin(dim=-1, keepdim=True), b.amax(dim=-1, keepdim=True)
    d = (high - low) / 15
    v = torch.trunc((b - low) * torch.where(d == 0, 0, 1 / d) + 0.5).clamp(0, 15)
    return Packed(fmt, rows, cols, torch.cat([_half_bytes(d), _half_bytes(low), _pack4(v)], -1))


def join(parts: list[Packed]) -> Packed:
    """Row slices of one matrix, held in one format, as one `Packed`."""
    first = parts[0]
    scales = [p.scale for p in parts if p.scale is not None]
    data = torch.cat([p.data for p in parts])
    rows = sum(p.rows for p in parts)
    return Packed(first.fmt, rows, first.cols, data, torch.cat(scales) if scales else None)


def requantize(packed: Packed, fmt: str) -> Packed:
    """`packed` in another format, a slice of rows at a time (never whole in fp32)."""
    step = packed.chunk_rows()
    return join([quantize(packed.dense(r, min(packed.rows, r + step)), fmt)
                 for r in range(0, packed.rows, step)])  # fmt: skip


def _half_bytes(x: torch.Tensor) -> torch.Tensor:
    """(..., 1) float -> (..., 2) uint8: the fp16 value's bytes."""
    return x.half().view(torch.uint8)


def _roundf(x: torch.Tensor) -> torch.Tensor:
    """C's roundf: halves away from zero (torch.round rounds them to even)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def _pack4(v: torch.Tensor) -> torch.Tensor:
    u = v.to(torch.uint8)
    return u[..., : BLOCK // 2] | (u[..., BLOCK // 2 :] << 4)


def dequantize(fmt: str, data: torch.Tensor, scale: torch.Tensor | None,
               dtype=torch.float32) -> torch.Tensor:  # fmt: skip
    """Dense (rows, cols) of `dtype` from a format's buffers (rows first). The arithmetic runs
    in `dtype`: one fused multiply-add per value (d q + m, or d (q - 8) as d q - 8 d)."""
    if fmt in ("bf16", "fp16"):
        return data.to(dtype)
    rows = data.shape[0]
    if fmt == "int8":
        assert scale is not None
        return data.to(dtype) * scale.to(dtype)
    d = data[..., 0:2].view(torch.float16).to(dtype)  # (rows, blocks, 1)
    if fmt == "q8_0":
        return (data[..., 2:].view(torch.int8).to(dtype) * d).reshape(rows, -1)
    if fmt == "q4_0":
        base, q = d * -8, data[..., 2:]
    else:
        base, q = data[..., 2:4].view(torch.float16).to(dtype), data[..., 4:]
    out = torch.empty(*q.shape[:-1], BLOCK, dtype=dtype, device=data.device)
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
        return self.packed.data

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _FrozenLinear.apply(x, self.packed)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def rows(self, start: int, stop: int) -> QuantLinear:
        """Output rows [start, stop) as a QuantLinear over the same storage (no copy)."""
        b = None if self.bias is None else self.bias.detach()[start:stop]
        return QuantLinear(self.packed.rows_of(start, stop), b)

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


def held_matrices(model: nn.Module) -> list[Packed]:
    """The model's held matrices, each once (a tied pair shares one)."""
    return list({id(m): m for m in model.modules() if isinstance(m, Packed)}.values())


def is_held(model: nn.Module) -> bool:
    """Whether any matrix of `model` is held in a low-precision format."""
    return bool(held_matrices(model))


def bytes_per_weight(model: nn.Module) -> float | None:
    """Mean bytes per weight of the model's held matrices (None: nothing is held)."""
    packed = held_matrices(model)
    if not packed:
        return None
    return sum(m.nbytes for m in packed) / sum(m.rows * m.cols for m in packed)


def held_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes of the model's weights by holding: `packed` (low-precision matrices, shared ones
    once) and `dense` (parameters and other buffers)."""
    packed = held_matrices(model)
    packed_ids = {id(t) for m in packed for t in (m.data, m.scale) if t is not None}
    dense = sum(p.numel() * p.element_size() for p in model.parameters())
    dense += sum(b.numel() * b.element_size() for b in model.buffers() if id(b) not in packed_ids)
    return {"packed": sum(m.nbytes for m in packed), "dense": dense}
