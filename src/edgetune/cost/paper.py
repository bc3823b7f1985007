"""The seed paper's accounting, for comparison: Pau & Aymone, "Forward Learning of Large Language
Models by Consumer Devices", Electronics 13(2):402, 2024, and its supplementary code
(fabrizioaymone/forward-learning-of-LLMs-to-consumer-devices, `blocks/*.py`).

Their conventions differ from edgetune's autograd-faithful ones (see docs/cost-model.md):
the embedding lookup is a dense one-hot product (M V d MACs); the softmax backward is a full
Jacobian product (M N M h MACs per attention); the LayerNorm backward costs M d^2 MACs; the
attention map is stored once per block (M N, not per head); activations are counted in
elements (the paper plots them as MB, i.e. 1 byte per element), parameters likewise.
M: tokens in context (queries), N: keys (= M in self-attention, the source length in
cross-attention), d: model width, h: heads, V: vocabulary.

Only MACs and activation counts are reproduced here (FLOPs follow the same structure).
"""

from __future__ import annotations

from dataclasses import dataclass

from edgetune.cost.shapes import ModelShape
from edgetune.families import ENCODER_DECODER

METHODS = ("backprop", "pepita", "mempepita")  # the rules the paper accounts for


@dataclass(frozen=True)
class PaperShape:
    n_layers: int  # decoder (or only) stack
    d_model: int
    d_ff: int
    heads: int
    vocab: int
    n_enc: int = 0  # encoder layers of an encoder-decoder
    src: int = 0  # encoder input length N of an encoder-decoder


# The three models of the paper with the numbers its code uses.
DISTILBERT = PaperShape(6, 768, 3072, 12, 30522)
GPT3_SMALL = PaperShape(12, 784, 3072, 12, 50257)  # 784: as in the paper's code
ALEXATM = PaperShape(32, 4096, 16384, 32, 150_000, n_enc=46, src=100)


def _attn(m: int, n: int, d: int, h: int) -> tuple[float, float, float]:
    fwd = 2 * m * d * d + 2 * m * n * d + 2 * n * d * d
    bwd = 2 * m * d * d + 2 * n * d * d + 4 * m * n * d + m * n * m * h
    upd = 2 * m * d * d + 2 * n * d * d
    return fwd, bwd, upd


def _ffn(m: int, d: int, dff: int) -> tuple[float, float, float]:
    x = 2 * m * d * dff
    return x, x, x


def _ln(m: int, d: int) -> tuple[float, float, float]:
    return 0, m * d * d, m * d


def _block(m: int, n: int, p: PaperShape, cross_src: int = 0) -> tuple[float, float, float]:
    parts = [_attn(m, n, p.d_model, p.heads), _ln(m, p.d_model), _ffn(m, p.d_model, p.d_ff)]
    parts.append(_ln(m, p.d_model))
    if cross_src:
        parts += [_attn(m, cross_src, p.d_model, p.heads), _ln(m, p.d_model)]
    return tuple(sum(x[i] for x in parts) for i in range(3))  # type: ignore[return-value]


def macs(p: PaperShape, m: int) -> dict[str, float]:
    """Training-step MACs of BP, PEPITA and MEMPEPITA at context length m (batch 1)."""
    emb = lambda rows: rows * p.vocab * p.d_model  # noqa: E731  one-hot embedding product
    head = p.vocab * p.d_model * m  # output softmax layer, forward = backward = update
    fwd = emb(m) + head
    bwd: float = head
    upd: float = head
    if p.n_enc:
        ef, eb, eu = _block(p.src, p.src, p)
        df, db, du = _block(m, m, p, cross_src=p.src)
        fwd += emb(p.src) + p.n_enc * ef + p.n_layers * df
        bwd += p.n_enc * eb + p.n_layers * db
        upd += p.n_enc * eu + p.n_layers * du
        return {
            "backprop": fwd + bwd + upd,
            "pepita": 2 * fwd + emb(m) + 2 * p.src * m * p.vocab + emb(m) + upd,
            "mempepita": 3 * fwd + emb(m) + p.src * m * p.vocab + emb(m) + upd,
        }
    f, b, u = _block(m, m, p)
    fwd += p.n_layers * f
    bwd += p.n_layers * b
    upd += p.n_layers * u
    return {
        "backprop": fwd + bwd + upd,
        "pepita": 2 * fwd + emb(m) + upd,
        "mempepita": 3 * fwd + emb(m) + upd,
    }


def activations(p: PaperShape, m: int) -> dict[str, float]:
    """Stored activations (elements) of BP, PEPITA and MEMPEPITA, decoder/encoder-only."""
    d, dff, h, v = p.d_model, p.d_ff, p.heads, p.vocab
    attn_bp = m * d + m * d + m * d + m * d + m * m + m * d  # in, Q, K, V, softmax, pre-W_o
    ln = 2 * m * d
    ffn = m * d + m * dff
    head = 2 * m * d
    bp = p.n_layers * (attn_bp + 2 * ln + ffn) + head
    pep = p.n_layers * (attn_bp - m * m + 2 * ln + ffn) + head
    mpep = max(
        m * v + 2 * m * d,
        m * d + 2 * m * d / h,
        2 * m * d + m * d / h,
        2 * m * d + 2 * m * d / h,
        3 * m * d,
        m * d + 2 * m * dff,
        m * d + m * v,
    )
    return {"backprop": bp, "pepita": pep, "mempepita": mpep}


def params(p: PaperShape) -> float:
    """Parameters as the paper counts them for the memory figure (DistilBERT: 66 M)."""
    block = 4 * p.d_model**2 + 2 * p.d_model * p.d_ff + p.d_ff + p.d_model + 4 * p.d_model
    return p.vocab * p.d_model + p.n_layers * block


def paper_shape(shape: ModelShape, src: int = 0) -> PaperShape:
    """The paper's view of a model shape: stacks, widths, heads and vocabulary (its formulas
    know nothing of gating, grouped keys or norms' kinds); `src` is the encoder input length of
    an encoder-decoder."""
    enc = shape.kind == ENCODER_DECODER
    return PaperShape(shape.n_dec_layers if enc else shape.n_layers, shape.d_model, shape.d_ff,
                      shape.n_heads, shape.vocab, n_enc=shape.n_layers if enc else 0,
                      src=src if enc else 0)  # fmt: skip
