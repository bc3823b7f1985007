"""Tiny random configs of every family the cost model knows, shared by the cost tests."""

from __future__ import annotations

import pytest
import tiny as factory


def tiny_configs() -> dict:
    """name -> (config, model class name, head): the factory's families at the cost sizes
    (`factory.COST`), eager attention, dropout off."""
    t5 = dict(factory.COST["t5"], num_labels=2, tie_word_embeddings=True)
    return {
        "bert": (factory.config("bert", **factory.COST["bert"], num_labels=2),
                 "BertForSequenceClassification", "classifier"),
        "bert-mlm": (factory.config("bert_lm", **factory.COST["bert"]), "BertForMaskedLM", "lm"),
        "distilbert": (factory.config("distilbert", **factory.COST["distilbert"], num_labels=2),
                       "DistilBertForSequenceClassification", "classifier"),
        "albert": (factory.config("albert", **factory.COST["albert"], num_labels=2),
                   "AlbertForSequenceClassification", "classifier"),
        "gpt2": (factory.config("gpt2", **factory.COST["gpt2"], bos_token_id=50256,
                             eos_token_id=50256, loss_type=None), "GPT2LMHeadModel", "lm"),
        "llama-gqa": (factory.config("llama", **factory.COST["llama"], pad_token_id=None,
                                  num_labels=2), "LlamaForCausalLM", "lm"),
        # SmolLM2's layout: the LM head is the embedding matrix
        "llama-tied": (factory.config("llama", **factory.COST["llama"], pad_token_id=None,
                                   num_labels=2, tie_word_embeddings=True),
                       "LlamaForCausalLM", "lm"),
        **{kind: (factory.config(kind, **factory.COST[kind], num_labels=2, **extra), cls, "lm")
           for kind, cls, extra in (
               ("qwen2", "Qwen2ForCausalLM", {}), ("qwen3", "Qwen3ForCausalLM", {}),
               ("gemma3", "Gemma3ForCausalLM", {}), ("mistral", "MistralForCausalLM", {}),
               # a RoPE over half of each head (Phi-4-mini rotates 3/4)
               ("phi3", "Phi3ForCausalLM", {"partial_rotary_factor": 0.5}))},
        # the logits soft-capped (Gemma 3's attention ignores `attn_logit_softcapping`)
        "gemma3-softcap": (factory.config("gemma3", **factory.COST["gemma3"],
                                          attn_logit_softcapping=50.0,
                                          final_logit_softcapping=30.0),
                           "Gemma3ForCausalLM", "lm"),
        "t5": (factory.config("t5", **t5), "T5ForConditionalGeneration", "lm"),
        "flan-t5-gated": (factory.config("t5", **{**t5, "feed_forward_proj": "gated-gelu"},
                                      num_decoder_layers=3),
                          "T5ForConditionalGeneration", "lm"),
    }  # fmt: skip


@pytest.fixture(scope="session")
def tiny():
    pytest.importorskip("transformers")
    from transformers import logging

    logging.set_verbosity_error()
    return tiny_configs()
