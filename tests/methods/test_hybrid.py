"""`hybrid`: the bottom moves only by its zeroth-order update, the top's gradient is autograd's
at the perturbed bottom, a frozen bottom is sparse backprop over the top, LoRA below."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny import make_batch, make_model

from edgetune.errors import EdgetuneError
from edgetune.methods import build_method
from edgetune.methods.base import MethodSettings, forward_loss
from edgetune.seeds import mix_seed

SEED = 7


def settings(lr=1e-2, **options) -> MethodSettings:
    return MethodSettings(lr=lr, total_steps=10, seed=SEED, options=options)


def hybrid(kind: str, dtype=torch.float32, **options):
    return build_method("hybrid", make_model(kind, dtype), settings(**options))


def perturbed_copy(m, seed: int, scale: float):
    """A copy of the model with the bottom's tensors moved by scale z(seed), in place."""
    ref = copy.deepcopy(m.model)
    params = dict(ref.named_parameters())
    with torch.no_grad():
        for i, t in enumerate(m.directions.tensors):
            params[t.key].add_(m.directions.z(seed, i), alpha=scale)
    return ref


def assert_export_keeps_outputs(m, batch) -> None:
    """The exported (merged) model gives the trained model's logits."""
    m.model.eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        want = m.model(**inputs).logits
        got = m.export_model()(**inputs).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_frozen_bottom_is_sparse_backprop_of_the_top(kind):
    # Prepare
    batches = [make_batch(kind, seed=s) for s in range(3)]
    h = hybrid(kind, zo_trainable="frozen", backprop_blocks=1)
    s = build_method("sparse", make_model(kind), settings(scheme="last-1"))
    # Execute
    got = [h.step([b]).loss for b in batches]
    want = [s.step([b]).loss for b in batches]
    # Assert
    assert got == want
    sh, ss = h.model.state_dict(), s.model.state_dict()
    assert sh.keys() == ss.keys()
    for k in sh:
        assert torch.equal(sh[k], ss[k]), k


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_bottom_changes_only_by_its_zeroth_order_update(kind):
    # Prepare
    m, batch = hybrid(kind, torch.float64, zo_lr=1e-2), make_batch(kind)
    seed, eps = mix_seed(SEED, 0), m.options.eps
    before = {t.key: t.view().clone() for t in m.directions.tensors}
    plus_model, minus_model = perturbed_copy(m, seed, eps), perturbed_copy(m, seed, -eps)
    # Execute
    result = m.step([batch])
    # Assert: the losses at theta +- eps z, the projected gradient, the SGD update
    with torch.no_grad():
        plus, minus = (float(forward_loss(r, batch)) for r in (plus_model, minus_model))
    assert result.metrics["loss_plus"] == pytest.approx(plus, rel=1e-12)
    assert result.metrics["loss_minus"] == pytest.approx(minus, rel=1e-12)
    g = result.metrics["projected_grad"]
    assert g == pytest.approx((plus - minus) / (2 * eps), rel=1e-6)
    lr = result.metrics["zo_lr"]
    assert lr > 0
    for i, t in enumerate(m.directions.tensors):
        expected = before[t.key] - lr * (g * m.directions.z(seed, i))
        torch.testing.assert_close(t.view(), expected, rtol=0, atol=1e-15)
    embeddings = [t.key for t in m.directions.tensors if "embed" in t.key]
    assert embeddings  # the input embeddings are part of the bottom
    assert not any(t.param.requires_grad for t in m.directions.tensors)


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_top_gradient_is_autograds_at_the_perturbed_bottom(kind):
    # Prepare
    m, batch = hybrid(kind, torch.float64), make_batch(kind)
    reference = perturbed_copy(m, mix_seed(SEED, 0), m.options.eps)
    grads: dict[str, torch.Tensor] = {}
    names = {id(p): n for n, p in m.model.named_parameters()}
    for p in m.top.params:
        p.register_post_accumulate_grad_hook(
            lambda p: grads.__setitem__(names[id(p)], p.grad.clone())
        )
    # Execute
    m.step([batch])
    forward_loss(reference, batch).backward()
    # Assert
    want = {n: p.grad for n, p in reference.named_parameters() if p.requires_grad}
    assert grads.keys() == want.keys() and grads
    assert not any(".0." in n for n in grads)  # block 0 trains by zeroth-order
    for n in want:
        torch.testing.assert_close(grads[n], want[n], rtol=1e-10, atol=1e-12)


