"""Shared fixtures: tiny random models saved as local HF folders (`tiny.folder`), small data
files."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import tiny
import torch

TOPICS = {
    "sports": ["match", "goal", "team", "score", "coach"],
    "finance": ["stock", "market", "bank", "shares", "profit"],
    "weather": ["rain", "storm", "sunny", "wind", "forecast"],
    "food": ["pasta", "bread", "cheese", "recipe", "soup"],
}


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer BERT classifier of 4 classes (random weights, dropout on as in a real
    checkpoint), the MiniLM tokenizer."""
    return tiny.folder("bert", tmp_path_factory.mktemp("tiny-bert"), num_labels=4,
                       hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)  # fmt: skip


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A 2-layer Llama causal LM (random weights, tied head as SmolLM2), SmolLM2's tokenizer."""
    return tiny.folder("llama", tmp_path_factory.mktemp("tiny-llama"), pad_token_id=None,
                       max_position_embeddings=128, tie_word_embeddings=True)  # fmt: skip


def topic_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(sorted(TOPICS))
        words = rng.choices(TOPICS[label], k=6) + rng.choices(["the", "a", "today", "new"], k=3)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


@pytest.fixture
def topics_jsonl(tmp_path) -> Path:
    return _write_topics(tmp_path / "topics.jsonl")


@pytest.fixture(scope="session")
def topics_file(tmp_path_factory) -> Path:
    """The topics set of `topics_jsonl`, one file for the session (for session-wide runs)."""
    return _write_topics(tmp_path_factory.mktemp("topics") / "topics.jsonl")


def _write_topics(path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in topic_rows(240)))
    return path


CHAT_WORDS = ["red", "green", "blue", "cat", "dog", "sun", "rain", "tree", "fish", "bird"]


@pytest.fixture(scope="session")
def chat_jsonl(tmp_path_factory) -> Path:
    """A tiny chat set: "repeat a b c" -> "a b c", 60 rows."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("chat") / "chat.jsonl"
    with path.open("w") as f:
        for _ in range(60):
            words = " ".join(rng.sample(CHAT_WORDS, 3))
            f.write(json.dumps({"text": f"repeat {words}", "target": words}) + "\n")
    return path


@pytest.fixture(scope="session")
def chat_run(tiny_llama, chat_jsonl, tmp_path_factory) -> Path:
    """A finished LoRA run of the tiny Llama on the tiny chat set: its adapter and its merged
    model."""
    return tiny.lora_run(tiny_llama, chat_jsonl, tmp_path_factory.mktemp("runs") / "chat")


AROUND = 300 * 2**20  # the fixed runtime of `fixed_overhead`


@pytest.fixture
def fixed_overhead(monkeypatch) -> int:
    """Every session's process overhead fixed at `AROUND` bytes (runtime; nothing loaded), as
    a machine measures it: budgets in tests are then this plus a step's bytes, whatever the
    machine and its load. The memory guard, which measures the real process, is off."""
    from edgetune.forecast import Overhead
    from edgetune.measure.guard import MemoryGuard
    from edgetune.pipeline import Session

    monkeypatch.setattr(Session, "overhead", lambda self: Overhead(AROUND))
    monkeypatch.setattr(MemoryGuard, "for_run", lambda *a: None)
    return AROUND
