"""The one factory of tiny random models for the tests: a config per family, the model, a
fixed batch, a saved model folder with a bundled tokenizer, and finished runs (LoRA on chat, a
classifier).

Models are built from transformers config classes (no network) with dropout 0, so a
training-mode step is deterministic; `model(kind)` returns the same weights every call
(seeded). `config(kind, **changes)` changes sizes where a test needs them (the cost tests use
wider models, where matrix products dominate: `COST`).
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers as T

VOCAB = 96
B, SEQ = 4, 12

# kind -> (config class, keyword arguments, model class)
_KINDS = {
    "bert": (T.BertConfig, dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
             num_attention_heads=2, intermediate_size=64, num_labels=3,
             max_position_embeddings=64, hidden_dropout_prob=0.0,
             attention_probs_dropout_prob=0.0), T.BertForSequenceClassification),
    "bert_lm": (T.BertConfig, {}, T.BertForMaskedLM),
    "llama": (T.LlamaConfig, dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=64, tie_word_embeddings=False, num_labels=3,
              pad_token_id=0), T.LlamaForCausalLM),
    "llama_cls": (T.LlamaConfig, {}, T.LlamaForSequenceClassification),
    # Llama's kin: head_dim apart from hidden / heads (Qwen3, Gemma 3), GQA, sliding-window
    # layers (Qwen2's top layer, every Mistral layer, Gemma 3's first), untied heads but
    # Gemma's
    "qwen2": (T.Qwen2Config, dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=64, use_sliding_window=True, sliding_window=8,
              max_window_layers=1, pad_token_id=0), T.Qwen2ForCausalLM),
    "qwen3": (T.Qwen3Config, dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
              max_position_embeddings=64, pad_token_id=0), T.Qwen3ForCausalLM),
    "gemma3": (T.Gemma3TextConfig, dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
               query_pre_attn_scalar=16, max_position_embeddings=64, sliding_window=8,
               layer_types=["sliding_attention", "full_attention"]), T.Gemma3ForCausalLM),
    "mistral": (T.MistralConfig, dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=64, sliding_window=8, pad_token_id=0),
                T.MistralForCausalLM),
    "phi3": (T.Phi3Config, dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=1),
             T.Phi3ForCausalLM),
    "t5": (T.T5Config, dict(vocab_size=VOCAB, d_model=32, d_ff=64, d_kv=16, num_layers=2,
           num_heads=2, dropout_rate=0.0, num_labels=3, feed_forward_proj="gated-gelu",
           tie_word_embeddings=False, decoder_start_token_id=0, pad_token_id=0,
           eos_token_id=1), T.T5ForConditionalGeneration),
    "t5_cls": (T.T5Config, dict(feed_forward_proj="relu"), T.T5ForSequenceClassification),
    "gpt2": (T.GPT2Config, dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2,
             n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1,
             eos_token_id=1, loss_type="ForCausalLM"), T.GPT2LMHeadModel),
    "distilbert": (T.DistilBertConfig, dict(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=2,
                   hidden_dim=64, dropout=0.0, attention_dropout=0.0, num_labels=3,
                   max_position_embeddings=64), T.DistilBertForSequenceClassification),
    "albert": (T.AlbertConfig, dict(vocab_size=VOCAB, embedding_size=16, hidden_size=32,
               num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
               hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
               classifier_dropout_prob=0.0, num_labels=3, max_position_embeddings=64),
               T.AlbertForSequenceClassification),
}  # fmt: skip
_BASE = {"bert_lm": "bert", "llama_cls": "llama", "t5_cls": "t5"}  # kinds sharing a config
CLASSIFIERS = {"bert", "llama_cls", "t5_cls", "distilbert", "albert"}
CLASSES = {kind: cls for kind, (_c, _kw, cls) in _KINDS.items()}

# the cost tests' sizes: 64 wide, 2 blocks, a vocabulary of 64
COST = {
    "bert": dict(vocab_size=64, hidden_size=64, intermediate_size=128, num_attention_heads=4),
    "llama": dict(vocab_size=64, hidden_size=64, intermediate_size=128, num_attention_heads=4),
    **{k: dict(vocab_size=64, hidden_size=64, intermediate_size=128)
       for k in ("qwen2", "qwen3", "gemma3", "mistral", "phi3")},
    "gpt2": dict(vocab_size=64, n_embd=64, n_head=4),
    "distilbert": dict(vocab_size=64, dim=64, n_heads=4, hidden_dim=128, seq_classif_dropout=0.0),
    "albert": dict(vocab_size=64, embedding_size=32, hidden_size=64, num_hidden_layers=2,
                   num_attention_heads=4, intermediate_size=128),
    "t5": dict(vocab_size=64, d_model=64, d_ff=128, num_heads=4, feed_forward_proj="relu"),
}  # fmt: skip


def config(kind: str, **changes) -> T.PretrainedConfig:
    """The tiny config of `kind` (a family or one of its heads), with `changes`."""
    base = _BASE.get(kind, kind)
    cls, kwargs, _ = _KINDS[base]
    return cls(**{**kwargs, **_KINDS[kind][1], **changes})


def model(kind: str, dtype: torch.dtype = torch.float32, **changes) -> torch.nn.Module:
    """A tiny random model of `kind`; the same weights on every call."""
    torch.manual_seed(0)
    return CLASSES[kind](config(kind, **changes)).to(dtype).train()


def batch(kind: str, seed: int = 0, rows: int = B) -> dict[str, torch.Tensor]:
    """A fixed batch: right padding on the last row, eos (1) at the end of every sequence."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (rows, SEQ), generator=g)
    mask = torch.ones_like(ids)
    ids[-1, -3:], mask[-1, -3:] = 0, 0
    ids[:-1, -1], ids[-1, -4] = 1, 1
    out = {"input_ids": ids, "attention_mask": mask}
    if kind in CLASSIFIERS:
        out["labels"] = torch.randint(0, 3, (rows,), generator=g)
    else:
        out["labels"] = ids.masked_fill(mask == 0, -100)
    return out


