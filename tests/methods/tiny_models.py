"""Tiny random models of each family and fixed batches for the method tests.

Models are built from transformers config classes (no network), with dropout 0 so a training-mode
step is deterministic; `make_model(kind)` returns the same weights every call (seeded).
"""

from __future__ import annotations

import torch
import transformers as T

VOCAB = 96
B, SEQ = 4, 12


def _config(kind: str):
    if kind in ("bert", "bert_lm"):
        return T.BertConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=3,
            max_position_embeddings=64,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    if kind in ("llama", "llama_cls"):
        return T.LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            tie_word_embeddings=False,
            num_labels=3,
            pad_token_id=0,
        )
    if kind in ("t5", "t5_cls"):
        return T.T5Config(
            vocab_size=VOCAB,
            d_model=32,
            d_ff=64,
            d_kv=16,
            num_layers=2,
            num_heads=2,
            dropout_rate=0.0,
            num_labels=3,
            feed_forward_proj="gated-gelu" if kind == "t5" else "relu",
            tie_word_embeddings=False,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
        )
    if kind == "gpt2":
        return T.GPT2Config(
            vocab_size=VOCAB,
            n_embd=32,
            n_layer=2,
            n_head=2,
            n_positions=64,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=1,
            eos_token_id=1,
            loss_type="ForCausalLM",
        )
    if kind == "distilbert":
        return T.DistilBertConfig(
            vocab_size=VOCAB,
            dim=32,
            n_layers=2,
            n_heads=2,
            hidden_dim=64,
            dropout=0.0,
            attention_dropout=0.0,
            num_labels=3,
            max_position_embeddings=64,
        )
    if kind == "albert":
        return T.AlbertConfig(
            vocab_size=VOCAB,
            embedding_size=16,
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=2,
            intermediate_size=64,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            classifier_dropout_prob=0.0,
            num_labels=3,
            max_position_embeddings=64,
        )
    raise ValueError(kind)


CLASSES = {
    "bert": T.BertForSequenceClassification,
    "bert_lm": T.BertForMaskedLM,
    "llama": T.LlamaForCausalLM,
    "llama_cls": T.LlamaForSequenceClassification,
    "t5": T.T5ForConditionalGeneration,
    "t5_cls": T.T5ForSequenceClassification,
    "gpt2": T.GPT2LMHeadModel,
    "distilbert": T.DistilBertForSequenceClassification,
    "albert": T.AlbertForSequenceClassification,
}
CLASSIFIERS = {"bert", "llama_cls", "t5_cls", "distilbert", "albert"}


def make_model(kind: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A tiny random model; the same weights on every call."""
    torch.manual_seed(0)
    model = CLASSES[kind](_config(kind)).to(dtype)
    return model.train()


def make_batch(kind: str, seed: int = 0, rows: int = B) -> dict[str, torch.Tensor]:
    """A fixed batch: right padding on the last row, eos (1) at the end of every sequence."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (rows, SEQ), generator=g)
    mask = torch.ones_like(ids)
    ids[-1, -3:], mask[-1, -3:] = 0, 0
    ids[:-1, -1], ids[-1, -4] = 1, 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if kind in CLASSIFIERS:
        batch["labels"] = torch.randint(0, 3, (rows,), generator=g)
    else:
        batch["labels"] = ids.masked_fill(mask == 0, -100)
    return batch