def test_lora_below_trains_the_bottom_s_adapters_and_merges_them():
    # Prepare
    m, batch = hybrid("bert", zo_trainable="lora", rank=2, zo_lr=1e-1), make_batch("bert")
    base = {k: v.clone() for k, v in m.model.state_dict().items() if "lora_" not in k}
    # Execute
    for _ in range(3):
        m.step([batch])
    # Assert: adapters only on block 0, they moved; block 0's base weights did not
    keys = [t.key for t in m.directions.tensors]
    assert keys and all(".lora_" in k and ".layer.0." in k for k in keys)
    assert any(float(t.view().abs().sum()) > 0 for t in m.directions.tensors if "lora_B" in t.key)
    after = m.model.state_dict()
    for k, v in base.items():
        if ".layer.0." in k:
            assert torch.equal(v, after[k]), k
    assert_export_keeps_outputs(m, batch)


def test_a_sparse_scheme_over_the_top_and_its_bounds():
    m = hybrid("bert", backprop_blocks=1, scheme="qkv-ffn1-1@0.5")
    assert m.top.split  # the top's split weights, as sparse's
    with pytest.raises(EdgetuneError, match="below the boundary"):
        hybrid("bert", backprop_blocks=1, scheme="last-2")
    with pytest.raises(EdgetuneError, match="has 2 blocks"):
        hybrid("bert", backprop_blocks=3)
    with pytest.raises(EdgetuneError, match="zo_trainable"):
        hybrid("bert", zo_trainable="some")
    with pytest.raises(EdgetuneError, match="zo_lr"):
        hybrid("bert", zo_lr=0)
    with pytest.raises(EdgetuneError, match="needs blocks below the boundary"):
        hybrid("bert", backprop_blocks=2, zo_trainable="lora")


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_a_lora_top_over_a_frozen_bottom_is_lora_on_the_last_blocks(kind):
    """`top_trainable: lora`: the top's adapters train as lora's `layers: last-K` trains them
    (same adapters, same AdamW, bit for bit when the bottom is frozen)."""
    # Prepare
    batches = [make_batch(kind, seed=s) for s in range(3)]
    torch.manual_seed(0)
    h = hybrid(kind, zo_trainable="frozen", top_trainable="lora", rank=4)
    torch.manual_seed(0)
    lora = {"r": 4, "alpha": 8.0, "layers": "last-1"}
    s = build_method("lora", make_model(kind), settings(**lora))
    # Execute
    got = [h.step([b]).loss for b in batches]
    want = [s.step([b]).loss for b in batches]
    # Assert
    assert got == want
    sh, ss = h.trainable_state(), s.trainable_state()
    top = (".layer.1.", ".layers.1.", "classifier", "pooler")
    assert sh.keys() == ss.keys() and all(any(t in k for t in top) for k in sh)
    for k in sh:
        assert torch.equal(sh[k], ss[k]), k


def test_a_lora_top_over_zeroth_order_adapters_below():
    """Adapters in every block: the top's by AdamW on autograd's gradient, the bottom's by the
    seed's SPSA update; the bottom runs without dropout; the export merges both."""
    # Prepare
    m, batch = hybrid("bert", zo_trainable="lora", top_trainable="lora", rank=2, zo_lr=1e-1), \
        make_batch("bert")  # fmt: skip
    keys = [t.key for t in m.directions.tensors]
    top = [n for n, p in m.model.named_parameters() if p.requires_grad]
    # Execute
    for _ in range(3):
        m.step([batch])
    # Assert
    assert keys and all(".lora_" in k and ".layer.0." in k for k in keys)
    assert top and all(".layer.1." in n or "classifier" in n or "pooler" in n for n in top)
    assert all(not x.training for x in m.top.eval_modules) and m.top.eval_modules
    moved = [t for t in m.directions.tensors if "lora_B" in t.key]
    assert any(float(t.view().abs().sum()) > 0 for t in moved)
    assert not set(keys) & set(m.top.trainable_state())
    assert_export_keeps_outputs(m, batch)
    with pytest.raises(EdgetuneError, match="drop them"):
        hybrid("bert", top_trainable="lora", scheme="last-1")
    with pytest.raises(EdgetuneError, match="needs a top block"):
        hybrid("bert", top_trainable="lora", backprop_blocks=0)
    with pytest.raises(EdgetuneError, match="top_trainable"):
        hybrid("bert", top_trainable="sparse")
