"""Architecture specs by name. Each resolves to a transformers config with no network.

Shapes are the published ones (the hub's config.json of each checkpoint); `hub_id` is where the
real weights live for users with a network; `bundled` names the registry package that ships
weights here (see `edgetune.models.bundled`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from transformers import (
    AlbertConfig,
    BertConfig,
    DistilBertConfig,
    Gemma3TextConfig,
    GPT2Config,
    LlamaConfig,
    LongformerConfig,
    MistralConfig,
    Phi3Config,
    PretrainedConfig,
    Qwen2Config,
    Qwen3Config,
    T5Config,
)

from edgetune.errors import EdgetuneError
from edgetune.families import DECODER, ENCODER, ENCODER_DECODER


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str  # encoder | decoder | encoder-decoder
    make_config: Callable[[], PretrainedConfig]
    hub_id: str | None
    bundled: str | None = None  # key into edgetune.models.bundled.BUNDLED
    tokenizer_from: str = "minilm-l6"  # bundled tokenizer used for --random-init
    note: str = ""

    def config(self) -> PretrainedConfig:
        return self.make_config()


def _t5(d_model: int, d_ff: int, layers: int, heads: int, gated: bool) -> Callable:
    def make() -> T5Config:
        # transformers 5's config __init__ types omit the **kwargs its __post_init__ takes
        # (tie_word_embeddings, decoder_start_token_id here; rope_theta for Llama)
        return T5Config(  # type: ignore[call-arg]
            d_model=d_model,
            d_ff=d_ff,
            d_kv=64,
            num_layers=layers,
            num_decoder_layers=layers,
            num_heads=heads,
            vocab_size=32128,
            feed_forward_proj="gated-gelu" if gated else "relu",
            tie_word_embeddings=not gated,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
        )

    return make


def _bert(hidden: int, layers: int, heads: int, inter: int, **kw) -> Callable:
    return lambda: BertConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=inter,
        vocab_size=30522,
        **kw,
    )


SPECS: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        ModelSpec(
            "minilm-l6",
            ENCODER,
            _bert(384, 6, 12, 1536),
            "sentence-transformers/all-MiniLM-L6-v2",
            bundled="minilm-l6",
        ),
        ModelSpec(
            "smollm2-135m",
            DECODER,
            lambda: LlamaConfig(  # type: ignore[call-arg]
                hidden_size=576,
                intermediate_size=1536,
                num_hidden_layers=30,
                num_attention_heads=9,
                num_key_value_heads=3,
                vocab_size=49152,
                max_position_embeddings=8192,
                rope_theta=100000.0,
                rms_norm_eps=1e-5,
                tie_word_embeddings=True,
                bos_token_id=1,
                eos_token_id=2,
            ),
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            bundled="smollm2-135m",
            tokenizer_from="smollm2-135m",
        ),
        ModelSpec(
            "distilbert",
            ENCODER,
            lambda: DistilBertConfig(),
            "distilbert/distilbert-base-uncased",
        ),
        ModelSpec(
            "tinybert", ENCODER, _bert(312, 4, 12, 1200), "huawei-noah/TinyBERT_General_4L_312D"
        ),
        ModelSpec(
            "albert-base",
            ENCODER,
            lambda: AlbertConfig(
                embedding_size=128,
                hidden_size=768,
                num_attention_heads=12,
                intermediate_size=3072,
                num_hidden_layers=12,
                vocab_size=30000,
            ),
            "albert/albert-base-v2",
        ),
        ModelSpec("bert-base", ENCODER, _bert(768, 12, 12, 3072), "google-bert/bert-base-uncased"),
        ModelSpec(
            "longformer-base",
            ENCODER,
            lambda: LongformerConfig(
                attention_window=512,
                max_position_embeddings=4098,
                vocab_size=50265,
                pad_token_id=1,
                bos_token_id=0,
                eos_token_id=2,
                type_vocab_size=1,
            ),
            "allenai/longformer-base-4096",
            tokenizer_from="smollm2-135m",
        ),
        ModelSpec("t5-small", ENCODER_DECODER, _t5(512, 2048, 6, 8, False), "google-t5/t5-small"),
        ModelSpec(
            "flan-t5-small", ENCODER_DECODER, _t5(512, 1024, 8, 6, True), "google/flan-t5-small"
        ),
        ModelSpec(
            "flan-t5-base", ENCODER_DECODER, _t5(768, 2048, 12, 12, True), "google/flan-t5-base"
        ),
        ModelSpec(
            "flan-t5-large", ENCODER_DECODER, _t5(1024, 2816, 24, 16, True), "google/flan-t5-large"
        ),
        ModelSpec(
            "flan-t5-xl", ENCODER_DECODER, _t5(2048, 5120, 24, 32, True), "google/flan-t5-xl"
        ),
        ModelSpec(
            "gpt2",
            DECODER,
            lambda: GPT2Config(),
            "openai-community/gpt2",
            tokenizer_from="smollm2-135m",
        ),
        ModelSpec(
            "gpt3-small",
            DECODER,
            lambda: GPT2Config(n_positions=2048, n_embd=768, n_layer=12, n_head=12),
            None,
            tokenizer_from="smollm2-135m",
            note="GPT-3 Small shape (Brown et al. 2020, table 2.1); weights were never released",
        ),
        ModelSpec(
            "llama-1b",
            DECODER,
            lambda: LlamaConfig(  # type: ignore[call-arg]
                hidden_size=2048,
                intermediate_size=8192,
                num_hidden_layers=16,
                num_attention_heads=32,
                num_key_value_heads=8,
                vocab_size=128256,
                max_position_embeddings=131072,
                rope_theta=500000.0,
                rms_norm_eps=1e-5,
                tie_word_embeddings=True,
            ),
            "meta-llama/Llama-3.2-1B",
            tokenizer_from="smollm2-135m",
            note="Llama 3.2 1B shape",
        ),
        # today's small decoders (shapes from each checkpoint's config.json)
        ModelSpec(
            "qwen2.5-0.5b",
            DECODER,
            lambda: Qwen2Config(  # type: ignore[call-arg]
                hidden_size=896,
                intermediate_size=4864,
                num_hidden_layers=24,
                num_attention_heads=14,
                num_key_value_heads=2,
                vocab_size=151936,
                max_position_embeddings=32768,
                rope_theta=1000000.0,
                rms_norm_eps=1e-6,
                tie_word_embeddings=True,
            ),
            "Qwen/Qwen2.5-0.5B-Instruct",
            tokenizer_from="smollm2-135m",
        ),
        ModelSpec(
            "qwen3-0.6b",
            DECODER,
            lambda: Qwen3Config(  # type: ignore[call-arg]
                hidden_size=1024,
                intermediate_size=3072,
                num_hidden_layers=28,
                num_attention_heads=16,
                num_key_value_heads=8,
                head_dim=128,
                vocab_size=151936,
                max_position_embeddings=40960,
                rope_theta=1000000.0,
                rms_norm_eps=1e-6,
                tie_word_embeddings=True,
            ),
            "Qwen/Qwen3-0.6B",
            tokenizer_from="smollm2-135m",
        ),
        ModelSpec(
            "gemma3-270m",
            DECODER,
            lambda: Gemma3TextConfig(  # type: ignore[call-arg]
                hidden_size=640,
                intermediate_size=2048,
                num_hidden_layers=18,
                num_attention_heads=4,
                num_key_value_heads=1,
                head_dim=256,
                query_pre_attn_scalar=256,
                vocab_size=262144,
                max_position_embeddings=32768,
                sliding_window=512,
                rope_theta=1000000.0,
                rope_local_base_freq=10000.0,
            ),
            "google/gemma-3-270m-it",
            tokenizer_from="smollm2-135m",
        ),
        ModelSpec(
            "phi3-mini",
            DECODER,
            lambda: Phi3Config(
                hidden_size=3072,
                intermediate_size=8192,
                num_hidden_layers=32,
                num_attention_heads=32,
                num_key_value_heads=32,
                vocab_size=32064,
                max_position_embeddings=4096,
                sliding_window=2047,
                rms_norm_eps=1e-5,
            ),
            "microsoft/Phi-3-mini-4k-instruct",
            tokenizer_from="smollm2-135m",
        ),
        ModelSpec(
            "mistral-7b",
            DECODER,
            lambda: MistralConfig(
                hidden_size=4096,
                intermediate_size=14336,
                num_hidden_layers=32,
                num_attention_heads=32,
                num_key_value_heads=8,
                vocab_size=32000,
                max_position_embeddings=32768,
                sliding_window=4096,
                rms_norm_eps=1e-5,
            ),
            "mistralai/Mistral-7B-v0.1",
            tokenizer_from="smollm2-135m",
        ),
    ]
}


def get_spec(name: str) -> ModelSpec:
    if name not in SPECS:
        raise EdgetuneError(f"unknown model {name!r}; `edgetune models` lists the known ones")
    return SPECS[name]
