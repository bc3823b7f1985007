"""The chunked loss over the vocabulary equals the ordinary one, loss and gradients, over a
dense and a held (quantized, tied) head; a trained head keeps the ordinary loss."""

import pytest
import tiny

import edgetune.precision
from edgetune.data.tasks import TaskData
from edgetune.evaluate import evaluate
from edgetune.methods.base import forward_loss
from edgetune.methods.chunked_loss import plain_frozen_head


@pytest.fixture(autouse=True)
def _small_chunks(monkeypatch):
    monkeypatch.setattr(edgetune.precision, "CHUNK", 32 * 20)  # 20 vocabulary rows a chunk


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("held", [False, True])
def test_chunked_loss_equals_the_ordinary_loss_and_gradients(held, tmp_path):
    if held:
        from edgetune.models.loader import load_model

        folder = tiny.folder("llama", tmp_path / "m", tie_word_embeddings=True)
        model = load_model(str(folder), "lm", weights="q8_0").model
        for p in model.parameters():
            p.requires_grad_(True)
    else:
        model = tiny.model("llama")
        model.lm_head.weight.requires_grad_(False)
    batch = tiny.batch("llama")
    batch["input_ids"] = batch["input_ids"] % tiny.VOCAB
    batch["labels"][0, :5] = -100  # a prompt the loss skips
    assert plain_frozen_head(model) is not None
    ordinary = forward_loss(model, batch)
    ordinary.backward()
    ref = _grads(model)
    model.zero_grad()
    chunked = forward_loss(model, batch, chunked=True)
    chunked.backward()
    assert chunked.item() == pytest.approx(ordinary.item(), rel=1e-6)
    got = _grads(model)
    assert got.keys() == ref.keys() and got
    for name, g in got.items():
        assert (g - ref[name]).norm() <= 1e-5 * ref[name].norm() + 1e-9, name


def test_a_trained_head_keeps_the_ordinary_loss():
    model = tiny.model("llama")
    assert plain_frozen_head(model) is None  # lm_head.weight requires grad
    assert plain_frozen_head(tiny.model("bert")) is None


def test_evaluation_with_the_chunked_loss_gives_the_same_perplexity():
    model = tiny.model("llama")
    model.lm_head.weight.requires_grad_(False)
    batch = tiny.batch("llama")
    examples = [{"input_ids": row.numpy().astype("int32")} for row in batch["input_ids"][:3]]
    data = TaskData("lm", {"test": examples}, [], None)  # type: ignore[arg-type]
    a = evaluate(model, data, "test", 0, batch_size=2)
    b = evaluate(model, data, "test", 0, batch_size=2, chunked=True)
    assert b["perplexity"] == pytest.approx(a["perplexity"], rel=1e-5)
