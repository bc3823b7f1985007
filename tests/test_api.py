"""The Python API mirrors the CLI."""

import json

import pytest

import edgetune


def test_finetune_from_python(tiny_bert, topics_jsonl, tmp_path):
    result = edgetune.finetune(
        model=str(tiny_bert),
        data=str(topics_jsonl),
        task="classify",
        seq_len=16,
        max_steps=3,
        out=tmp_path / "run",
        overrides={"train.batch_size": 8, "train.lr": 1e-3},
    )
    saved = json.loads((tmp_path / "run/metrics.json").read_text())
    assert result.metrics["eval"]["accuracy"] == saved["eval"]["accuracy"]
    assert saved["train"]["steps"] == 3


def test_unknown_shortcut_is_refused():
    with pytest.raises(edgetune.EdgetuneError, match="unknown setting 'learning_rate'"):
        edgetune.load_config(learning_rate=1.0)
