"""Fixtures of the federated tests: a run config over the tiny BERT and the topics file."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def fl_config(tiny_bert: Path, topics_jsonl: Path, tmp_path: Path) -> dict:
    """A flat Flower run config: 2 clients, 1 round, 2 local steps of the tiny classifier."""
    return {
        "model.name": str(tiny_bert),
        "data.name": str(topics_jsonl),
        "data.task": "classify",
        "data.seq_len": 16,
        "data.eval_samples": 24,
        "train.method": "backprop",
        "train.batch_size": 8,
        "train.lr": 1e-3,
        "train.threads": 1,
        "out": str(tmp_path / "run"),
        "federated.clients": 2,
        "federated.rounds": 1,
        "federated.local_steps": 2,
        "federated.min_clients": 1,
        "federated.timeout": 120,
    }
