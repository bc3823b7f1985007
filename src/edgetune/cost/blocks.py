"""The forward pass of each architecture, written as ops on a `Tape` (see `graph.py`).

Per block: embeddings, self-attention with grouped KV heads (and cross-attention in a
decoder of an encoder-decoder), the FFN (plain or gated), norms (post-norm BERT family, pre-norm
GPT-2, Llama, T5), and the head (LM head over the vocabulary, or a classifier). What each op
saves mirrors the eager attention of transformers 5 and PyTorch's autograd formulas.

Layer indices: an encoder-decoder numbers encoder blocks 0..n_layers-1 and decoder blocks
n_layers..n_layers+n_dec_layers-1, the convention `UpdateScheme` layers follow in edgetune.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from edgetune.cost.graph import FROZEN, Node, Tape, Train
from edgetune.cost.shapes import DECODER, ENCODER, ENCODER_DECODER, ModelShape
from edgetune.errors import EdgetuneError


@dataclass(frozen=True)
class Trainability:
    """Which parameters train. `unit(role, layer)` gives the `Train` of one part of a block:
    q, k, v (the three linears of the scheme's `qkv` unit), attn_out, ffn1, ffn2, norm;
    `embeddings` and `head` say whether those train; a head tied to the embedding matrix
    trains that matrix only if `tied_head` (backprop and PEPITA do, sparse and LoRA do not)."""

    unit: Callable[[str, int], Train]
    embeddings: bool
    head: bool
    tied_head: bool = False  # a tied LM decoder (the embedding matrix) trains with the head


@dataclass(frozen=True)
class Inputs:
    batch: int
    seq: int  # tokens per sequence (encoder source length of an encoder-decoder)
    tgt_seq: int = 0  # decoder target length of an encoder-decoder
    head: str = "lm"  # lm | classifier | none
    n_labels: int = 2


def record(s: ModelShape, tape: Tape, tr: Trainability, inp: Inputs) -> None:
    """Record one forward pass of `s` on `inp` into `tape` (segments: embeddings, layer.i,
    head)."""
    b, t = inp.batch, inp.seq
    head_trains = tr.head and inp.head != "none"
    emb_trains = tr.embeddings
    tape.begin("embeddings")
    if s.kind == ENCODER_DECODER:
        src = _embed(s, tape, b * t, emb_trains)
        for i in range(s.n_layers):
            tape.begin(f"layer.{i}")
            src = _block(s, tape, tr, i, src, b, t)
        tape.begin("encoder.final_norm")  # trains with the last encoder block's norms
        src = tape.norm(src, b * t, s.norm, tr.unit("norm", s.n_layers - 1))
        tape.begin("decoder.embeddings")
        tt = inp.tgt_seq or t
        x = _embed(s, tape, b * tt, emb_trains)
        for j in range(s.n_dec_layers):
            i = s.n_layers + j
            tape.begin(f"layer.{i}")
            x = _block(s, tape, tr, i, x, b, tt, enc=(src, t))
        rows = b * tt
    else:
        x = _embed(s, tape, b * t, emb_trains)
        for i in range(s.n_layers):
            tape.begin(f"layer.{i}")
            x = _block(s, tape, tr, i, x, b, t)
        rows = b * t
    tape.begin("head")
    if s.final_norm:  # trains with the last block's norms
        x = tape.norm(x, rows, s.norm, tr.unit("norm", s.n_layers + s.n_dec_layers - 1))
    _head(s, tape, x, rows, b, inp, head_trains, tr.tied_head, emb_trains)


def _embed(s: ModelShape, tape: Tape, rows: int, trained: bool) -> Node:
    e = s.emb_width
    x = tape.embedding(rows, e, s.vocab, trained)
    for table in (s.n_positions, s.type_vocab):
        if table:
            x = tape.add(x, tape.embedding(rows, e, table, trained))
    if s.emb_norm:
        x = tape.norm(x, rows, s.norm, Train(1.0, True) if trained else FROZEN)
    if s.emb_size and s.emb_size != s.d_model:  # ALBERT's projection to the hidden width
        x = tape.linear(x, rows, e, s.d_model, Train(1.0, True) if trained else FROZEN, True)
    return x


def _attention(
    s: ModelShape,
    tape: Tape,
    tr: Trainability,
    i: int,
    x: Node,
    b: int,
    t: int,
    kv: tuple[Node, int] | None = None,
    causal: bool = False,
) -> Node:
    """Self-attention (kv None) or cross-attention over `kv` = (encoder output, its length)."""
    src, n = kv if kv else (x, t)
    # Longformer: each query sees a window of attn_window + 1 keys (modelled as a band; the
    # chunked implementation of transformers computes more, its FLOPs are not verified)
    keys = min(n, s.attn_window + 1) if s.attn_window and not kv else n
    rows, h, hd = b * t, s.n_heads, s.head_dim
    t_q, t_k, t_v = (tr.unit(r, i) for r in ("q", "k", "v"))  # the qkv unit, per linear
    t_out = tr.unit("attn_out", i)
    q = tape.linear(x, rows, s.d_model, s.q_width, t_q, s.bias)
    k = tape.linear(src, b * n, s.d_model, s.kv_width, t_k, s.bias)
    v = tape.linear(src, b * n, s.d_model, s.kv_width, t_v, s.bias)
    if s.rel_buckets and not kv and i in (0, s.n_layers) and t_q.weight > 0:
        # T5's relative position bias (first block of each stack; trains with its q): the
        # bucket lookup saves a (T, N) int64 index table
        tape.save(tape.new(t * n, nbytes_el=8))
        tape.seg.trained_params += s.rel_buckets * s.n_heads
    if s.family == "llama":  # RoPE: q*cos + rot(q)*sin saves the (B, T, hd) cos and sin tables
        if q.rg or k.rg:  # computed once per forward, shared by every block
            for table in ("rope-cos", "rope-sin"):
                tape.save(tape.shared.setdefault((table, b * t * hd), tape.new(b * t * hd)))
        q, k = tape.new(q.numel, q.rg), tape.new(k.numel, k.rg)
    if s.n_kv_heads != s.n_heads:  # repeat_kv materializes the K and V of every query head
        k, v = tape.new(b * n * h * hd, k.rg), tape.new(b * n * h * hd, v.rg)
    scores = tape.matmul(q, k, b * h * t * keys * hd, b * h * t * keys)  # (B, h, T, N)
    if s.family == "t5":  # + position bias (and mask): one (B, h, T, N) tensor per stack
        stack = "dec" if i >= s.n_layers else "enc"
        bias = tape.shared.get(("t5-bias", stack, bool(kv)))
        if bias is None:
            bias = tape.shared[("t5-bias", stack, bool(kv))] = tape.const(b * h * t * keys)
        scores = tape.add(scores, bias)
    else:
        scores = tape.pointwise(scores)  # * 1/sqrt(head_dim): a new map
        if causal:  # eager decoders add a (B, 1, T, N) float mask made once per forward
            mask = tape.shared.get(("mask", b * t * keys))
            if mask is None:
                mask = tape.shared[("mask", b * t * keys)] = tape.const(b * t * keys)
            scores = tape.add(scores, mask)
    p = tape.softmax(scores, b * h * t)
    ctx = tape.matmul(p, v, b * h * t * keys * hd, rows * s.q_width, copy_a=False)  # (B, T, h*hd)
    tape.keep(ctx, q, k)  # q and k are locals of the attention function until it returns
    return tape.linear(ctx, rows, s.q_width, s.d_model, t_out, s.bias)


def _ffn(s: ModelShape, tape: Tape, tr: Trainability, i: int, x: Node, rows: int) -> Node:
    t1, t2 = tr.unit("ffn1", i), tr.unit("ffn2", i)
    if s.gated:  # act(x W_gate) * (x W_up)
        gate = tape.linear(x, rows, s.d_model, s.d_ff, t1, s.bias)
        up = tape.linear(x, rows, s.d_model, s.d_ff, t1, s.bias)
        a = tape.mul(tape.act(gate, s.act), up)
    else:
        a = tape.act(tape.linear(x, rows, s.d_model, s.d_ff, t1, s.bias), s.act)
    return tape.linear(a, rows, s.d_ff, s.d_model, t2, s.bias)


def _block(
    s: ModelShape,
    tape: Tape,
    tr: Trainability,
    i: int,
    x: Node,
    b: int,
    t: int,
    enc: tuple[Node, int] | None = None,
) -> Node:
    rows = b * t
    tn = tr.unit("norm", i)
    if s.family in ("bert", "distilbert", "albert", "longformer"):  # post-norm
        x = tape.norm(tape.add(_attention(s, tape, tr, i, x, b, t), x), rows, s.norm, tn)
        return tape.norm(tape.add(_ffn(s, tape, tr, i, x, rows), x), rows, s.norm, tn)
    # pre-norm: x + f(norm(x))
    causal = s.kind == DECODER
    x = tape.add(x, _attention(s, tape, tr, i, tape.norm(x, rows, s.norm, tn), b, t, None, causal))
    if enc is not None:
        x = tape.add(x, _attention(s, tape, tr, i, tape.norm(x, rows, s.norm, tn), b, t, enc))
    return tape.add(x, _ffn(s, tape, tr, i, tape.norm(x, rows, s.norm, tn), rows))


def _head(
    s: ModelShape,
    tape: Tape,
    x: Node,
    rows: int,
    b: int,
    inp: Inputs,
    trains: bool,
    tied_trains: bool,
    emb_trains: bool,
) -> None:
    d = s.d_model
    th = Train(1.0, True) if trains else FROZEN
    if inp.head == "none":
        return
    if inp.head == "lm":
        if s.kind == ENCODER:  # MLM head: transform, act, norm, decoder (+bias)
            x = tape.act(tape.linear(x, rows, d, s.emb_width, th, True), s.act)
            x = tape.norm(x, rows, s.norm, th)
        elif s.kind == ENCODER_DECODER and s.tied:  # T5 rescales by d^-1/2: a new tensor
            x = tape.new(x.numel, x.rg)
        t_dec = th
        if s.tied and trains and not tied_trains:  # the shared matrix stays frozen
            t_dec = Train(0.0, True)
        logits = tape.linear(x, rows, s.emb_width, s.vocab, t_dec, s.kind == ENCODER)
        if s.tied and t_dec.weight > 0 and emb_trains:  # one matrix, counted at the embeddings
            tape.seg.trained_params -= s.vocab * s.emb_width
        tape.cross_entropy(logits, rows)
        return
    if inp.head != "classifier":
        raise EdgetuneError(f"unknown head {inp.head!r}; choose lm, classifier or none")
    c = inp.n_labels
    if s.kind == DECODER:  # score every token, pick the last one
        logits = tape.linear(x, rows, d, c, th, False)
        tape.cross_entropy(tape.new(b * c, logits.rg), b)
        return
    if s.kind != ENCODER:
        raise EdgetuneError("a classifier head on an encoder-decoder is not modelled")
    # first token: a view that keeps the whole (B, T, d) storage alive when saved
    first = Node(x.numel, x.nbytes_el, x.rg, x.storage)
    y = tape.linear(first, b, d, d, th, True)  # pooler / pre_classifier / dense
    y = tape.act(y, "relu" if s.family == "distilbert" else "tanh")
    logits = tape.linear(y, b, d, c, th, True)
    tape.cross_entropy(logits, b)


__all__ = ["DECODER", "ENCODER", "ENCODER_DECODER", "Inputs", "Trainability", "record"]
