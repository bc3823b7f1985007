"""The forward pass of each architecture, written as ops on a `Tape` (see `graph.py`).

Per block: embeddings, self-attention with grouped KV heads (and cross-attention in a
decoder of an encoder-decoder), the FFN (plain or gated), norms (post-norm BERT family, pre-norm
GPT-2, Llama and its kin, T5; Gemma 3 also after each branch), and the head (LM head over the
vocabulary, or a classifier). What each op
saves mirrors the eager attention of transformers 5 and PyTorch's autograd formulas.

Layer indices: an encoder-decoder numbers encoder blocks 0..n_layers-1 and decoder blocks
n_layers..n_layers+n_dec_layers-1, the convention `UpdateScheme` layers follow in edgetune.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from edgetune.cost.graph import FROZEN, Node, Tape, Train
from edgetune.cost.shapes import ModelShape
from edgetune.errors import EdgetuneError
from edgetune.families import DECODER, ENCODER, ENCODER_DECODER
from edgetune.precision import dense_chunk

TOKENS = "tokens"  # key of the token embedding table (shared by T5's stacks, tied LM heads)


@dataclass(frozen=True)
class Trainability:
    """Which parameters train. `unit(role, layer)` gives the `Train` of one part of a block:
    q, k, v (the three linears of the scheme's `qkv` unit), attn_out, ffn1, ffn2, norm;
    `embeddings` and `head` say whether those train. A head tied to the embedding matrix trains
    that matrix whenever the head trains (counted once); if the embeddings do not train, no
    gradient reaches the lookup (the runtime detaches it), only the head's dW is formed."""

    unit: Callable[[str, int], Train]
    embeddings: bool
    head: bool


@dataclass(frozen=True)
class Inputs:
    batch: int
    seq: int  # tokens per sequence (encoder source length of an encoder-decoder)
    tgt_seq: int = 0  # decoder target length of an encoder-decoder
    head: str = "lm"  # lm | classifier | none
    n_labels: int = 2
    scored: float = 1.0  # share of positions the loss scores: a causal LM forms logits there only
    chunked: bool = False  # a causal LM's frozen head and loss a vocabulary chunk at a time


def record(s: ModelShape, tape: Tape, tr: Trainability, inp: Inputs) -> None:
    """Record one forward pass of `s` on `inp` into `tape` (segments: embeddings, layer.i,
    head, loss). As in transformers, a stack's input embeddings stay referenced until the stack
    returns; the stacks' outputs and a KV cache (decoders with `kv_cache`) until the model
    returns, after its own loss."""
    b, t = inp.batch, inp.seq
    head_trains = tr.head and inp.head != "none"
    emb_trains = tr.embeddings
    n_blocks = s.n_layers + s.n_dec_layers
    tape.begin("embeddings")
    if s.kind == ENCODER_DECODER:
        emb = src = _embed(s, tape, b * t, emb_trains)
        for i in range(s.n_layers):
            tape.begin(f"layer.{i}")
            src = _block(s, tape, tr, i, src, b, t)
        tape.begin("encoder.final_norm")  # trains with the last encoder block's norms
        src = tape.norm(src, b * t, s.norm, tr.unit("norm", s.n_layers - 1))
        src = tape.dropout(src, s.dropout)
        tape.release(emb)
        tape.held.append(src)  # the encoder's output, in the model's locals
        tape.begin("decoder.embeddings")
        tt = inp.tgt_seq or t
        emb = x = _embed(s, tape, b * tt, emb_trains)
        for j in range(s.n_dec_layers):
            i = s.n_layers + j
            tape.begin(f"layer.{i}")
            x = _block(s, tape, tr, i, x, b, tt, enc=(src, t))
        rows = b * tt
    else:
        emb = x = _embed(s, tape, b * t, emb_trains)
        for i in range(s.n_layers):
            tape.begin(f"layer.{i}")
            tape.share_params("block" if s.shared_layers else None)  # ALBERT: one set
            x = _block(s, tape, tr, i, x, b, t)
        tape.share_params(None)
        rows = b * t
    tape.begin("head")
    if s.final_norm:  # trains with the last block's norms
        x = tape.norm(x, rows, s.norm, tr.unit("norm", n_blocks - 1))
        if s.family == "t5":
            x = tape.dropout(x, s.dropout)
    tape.release(emb)
    tape.held.append(x)  # the base model's output object holds its last hidden state
    chunkable = s.kind == DECODER and not s.logit_softcap  # as the runtime's chunked loss
    if inp.chunked and inp.head == "lm" and chunkable and not head_trains:
        keep = max(1, round(rows * inp.scored))
        chunk = dense_chunk(s.vocab, s.emb_width) // s.emb_width
        tape.chunked_head(x, keep, s.emb_width, s.vocab, chunk, TOKENS if s.tied else None)
        tape.release(*tape.held)
        return
    scored = _head(s, tape, x, rows, b, inp, head_trains)
    if scored is not None:
        tape.begin("loss")
        tape.cross_entropy(*scored)
    tape.release(*tape.held)


def _embed(s: ModelShape, tape: Tape, rows: int, trained: bool) -> Node:
    e = s.emb_width
    x = tape.embedding(rows, e, s.vocab, trained, TOKENS)
    for table in (s.n_positions, s.type_vocab):
        if table:
            x = tape.add(x, tape.embedding(rows, e, table, trained))
    if s.emb_norm:
        x = tape.norm(x, rows, s.norm, Train(1.0, True) if trained else FROZEN)
    if s.emb_scale:  # Gemma: * sqrt(d), a new tensor (the scale is a buffer)
        x = tape.pointwise(x)
    x = tape.dropout(x, s.dropout)
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
) -> tuple[Node, Node]:
    """Self-attention (kv None) or cross-attention over `kv` = (encoder output, its length).
    Returns the output and the attention map (the caller holds it until the block returns)."""
    src, n = kv if kv else (x, t)
    # Longformer: each query sees a window of attn_window + 1 keys (modelled as a band; the
    # chunked implementation of transformers computes more, its FLOPs are not verified)
    keys = min(n, s.attn_window + 1) if s.attn_window and not kv else n
    rows, h, hd = b * t, s.n_heads, s.head_dim
    t_q, t_k, t_v = (tr.unit(r, i) for r in ("q", "k", "v"))  # the qkv unit, per linear
    t_out = tr.unit("attn_out", i)
    bq = s.bias or s.qkv_bias
    if s.fused:  # Phi-3: one linear, q, k and v are views of its output
        qkv = tape.linear(x, rows, s.d_model, s.q_width + 2 * s.kv_width, t_q, bq)
        q, k, v = (tape.view(qkv, m) for m in (rows * s.q_width, *2 * [rows * s.kv_width]))
    else:
        q = tape.linear(x, rows, s.d_model, s.q_width, t_q, bq)
        k = tape.linear(src, b * n, s.d_model, s.kv_width, t_k, bq)
        v = tape.linear(src, b * n, s.d_model, s.kv_width, t_v, bq)
    if s.rel_buckets and not kv and i in (0, s.n_layers) and tr.embeddings:
        # T5's relative position bias (first block of each stack): a position table, it trains
        # with the embeddings (no scheme unit names it); the bucket lookup saves a (T, N) int64
        # index table
        tape.save(tape.new(t * n, nbytes_el=8))
        tape.count_params(s.rel_buckets * s.n_heads)
    if s.qk_norm:  # Qwen3, Gemma 3: an RMSNorm over each head of q and of k
        tn = tr.unit("norm", i)
        q, k = tape.norm(q, rows * h, s.norm, tn), tape.norm(k, b * n * s.n_kv_heads, s.norm, tn)
    kind = s.layer_types[i] if i < len(s.layer_types) else ""  # full or sliding window
    if s.rope_dim:  # RoPE: q*cos + rot(q)*sin saves the (B, T, rope_dim) cos and sin tables
        if q.rg or k.rg:  # computed once per forward (per attention kind), shared by blocks
            for table in ("rope-cos", "rope-sin"):
                key = (table, b * t * s.rope_dim, kind if s.rope_per_kind else "")
                tape.save(tape.shared.setdefault(key, tape.new(b * t * s.rope_dim)))
        q, k = tape.pointwise(q, 0.0), tape.pointwise(k, 0.0)
    # K and V as the products read them: a decoder's KV cache keeps a contiguous copy of each
    # (read from then on), repeat_kv materializes them for every query head; a contiguous
    # operand is saved as is, a transposed view is copied by matmul
    contiguous = s.kv_cache and (causal or kv is not None)
    if contiguous:
        k, v = tape.cached(k), tape.cached(v)
    if s.n_kv_heads != s.n_heads:
        k, v = tape.copy(k, b * n * h * hd), tape.copy(v, b * n * h * hd)
        contiguous = True
    scores = tape.matmul(q, k, (b * h, t, hd, keys), copy_b=not contiguous)
    scores = tape.pointwise(scores)  # * scaling (T5: 1.0): a new (B, h, T, N) map
    if s.family == "t5":  # + the stack's (1, h, T, N) position bias (zeros for cross-attention)
        bias = _once(tape, ("t5-bias", i >= s.n_layers, kv is not None), h * t * keys)
        scores = tape.add(scores, bias)
    if causal:  # eager decoders add a (B, 1, T, N) float mask, one per attention kind
        scores = tape.add(scores, _once(tape, ("mask", b * t * keys, kind), b * t * keys))
    p = tape.dropout(tape.softmax(scores, b * h * t), s.attn_dropout)
    ctx = tape.matmul(p, v, (b * h, t, keys, hd), copy_a=False, copy_b=not contiguous)
    out = tape.linear(ctx, rows, s.q_width, s.d_model, t_out, s.bias)
    if s.family != "distilbert":  # the output's dropout (DistilBERT has none there)
        out = tape.dropout(out, s.dropout)
    tape.release(x, q, k)  # the module's input and locals until it returns
    return out, p


