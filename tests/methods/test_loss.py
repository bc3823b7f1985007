"""The training loss of a causal LM with logits at the labelled positions only."""

import pytest
import torch
from tiny import make_batch, make_model

from edgetune.methods.base import forward_loss, scored_positions


def _prompted(kind: str) -> dict[str, torch.Tensor]:
    """A batch whose first 5 positions are a prompt (no labels), as chat and summarize make."""
    batch = make_batch(kind)
    if batch["labels"].ndim == 2:  # a classifier's labels are one per row
        batch["labels"][:, :5] = -100
    return batch


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_scored_logits_give_the_models_own_loss_and_gradients(kind):
    # Prepare
    model, batch = make_model(kind).eval(), _prompted(kind)
    # Execute: the model's own loss over all logits, then the scored-positions one
    own = model(**batch).loss
    own.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    loss = forward_loss(model, batch)
    loss.backward()
    # Assert: the same mean cross-entropy and the same gradient of every parameter
    assert scored_positions(model, batch) is not None
    torch.testing.assert_close(loss, own)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], msg=name)


def test_scored_positions_are_those_whose_next_token_is_labelled():
    model, batch = make_model("llama"), _prompted("llama")
    mask = scored_positions(model, batch)
    labels = batch["labels"]
    assert mask[:, -1].sum() == 0  # the last position predicts nothing
    assert torch.equal(mask[:, :-1], labels[:, 1:] != -100)
    assert int(mask.sum()) < mask.numel() // 2 + mask.shape[0] * 5


@pytest.mark.parametrize("kind", ["bert", "t5", "bert_lm"])
def test_other_models_keep_their_own_loss(kind):
    assert scored_positions(make_model(kind), _prompted(kind)) is None


def test_a_fully_labelled_batch_keeps_the_models_own_loss():
    # every row full length, every next token labelled: nothing to skip
    batch = make_batch("llama")
    batch["attention_mask"][:] = 1
    batch["labels"] = batch["input_ids"].clone()
    assert scored_positions(make_model("llama"), batch) is None
