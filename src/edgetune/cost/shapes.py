"""Model shapes: the numbers the cost model needs, read from a Hugging Face config dict.

`shape_from_config(config.to_dict())` understands every model type edgetune trains
(`edgetune.families.MODEL_TYPES`): bert, roberta, xlm-roberta, longformer, distilbert, albert,
t5 and mt5 (flan-t5's gated-gelu too), gpt2, llama and its kin mistral, qwen2, qwen3,
gemma3_text and phi3. `NAMED_SHAPES` holds shapes of
models the runtime does not build but the cost model should know (AlexaTM 20B, the seed paper's
largest model). `n_params` counts parameters exactly as the transformers classes do, so a test
can compare it with `sum(p.numel() for p in model.parameters())`.

Pure Python: no torch, no transformers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from edgetune.errors import EdgetuneError
from edgetune.families import DECODER, ENCODER, ENCODER_DECODER

FAMILIES = ("bert", "distilbert", "albert", "t5", "gpt2", "llama", "gemma3", "phi3", "longformer")
# config.model_type of the decoders with rotary embeddings, RMSNorm and a gated FFN -> family
ROTARY_DECODERS = {"llama": "llama", "mistral": "llama", "qwen2": "llama", "qwen3": "llama",
                   "gemma3_text": "gemma3", "phi3": "phi3"}  # fmt: skip
HEADS = ("none", "lm", "classifier")


@dataclass(frozen=True)
class ModelShape:
    """Everything about an architecture that changes its parameter count, FLOPs or memory.

    Widths are per token. `n_layers` counts encoder blocks of an encoder-decoder (or the only
    stack otherwise); `n_dec_layers` the decoder blocks of an encoder-decoder (0 otherwise).
    """

    name: str
    family: str  # one of FAMILIES ("custom" for named shapes)
    kind: str  # encoder | decoder | encoder-decoder
    vocab: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int
    n_dec_layers: int = 0
    gated: bool = False  # gated FFN (two input projections: gate and up)
    act: str = "gelu"  # gelu | gelu_new | gelu_pytorch_tanh | relu | silu
    norm: str = "layernorm"  # layernorm | rmsnorm | rmsnorm1p (Gemma: x_hat * (1 + w))
    bias: bool = True  # linear layers have biases
    qkv_bias: bool = False  # q, k and v have biases though the other linears do not (Qwen2)
    fused: bool = False  # q, k, v one linear (GPT-2's c_attn, Phi-3) and gate, up another (Phi-3)
    qk_norm: bool = False  # an RMSNorm over each head of q and of k (Qwen3, Gemma 3)
    post_norms: bool = False  # norms of the attention's and the FFN's outputs too (Gemma 3)
    emb_scale: bool = False  # the looked-up embeddings multiplied by sqrt(d_model) (Gemma)
    rope_dim: int = 0  # rotary width per head (0: no rotary embedding; Phi-3 may rotate a part)
    # per block "full_attention" | "sliding_attention" (empty: one kind). A sliding window
    # changes the mask only: eager and sdpa attention still form every score, so FLOPs and
    # saved bytes are those of full attention; each kind has its own mask (and with
    # `rope_per_kind`, Gemma 3, its own RoPE tables)
    layer_types: tuple[str, ...] = ()
    rope_per_kind: bool = False
    logit_softcap: bool = False  # LM logits -> c tanh(logits / c) (Gemma's
    # `final_logit_softcapping`; its `attn_logit_softcapping` is not read by Gemma 3's attention)
    tied: bool = True  # LM head shares the input embedding matrix
    n_positions: int = 0  # rows of a learned position table (0: rotary or relative)
    type_vocab: int = 0  # token-type (segment) embeddings
    emb_size: int = 0  # ALBERT's factorized embedding width (0: same as d_model)
    shared_layers: bool = False  # ALBERT: one set of block weights reused by every layer
    rel_buckets: int = 0  # T5 relative attention bias buckets (first block of each stack)
    attn_window: int = 0  # Longformer sliding window (0: full attention)
    global_proj: bool = False  # Longformer's extra q/k/v projections for global attention
    pooler: bool = False  # BERT-style pooler (dense + tanh on the first token) in the base model
    emb_norm: bool = True  # normalization after the embeddings (BERT family)
    final_norm: bool = False  # normalization after the last block (pre-norm models)
    kv_cache: bool = False  # decoder attention fills a KV cache in every forward (use_cache)
    # dropout probabilities in train mode: of the residual branches and embeddings (hidden), of
    # the attention map, before the classifier (`edgetune.cost.blocks` places them per family)
    dropout: float = 0.0
    attn_dropout: float = 0.0
    classifier_dropout: float = 0.0
    source: str = ""  # where the numbers come from

    @property
    def emb_width(self) -> int:
        return self.emb_size or self.d_model

    @property
    def q_width(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.n_kv_heads * self.head_dim

    def with_layers(self, n_layers: int, n_dec_layers: int | None = None) -> ModelShape:
        return replace(
            self,
            n_layers=n_layers,
            n_dec_layers=self.n_dec_layers if n_dec_layers is None else n_dec_layers,
        )


def _get(cfg: dict, *keys: str, default=None):
    for k in keys:
        if cfg.get(k) is not None:
            return cfg[k]
    if default is not None:
        return default
    raise EdgetuneError(f"config has none of the fields {keys}; cannot work out the model shape")


def _p(cfg: dict, *keys: str) -> float:
    """A dropout probability: the first of `keys` the config sets, else 0 (none)."""
    return float(_get(cfg, *keys, default=0.0) or 0.0)


def _tied(cfg: dict, default: bool) -> bool:
    """Whether the LM head shares the input embedding matrix (`tie_word_embeddings`; its
    default is the family's own: True for transformers' configs, False for Llama's)."""
    value = cfg.get("tie_word_embeddings")
    return default if value is None else bool(value)


def _kv_cache(cfg: dict) -> bool:
    """Whether a decoder's forward fills a KV cache: transformers does whenever `use_cache`
    (default True), in training too, unless the caller passes use_cache=False."""
    return bool(cfg.get("use_cache", True))


def shape_from_config(cfg: dict, name: str | None = None) -> ModelShape:
    """The shape of a transformers config, given as `config.to_dict()`."""
    family = cfg.get("model_type")
    name = name or str(cfg.get("_name_or_path") or family)
    if family in ("bert", "longformer", "roberta", "xlm-roberta"):
        d, heads = cfg["hidden_size"], cfg["num_attention_heads"]
        window = cfg.get("attention_window", 0) if family == "longformer" else 0
        if isinstance(window, list):
            window = max(window)
        return ModelShape(
            name, "longformer" if family == "longformer" else "bert", ENCODER, cfg["vocab_size"],
            d, cfg["num_hidden_layers"], heads, heads, d // heads, cfg["intermediate_size"],
            act=cfg.get("hidden_act", "gelu"), n_positions=cfg["max_position_embeddings"],
            type_vocab=cfg.get("type_vocab_size", 0), attn_window=window,
            global_proj=family == "longformer", pooler=True, tied=_tied(cfg, True),
            dropout=_p(cfg, "hidden_dropout_prob"),
            attn_dropout=_p(cfg, "attention_probs_dropout_prob"),
            classifier_dropout=_p(cfg, "classifier_dropout", "hidden_dropout_prob"),
        )  # fmt: skip
    if family == "distilbert":
        d, heads = cfg["dim"], cfg["n_heads"]
        return ModelShape(
            name, "distilbert", ENCODER, cfg["vocab_size"], d, cfg["n_layers"], heads, heads,
            d // heads, cfg["hidden_dim"], act=cfg.get("activation", "gelu"),
            n_positions=cfg["max_position_embeddings"], tied=_tied(cfg, True),
            dropout=_p(cfg, "dropout"), attn_dropout=_p(cfg, "attention_dropout"),
            classifier_dropout=_p(cfg, "seq_classif_dropout"),
        )  # fmt: skip
    if family == "albert":
        d, heads = cfg["hidden_size"], cfg["num_attention_heads"]
        if cfg.get("num_hidden_groups", 1) != 1 or cfg.get("inner_group_num", 1) != 1:
            raise EdgetuneError("ALBERT shapes with more than one layer group are not modelled")
        return ModelShape(
            name, "albert", ENCODER, cfg["vocab_size"], d, cfg["num_hidden_layers"], heads, heads,
            d // heads, cfg["intermediate_size"], act=cfg.get("hidden_act", "gelu_new"),
            n_positions=cfg["max_position_embeddings"], type_vocab=cfg.get("type_vocab_size", 0),
            emb_size=cfg["embedding_size"], shared_layers=True, pooler=True,
            tied=_tied(cfg, True), dropout=_p(cfg, "hidden_dropout_prob"),
            attn_dropout=_p(cfg, "attention_probs_dropout_prob"),
            classifier_dropout=_p(cfg, "classifier_dropout_prob"),
        )  # fmt: skip
    if family in ("t5", "mt5"):
        proj = cfg.get("feed_forward_proj", "relu")
        gated = proj.startswith("gated-")
        act = proj.split("-", 1)[1] if gated else proj
        n_layers = cfg["num_layers"]
        return ModelShape(
            name, "t5", ENCODER_DECODER, cfg["vocab_size"], cfg["d_model"], n_layers,
            cfg["num_heads"], cfg["num_heads"], cfg["d_kv"], cfg["d_ff"],
            n_dec_layers=_get(cfg, "num_decoder_layers", default=n_layers), gated=gated,
            act="gelu_new" if act == "gelu" else act, norm="rmsnorm", bias=False,
            tied=_tied(cfg, True), rel_buckets=cfg.get("relative_attention_num_buckets", 32),
            emb_norm=False, final_norm=True, kv_cache=_kv_cache(cfg),
            dropout=_p(cfg, "dropout_rate"), attn_dropout=_p(cfg, "dropout_rate"),
        )  # fmt: skip
    if family == "gpt2":
        d, heads = cfg["n_embd"], cfg["n_head"]
        return ModelShape(
            name, "gpt2", DECODER, cfg["vocab_size"], d, cfg["n_layer"], heads, heads, d // heads,
            cfg.get("n_inner") or 4 * d, act=cfg.get("activation_function", "gelu_new"),
            fused=True,
            n_positions=cfg["n_positions"], emb_norm=False, final_norm=True,
            tied=_tied(cfg, True), kv_cache=_kv_cache(cfg), dropout=_p(cfg, "resid_pdrop"),
            attn_dropout=_p(cfg, "attn_pdrop"),
        )  # fmt: skip
    if family in ROTARY_DECODERS:
        return _rotary_decoder(cfg, family, name)
    raise EdgetuneError(
        f"the cost model does not know model type {family!r}; known: {', '.join(FAMILIES)}"
    )


def _rotary_decoder(cfg: dict, model_type: str, name: str) -> ModelShape:
    """Llama and its kin: Mistral (as Llama), Qwen2 (q, k, v biases), Qwen3 (q/k norms,
    head_dim apart from d / heads), Gemma 3 text ((1 + w) norms before and after each branch,
    q/k norms, scaled embeddings, GELU-tanh, per-kind RoPE), Phi-3 (fused projections)."""
    d, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    family = ROTARY_DECODERS[model_type]
    gemma = family == "gemma3"
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise EdgetuneError(f"{model_type} shapes with attention or MLP biases are not modelled")
    head_dim = cfg.get("head_dim") or d // heads
    # Phi-3's RoPE may rotate a part of each head (Phi-4-mini: 3/4); the others the whole
    rope = (cfg.get("rope_parameters") or {}) if family == "phi3" else {}
    rope_dim = int(head_dim * rope.get("partial_rotary_factor", 1.0))
    return ModelShape(
        name, family, DECODER, cfg["vocab_size"], d, cfg["num_hidden_layers"], heads,
        cfg.get("num_key_value_heads") or heads, head_dim, cfg["intermediate_size"], gated=True,
        act=_get(cfg, "hidden_activation", "hidden_act", default="silu"),
        norm="rmsnorm1p" if gemma else "rmsnorm", bias=False, qkv_bias=model_type == "qwen2",
        fused=family == "phi3", qk_norm=gemma or model_type == "qwen3", post_norms=gemma,
        emb_scale=gemma, rope_dim=rope_dim,
        layer_types=tuple(cfg.get("layer_types") or ()), rope_per_kind=gemma,
        logit_softcap=cfg.get("final_logit_softcapping") is not None,
        tied=_tied(cfg, gemma), emb_norm=False, final_norm=True, kv_cache=_kv_cache(cfg),
        dropout=_p(cfg, "resid_pdrop"), attn_dropout=_p(cfg, "attention_dropout"),
    )  # fmt: skip


# Shapes the runtime registry does not build. Numbers from the cited publications.
NAMED_SHAPES: dict[str, ModelShape] = {
    # AlexaTM 20B (Soltan et al. 2022, "AlexaTM 20B: Few-Shot Learning Using a Large-Scale
    # Multilingual Seq2seq Model", arXiv:2208.01448, table 1): 46 encoder and 32 decoder
    # layers, d_model 4096, 32 heads, d_ff 16384, vocabulary 150k. Pre-LN, GeLU, learned
    # positions are not stated in the table; Pau & Aymone 2024 use the same numbers.
    "alexatm-20b": ModelShape(
        "alexatm-20b",
        "custom",
        ENCODER_DECODER,
        150_000,
        4096,
        46,
        32,
        32,
        128,
        16384,
        n_dec_layers=32,
        act="gelu",
        norm="layernorm",
        bias=True,
        tied=True,
        emb_norm=False,
        final_norm=True,
        source="Soltan et al. 2022, arXiv:2208.01448, table 1",
    ),  # fmt: skip
    # The seed paper's DistilBERT and GPT-3 Small (its d_model of 784 for GPT-3 Small is
    # a typo in its code; Brown et al. 2020 table 2.1 gives 768).
}


# -- parameter counts -------------------------------------------------------------------------
def _linear(d_in: int, d_out: int, bias: bool) -> int:
    return d_in * d_out + (d_out if bias else 0)


def _norm(s: ModelShape, width: int | None = None) -> int:
    width = width or s.d_model
    return 2 * width if s.norm == "layernorm" else width


def block_params(s: ModelShape, cross: bool = False, rel_bias: bool = False) -> int:
    """One transformer block: self-attention, optional cross-attention, FFN and norms."""
    d, b = s.d_model, s.bias
    bq = b or s.qkv_bias
    attn = _linear(d, s.q_width, bq) + 2 * _linear(d, s.kv_width, bq) + _linear(s.q_width, d, b)
    if s.global_proj:
        attn += _linear(d, s.q_width, b) + 2 * _linear(d, s.kv_width, b)
    n = attn + (4 if s.post_norms else 2) * _norm(s)
    if s.qk_norm:
        n += 2 * _norm(s, s.head_dim)
    if rel_bias:
        n += s.rel_buckets * s.n_heads
    if cross:
        n += _linear(d, s.q_width, b) + 2 * _linear(d, s.kv_width, b) + _linear(s.q_width, d, b)
        n += _norm(s)
    n_in = 2 if s.gated else 1
    n += n_in * _linear(d, s.d_ff, b) + _linear(s.d_ff, d, b)
    return n


def embedding_params(s: ModelShape) -> int:
    e = s.emb_width
    n = s.vocab * e + s.n_positions * e + s.type_vocab * e
    if s.emb_norm:
        n += _norm(s, e)
    if s.emb_size and s.emb_size != s.d_model:
        n += _linear(e, s.d_model, True)  # ALBERT's embedding_hidden_mapping_in
    return n


def head_params(s: ModelShape, head: str, n_labels: int = 2) -> int:
    """Parameters the task head adds on top of the base model (transformers' classes)."""
    d = s.d_model
    if head == "none":
        return 0
    if head == "lm":
        if s.kind == ENCODER:  # BERT-style MLM head: transform + norm + (tied) decoder + bias
            e = s.emb_width
            n = _linear(d, e, True) + _norm(s, e) + s.vocab
            n -= _linear(d, d, True) if s.pooler else 0  # ForMaskedLM drops the pooler
            if not s.tied:  # its own matrix; BERT/ALBERT's decoder bias is then its own too
                n += s.vocab * e + (0 if s.family == "distilbert" else s.vocab)
            return n
        return 0 if s.tied else s.vocab * d
    if head == "classifier":
        if s.family in ("bert", "albert"):
            return _linear(d, n_labels, True)  # on the pooler
        if s.family == "distilbert":
            return _linear(d, d, True) + _linear(d, n_labels, True)
        if s.family == "longformer":  # drops the pooler, adds dense + out_proj
            return _linear(d, n_labels, True)
        return _linear(d, n_labels, False)  # decoders: score on the last token
    raise EdgetuneError(f"unknown head {head!r}; choose from {', '.join(HEADS)}")


def n_params(s: ModelShape, head: str = "none", n_labels: int = 2) -> int:
    """Parameter count of the transformers model: base model (head='none'), ForCausalLM /
    ForConditionalGeneration / ForMaskedLM (head='lm') or ForSequenceClassification."""
    n = embedding_params(s)
    if s.kind == ENCODER_DECODER:
        n += s.n_layers * block_params(s) + _norm(s)
        n += s.n_dec_layers * block_params(s, cross=True) + _norm(s)
        n += 2 * s.rel_buckets * s.n_heads  # relative bias in the first block of each stack
    else:
        n += (1 if s.shared_layers else s.n_layers) * block_params(s)
        n += _norm(s) if s.final_norm else 0
    if s.pooler:
        n += _linear(s.d_model, s.d_model, True)
    return n + head_params(s, head, n_labels)