def _once(tape: Tape, key: tuple, numel: int) -> Node:
    """A tensor made once per forward and read by every block (a mask, T5's position bias)."""
    if key not in tape.shared:
        tape.shared[key] = tape.const(numel)
    return tape.shared[key]


def _ffn(s: ModelShape, tape: Tape, tr: Trainability, i: int, x: Node, rows: int) -> Node:
    t1, t2 = tr.unit("ffn1", i), tr.unit("ffn2", i)
    if s.fused and s.gated:  # Phi-3: gate and up are the halves of one linear's output
        gate_up = tape.linear(x, rows, s.d_model, 2 * s.d_ff, t1, s.bias)
        gate, up = tape.view(gate_up, rows * s.d_ff), tape.view(gate_up, rows * s.d_ff)
        a = tape.mul(tape.act(gate, s.act), up)
    elif s.gated:  # act(x W_gate) * (x W_up)
        gate = tape.linear(x, rows, s.d_model, s.d_ff, t1, s.bias)
        up = tape.linear(x, rows, s.d_model, s.d_ff, t1, s.bias)
        a = tape.mul(tape.act(gate, s.act), up)
    else:
        a = tape.act(tape.linear(x, rows, s.d_model, s.d_ff, t1, s.bias), s.act)
    if s.family == "t5":  # T5 drops the hidden activations too
        a = tape.dropout(a, s.dropout)
    out = tape.linear(a, rows, s.d_ff, s.d_model, t2, s.bias)
    if s.family != "albert":  # ALBERT's FFN output goes to its norm as it is
        out = tape.dropout(out, s.dropout)
    tape.release(x)  # the module's input until it returns
    return out


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
    """One block. Its input (the caller's reference) and its attention maps (transformers'
    blocks keep them in a local: `hidden, _ = self.attn(...)`) stay referenced until it
    returns."""
    rows = b * t
    tn = tr.unit("norm", i)
    block_in = x
    if s.family in ("bert", "distilbert", "albert", "longformer"):  # post-norm
        a, p = _attention(s, tape, tr, i, x, b, t)
        x = tape.norm(tape.add(a, x), rows, s.norm, tn)
        x = tape.norm(tape.add(_ffn(s, tape, tr, i, x, rows), x), rows, s.norm, tn)
        tape.release(block_in, p)
        return x
    # pre-norm: x + f(norm(x)); the decoder blocks of an encoder-decoder are causal too
    causal = s.kind == DECODER or enc is not None
    a, p = _attention(s, tape, tr, i, tape.norm(x, rows, s.norm, tn), b, t, None, causal)
    if s.post_norms:  # Gemma 3: the branch's output normed before the residual add
        a = tape.norm(a, rows, s.norm, tn)
    x, maps = tape.add(x, a), [p]
    if enc is not None:
        a, p = _attention(s, tape, tr, i, tape.norm(x, rows, s.norm, tn), b, t, enc)
        x, maps = tape.add(x, a), [*maps, p]
    f = _ffn(s, tape, tr, i, tape.norm(x, rows, s.norm, tn), rows)
    x = tape.add(x, tape.norm(f, rows, s.norm, tn) if s.post_norms else f)
    tape.release(block_in, *maps)
    return x


