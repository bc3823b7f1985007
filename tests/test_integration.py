"""The real bundled models on the real bundled data (slower; a few steps each)."""

import json

import pytest

from edgetune.config import load_config
from edgetune.models.loader import load_model
from edgetune.train import finetune

pytestmark = pytest.mark.integration


def test_smollm2_loads_offline_and_answers():
    from edgetune.evaluate import generate

    loaded = load_model("smollm2-135m", "chat")
    answer = generate(
        loaded.model,
        loaded.tokenizer,
        {"messages": [{"role": "user", "content": "What is the capital of France?"}]},
        "chat",
        max_new_tokens=12,
    )
    assert "Paris" in answer


def test_smollm2_on_brown_lowers_held_out_perplexity(tmp_path):
    cfg = load_config(
        None,
        [
            "model.name=smollm2-135m",
            "data.name=brown",
            "data.seq_len=128",
            "data.eval_samples=3",
            "train.batch_size=4",
            "train.lr=1e-4",
            "train.max_steps=12",
            "train.eval_before=true",
            "train.warmup_ratio=0",
            f"out={tmp_path / 'run'}",
        ],
    )
    # eval_before runs on test; compare test before and after
    finetune(cfg)
    m = json.loads((tmp_path / "run/metrics.json").read_text())
    assert m["eval"]["perplexity"] < m["test_before"]["perplexity"]


def test_minilm_learns_reuters_r8(tmp_path):
    cfg = load_config(
        None,
        [
            "model.name=minilm-l6",
            "data.name=reuters-r8",
            "data.seq_len=64",
            "data.train_samples=320",
            "data.eval_samples=400",
            "train.batch_size=16",
            "train.lr=2e-4",
            "train.max_steps=20",
            "train.eval_before=true",
            f"out={tmp_path / 'run'}",
        ],
    )
    finetune(cfg)
    m = json.loads((tmp_path / "run/metrics.json").read_text())
    assert m["eval"]["samples"] == 400
    assert m["eval"]["accuracy"] > m["test_before"]["accuracy"] + 0.3
