"""Model families: the kinds of architecture and, per family, where each scheme unit lives.

Pure data (no torch): `edgetune.models.anatomy` maps a real model's modules with it, and the
forecast maps LoRA targets given as module names to the cost model's units with it.
`MODEL_TYPES` maps a transformers `config.model_type` to the family whose layout it shares.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

ENCODER, DECODER, ENCODER_DECODER = "encoder", "decoder", "encoder-decoder"
KINDS = (ENCODER, DECODER, ENCODER_DECODER)


@dataclass(frozen=True)
class Layout:
    blocks: str  # regex matched (search) against the names of the ModuleLists of blocks
    units: dict[str, tuple[str, ...]]  # unit -> module names relative to a block (missing: skip)
    final_norms: tuple[str, ...] = ()  # stack final norms, relative to the stack's parent
    embeddings: str = "input"  # "input": get_input_embeddings(); "module": <prefix>.embeddings
    decoder: bool = False  # decoder-only: its LM is causal (logits at t predict t + 1)


BERT = Layout(
    r"(^|\.)encoder\.layer$",
    {
        "qkv": ("attention.self.query", "attention.self.key", "attention.self.value"),
        "attn_out": ("attention.output.dense",),
        "ffn1": ("intermediate.dense",),
        "ffn2": ("output.dense",),
        "norm": ("attention.output.LayerNorm", "output.LayerNorm"),
    },
    embeddings="module",
)
DISTILBERT = Layout(
    r"(^|\.)transformer\.layer$",
    {
        "qkv": ("attention.q_lin", "attention.k_lin", "attention.v_lin"),
        "attn_out": ("attention.out_lin",),
        "ffn1": ("ffn.lin1",),
        "ffn2": ("ffn.lin2",),
        "norm": ("sa_layer_norm", "output_layer_norm"),
    },
    embeddings="module",
)
ALBERT = Layout(
    r"(^|\.)albert_layers$",
    {
        "qkv": ("attention.query", "attention.key", "attention.value"),
        "attn_out": ("attention.dense",),
        "ffn1": ("ffn",),
        "ffn2": ("ffn_output",),
        "norm": ("attention.LayerNorm", "full_layer_layer_norm"),
    },
    embeddings="module",
)
# Llama, Mistral, Qwen2 (q, k, v biases) and Qwen3 (an RMSNorm over each head of q and k)
LLAMA = Layout(
    r"(^|\.)layers$",
    {
        "qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        "attn_out": ("self_attn.o_proj",),
        "ffn1": ("mlp.gate_proj", "mlp.up_proj"),
        "ffn2": ("mlp.down_proj",),
        "norm": (
            "input_layernorm",
            "post_attention_layernorm",
            "self_attn.q_norm",
            "self_attn.k_norm",
        ),
    },
    final_norms=("norm",),
    decoder=True,
)
# Gemma 3 (text): Llama's linears; norms after the attention and the FFN as well as before
GEMMA3 = replace(
    LLAMA,
    units={
        **LLAMA.units,
        "norm": (
            "input_layernorm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "post_feedforward_layernorm",
            "self_attn.q_norm",
            "self_attn.k_norm",
        ),
    },
)
# Phi-3: q, k, v in one linear, gate and up in another
PHI3 = replace(
    LLAMA,
    units={
        **LLAMA.units,
        "qkv": ("self_attn.qkv_proj",),
        "ffn1": ("mlp.gate_up_proj",),
        "norm": ("input_layernorm", "post_attention_layernorm"),
    },
)
GPT2 = Layout(
    r"(^|\.)h$",
    {
        "qkv": ("attn.c_attn",),
        "attn_out": ("attn.c_proj",),
        "ffn1": ("mlp.c_fc",),
        "ffn2": ("mlp.c_proj",),
        "norm": ("ln_1", "ln_2"),
    },
    final_norms=("ln_f",),
    decoder=True,
)
T5 = Layout(
    r"(^|\.)block$",
    {
        "qkv": tuple(
            f"layer.{i}.{a}.{p}"
            for i, a in ((0, "SelfAttention"), (1, "EncDecAttention"))
            for p in "qkv"
        ),
        "attn_out": ("layer.0.SelfAttention.o", "layer.1.EncDecAttention.o"),
        "ffn1": tuple(
            f"layer.{i}.DenseReluDense.{w}" for i in (1, 2) for w in ("wi", "wi_0", "wi_1")
        ),
        "ffn2": ("layer.1.DenseReluDense.wo", "layer.2.DenseReluDense.wo"),
        "norm": ("layer.0.layer_norm", "layer.1.layer_norm", "layer.2.layer_norm"),
    },
    final_norms=("final_layer_norm",),
    embeddings="stack",
)

FAMILIES: dict[str, Layout] = {
    "bert": BERT,
    "distilbert": DISTILBERT,
    "albert": ALBERT,
    "llama": LLAMA,
    "gemma3": GEMMA3,
    "phi3": PHI3,
    "gpt2": GPT2,
    "t5": T5,
}
# config.model_type -> family
MODEL_TYPES = {
    "bert": "bert",
    "roberta": "bert",
    "xlm-roberta": "bert",
    "longformer": "bert",
    "distilbert": "distilbert",
    "albert": "albert",
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "qwen3": "llama",
    "gemma3_text": "gemma3",
    "phi3": "phi3",
    "gpt2": "gpt2",
    "t5": "t5",
    "mt5": "t5",
}


def roles_of_leaf(family: str, leaf: str) -> tuple[str, ...]:
    """The cost model's block roles (q, k, v, attn_out, ffn1, ffn2, norm) of the modules whose
    name ends in `leaf` in `family` (`q_proj` -> q; GPT-2's fused `c_attn` -> q, k, v); empty
    where no module of the family ends so. What PEFT's `target_modules` matches by suffix."""
    roles: list[str] = []
    for unit, names in FAMILIES[family].units.items():
        for i, name in enumerate(names):
            if name == leaf or name.endswith("." + leaf):
                if unit != "qkv":
                    roles.append(unit)
                elif len(names) == 1:
                    roles += ["q", "k", "v"]
                else:
                    roles.append("qkv"[i % 3])
    return tuple(dict.fromkeys(roles))