def _head(
    s: ModelShape,
    tape: Tape,
    x: Node,
    rows: int,
    b: int,
    inp: Inputs,
    trains: bool,
) -> tuple[Node, int] | None:
    """The task head; returns what the loss scores: (logits, their rows), None without a
    head."""
    d = s.d_model
    th = Train(1.0, True) if trains else FROZEN
    if inp.head == "none":
        return None
    if inp.head == "lm":
        if s.kind == ENCODER:  # MLM head: transform, act, norm, decoder (+bias)
            x = tape.act(tape.linear(x, rows, d, s.emb_width, th, True), s.act)
            x = tape.norm(x, rows, s.norm, th)
        elif s.kind == ENCODER_DECODER and s.tied:  # T5 rescales by d^-1/2: a new tensor
            x = tape.pointwise(x)
        if s.kind == DECODER and inp.scored < 1.0:  # hidden_states[labelled positions]
            width = x.numel // rows
            rows = max(1, round(rows * inp.scored))
            x = tape.copy(x, rows * width)
        key = TOKENS if s.tied else None  # a tied decoder is the token table, counted once
        logits = tape.linear(x, rows, s.emb_width, s.vocab, th, s.kind == ENCODER, key)
        if s.logit_softcap:  # Gemma: c tanh(logits / c), tanh saves its output
            logits = tape.pointwise(tape.act(tape.pointwise(logits), "tanh"))
        return logits, rows
    if inp.head != "classifier":
        raise EdgetuneError(f"unknown head {inp.head!r}; choose lm, classifier or none")
    c = inp.n_labels
    if s.kind == DECODER:  # score every token, pick the last one
        logits = tape.linear(x, rows, d, c, th, False)
        return tape.new(b * c, logits.rg), b
    if s.kind != ENCODER:
        raise EdgetuneError("a classifier head on an encoder-decoder is not modelled")
    # first token: a view that keeps the whole (B, T, d) storage alive when saved
    first = Node(x.numel, x.nbytes_el, x.rg, x.storage)
    y = tape.linear(first, b, d, d, th, True)  # pooler / pre_classifier / dense
    y = tape.dropout(tape.act(y, "relu" if s.family == "distilbert" else "tanh"),
                     s.classifier_dropout)  # fmt: skip
    return tape.linear(y, b, d, c, th, True), b


__all__ = ["DECODER", "ENCODER", "ENCODER_DECODER", "Inputs", "Trainability", "record"]
