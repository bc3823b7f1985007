"""Tiny random configs of every family the cost model knows, shared by the cost tests."""

from __future__ import annotations

import pytest


def tiny_configs() -> dict:
    """name -> (config, model class name, head). Dropout off, eager attention, widths chosen so
    that matrix products dominate."""
    import transformers as T

    common = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    bert = dict(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=128, max_position_embeddings=64, **common)  # fmt: skip
    llama = dict(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    return {
        "bert": (T.BertConfig(**bert), "BertForSequenceClassification", "classifier"),
        "bert-mlm": (T.BertConfig(**bert), "BertForMaskedLM", "lm"),
        "distilbert": (
            T.DistilBertConfig(
                vocab_size=64,
                dim=64,
                n_layers=2,
                n_heads=4,
                hidden_dim=128,
                max_position_embeddings=64,
                dropout=0.0,
                attention_dropout=0.0,
                seq_classif_dropout=0.0,
            ),
            "DistilBertForSequenceClassification",
            "classifier",
        ),  # fmt: skip
        "albert": (
            T.AlbertConfig(
                vocab_size=64,
                embedding_size=32,
                hidden_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=128,
                max_position_embeddings=64,
                classifier_dropout_prob=0.0,
            ),
            "AlbertForSequenceClassification",
            "classifier",
        ),  # fmt: skip
        "gpt2": (
            T.GPT2Config(
                vocab_size=64,
                n_embd=64,
                n_layer=2,
                n_head=4,
                n_positions=64,
                resid_pdrop=0.0,
                embd_pdrop=0.0,
                attn_pdrop=0.0,
            ),
            "GPT2LMHeadModel",
            "lm",
        ),  # fmt: skip
        "llama-gqa": (
            T.LlamaConfig(**llama),
            "LlamaForCausalLM",
            "lm",
        ),  # fmt: skip
        "llama-tied": (  # SmolLM2's layout: the LM head is the embedding matrix
            T.LlamaConfig(**llama, tie_word_embeddings=True),
            "LlamaForCausalLM",
            "lm",
        ),  # fmt: skip
        "t5": (
            T.T5Config(
                vocab_size=64,
                d_model=64,
                d_kv=16,
                d_ff=128,
                num_layers=2,
                num_heads=4,
                dropout_rate=0.0,
            ),
            "T5ForConditionalGeneration",
            "lm",
        ),  # fmt: skip
        "flan-t5-gated": (
            T.T5Config(
                vocab_size=64,
                d_model=64,
                d_kv=16,
                d_ff=128,
                num_layers=2,
                num_decoder_layers=3,
                num_heads=4,
                dropout_rate=0.0,
                feed_forward_proj="gated-gelu",
            ),
            "T5ForConditionalGeneration",
            "lm",
        ),  # fmt: skip
    }


@pytest.fixture(scope="session")
def tiny():
    pytest.importorskip("transformers")
    from transformers import logging

    logging.set_verbosity_error()
    return tiny_configs()