def folder(kind: str, path: Path, **changes) -> Path:
    """A tiny model of `kind` saved as a local HF folder with a bundled tokenizer (SmolLM2's for
    the decoders, MiniLM's for the others), its vocabulary the tokenizer's."""
    from transformers import AutoTokenizer

    from edgetune.families import FAMILIES, MODEL_TYPES
    from edgetune.models.bundled import bundled_path

    decoder = FAMILIES[MODEL_TYPES[config(kind).model_type]].decoder
    source = "smollm2-135m" if decoder else "minilm-l6"
    tokenizer = AutoTokenizer.from_pretrained(bundled_path(source))
    torch.manual_seed(0)
    cfg = config(kind, vocab_size=len(tokenizer), **changes)
    CLASSES[kind](cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def lora_run(model: Path, data: Path, out: Path, *extra: str) -> Path:
    """A finished run of three LoRA steps of a tiny model on a chat data file (the adapters'
    B is no longer 0), with `section.key=value` settings `extra`."""
    from edgetune.config import load_config
    from edgetune.train import finetune

    cfg = load_config(None, [f"model.name={model}", f"data.name={data}", "data.task=chat",
                             "data.seq_len=48", "train.method=lora", "train.batch_size=8",
                             "train.lr=1e-2", "train.max_steps=3", "train.warmup_ratio=0",
                             f"out={out}", *extra])  # fmt: skip
    finetune(cfg)
    return out


def classify_run(model: Path, data: Path, out: Path, *extra: str) -> Path:
    """A finished run of three full backprop steps of a tiny classifier on a labelled data
    file, with `section.key=value` settings `extra`."""
    from edgetune.config import load_config
    from edgetune.train import finetune

    cfg = load_config(None, [f"model.name={model}", f"data.name={data}", "data.task=classify",
                             "data.seq_len=16", "train.batch_size=8", "train.lr=1e-2",
                             "train.max_steps=3", "train.warmup_ratio=0", f"out={out}",
                             *extra])  # fmt: skip
    finetune(cfg)
    return out


# the names the method tests use
make_model, make_batch = model, batch


CHAT = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def bpe_tokenizer(vocab: int = 320):
    """A small byte-level BPE tokenizer (GPT-2's kind: what llama.cpp's `gpt2` vocabulary
    reads), trained in a moment on a fixed text, with ChatML special tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=special,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    text = "the model runs on the device where it was fine-tuned, within its memory. " * 20
    tok.train_from_iterator([text, "0123456789 numbers and words"], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token=special[0],
        bos_token=special[1],
        eos_token=special[2],
        pad_token=special[2],
        chat_template=CHAT,
    )
