"""Every task through the loop on tiny models: lm, summarize (decoder-only and
encoder-decoder), chat; and how each masks its loss."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

from edgetune.config import load_config
from edgetune.data.chat import Cuts
from edgetune.data.tasks import IGNORE, SUMMARY_PROMPT, _prompted, prompt_ids
from edgetune.models.bundled import bundled_path
from edgetune.train import finetune

PAIRS = [
    {"text": f"please send the {w} report for {d} to the team", "target": f"{w} report"}
    for w in ("budget", "sales", "travel", "audit", "hiring", "safety")
    for d in ("monday", "friday", "march", "june", "today")
]


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-t5")
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=30522, d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=4,
                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=102)  # fmt: skip
    T5ForConditionalGeneration(cfg).save_pretrained(folder)
    AutoTokenizer.from_pretrained(bundled_path("minilm-l6")).save_pretrained(folder)
    return folder


@pytest.fixture
def pairs_jsonl(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    return path


def _run(model, data, task, out, *extra):
    cfg = load_config(None, [
        f"model.name={model}", f"data.name={data}", f"data.task={task}", "data.seq_len=32",
        "train.batch_size=8", "train.lr=3e-3", "train.max_steps=15", "train.eval_before=true",
        "train.warmup_ratio=0", f"out={out}", *extra,
    ])  # fmt: skip
    finetune(cfg)
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("task", ["summarize", "chat"])
def test_decoder_text_tasks_learn_and_report_rouge(task, tiny_llama, pairs_jsonl, tmp_path):
    # SmolLM2's template adds a 20-token system prompt to chat rows: 48 tokens fit one whole
    m = _run(tiny_llama, pairs_jsonl, task, tmp_path / "r", "data.seq_len=48")
    assert m["eval"]["perplexity"] < m["test_before"]["perplexity"]
    # every train row counted, none cut (what a cut would be is tests/data/test_chat.py's)
    assert m["data_cuts"]["train"] == {"examples": 24, "cut": 0, "tokens": 0,
                                       "answer_tokens": 0, "dropped": 0}  # fmt: skip
    assert {"rouge1", "rouge2", "rougeL"} <= set(m["eval"])


def test_encoder_decoder_summarization(tiny_t5, pairs_jsonl, tmp_path):
    m = _run(tiny_t5, pairs_jsonl, "summarize", tmp_path / "r")
    assert m["eval"]["perplexity"] < m["test_before"]["perplexity"]
    assert 0.0 <= m["eval"]["rougeL"] <= 1.0


def test_lm_on_a_text_file(tiny_llama, tmp_path):
    path = tmp_path / "text.jsonl"
    path.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in PAIRS))
    m = _run(tiny_llama, path, "lm", tmp_path / "r", "data.seq_len=16")
    assert m["eval"]["perplexity"] < m["test_before"]["perplexity"]


def test_prompted_examples_train_on_the_target_only(tiny_llama):
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    ex = _prompted(PAIRS[0], tok, 64, 16, Cuts())
    prompt = prompt_ids(PAIRS[0], "summarize", tok, 64)
    assert ex["input_ids"][: len(prompt)] == prompt
    assert ex["labels"][: len(prompt)] == [IGNORE] * len(prompt)
    target = [t for t in ex["labels"] if t != IGNORE]
    assert tok.decode(target, skip_special_tokens=True).strip() == PAIRS[0]["target"]
    assert tok.decode(prompt).endswith(SUMMARY_PROMPT)
    messages = [{"role": "user", "content": PAIRS[0]["text"]}]
    chat = prompt_ids({"messages": messages}, "chat", tok, 64)
    assert PAIRS[0]["text"] in tok.decode(chat)


def test_tokenized_splits_hold_int32_arrays(tiny_llama, pairs_jsonl):
    from edgetune.data.load import load_data
    from edgetune.data.tasks import batches, tokenize

    # Prepare
    cfg = load_config(None, [f"data.name={pairs_jsonl}", "data.task=summarize", "data.seq_len=32"])
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    # Execute
    data = tokenize(load_data(cfg.data), tok, cfg.data, "decoder")
    ex = data.splits["train"][0]
    # Assert: 4 bytes a token, the same tokens as the prompted lists, and batches as before
    expected = _prompted(dict(data.raw["train"][0]), tok, 32, 8, Cuts())
    assert ex["input_ids"].dtype == "int32" and ex["labels"].dtype == "int32"
    assert ex["input_ids"].tolist() == expected["input_ids"]
    assert ex["labels"].tolist() == expected["labels"]
    batch = next(batches(data.splits["train"], 4, tok.pad_token_id or 0))
    assert batch["input_ids"].dtype == torch.long
    assert batch["input_ids"][0, : len(ex["input_ids"])].tolist() == expected["input_ids"]
