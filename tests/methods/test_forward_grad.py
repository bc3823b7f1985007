"""`forward_grad`: the directional derivative against autograd, the update, seeds, replay."""

from __future__ import annotations

import pytest
import torch
from tiny import make_batch, make_model

from edgetune.errors import EdgetuneError
from edgetune.methods import build_method
from edgetune.methods.base import MethodSettings, forward_loss
from edgetune.methods.forward_grad import ForwardGrad
from edgetune.seeds import mix_seed


def forward_grad(model, lr=1e-2, seed=7, **options) -> ForwardGrad:
    settings = MethodSettings(lr=lr, total_steps=10, seed=seed, options=options)
    return build_method("forward_grad", model, settings)


def autograd_directional(m: ForwardGrad, batch, seed: int) -> float:
    """<grad L, z(seed)> with the gradient from a backward pass over the trainable tensors."""
    for t in m.tensors:
        t.param.requires_grad_(True)
        t.param.grad = None
    m.model.eval()
    forward_loss(m.model, batch).backward()
    out = sum(float((t.param.grad * m.z(seed, i)).sum()) for i, t in enumerate(m.tensors))
    for t in m.tensors:
        t.param.requires_grad_(False)
        t.param.grad = None
    return out


@pytest.mark.parametrize(
    ("kind", "trainable"),
    [("bert", "all"), ("bert", "lora"), ("llama", "all"), ("llama", "lora"), ("gpt2", "all")],
)
def test_directional_derivative_equals_autograd_gradient_along_the_tangent(kind, trainable):
    """Prepare: a float64 tiny model (gpt2's head is tied to its embedding table: one tensor,
    one tangent). Execute: the jvp's (loss, d). Assert: the loss is the model's, d equals
    <autograd gradient, v> within 1e-5 relative."""
    model, batch = make_model(kind, torch.float64), make_batch(kind)
    m = forward_grad(model, trainable=trainable, rank=4)
    if trainable == "lora":  # PEFT starts B at 0: move it so that A's tangent matters too
        with torch.no_grad():
            for name, p in m.model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
    loss, d = m.directional_derivative(1234, [batch])
    with torch.no_grad():
        assert loss == pytest.approx(float(forward_loss(m.model.eval(), batch)), rel=1e-12)
    expected = autograd_directional(m, batch, 1234)
    assert abs(expected) > 1e-6
    assert d == pytest.approx(expected, rel=1e-5)


def test_a_step_moves_theta_by_lr_d_v():
    """theta_1 = theta_0 - lr d v, v the step seed's tangent (no weight decay, constant lr)."""
    model, batch = make_model("bert", torch.float64), make_batch("bert")
    settings = MethodSettings(lr=0.05, total_steps=10, seed=5, schedule="constant",
                              options={"trainable": "all"})  # fmt: skip
    m = build_method("forward_grad", model, settings)
    before = [t.param.detach().clone() for t in m.tensors]
    seed = mix_seed(5, 0)  # the first step's
    _, d = m.directional_derivative(seed, [batch])
    result = m.step([batch])
    assert result.metrics["projected_grad"] == d
    for i, t in enumerate(m.tensors):
        torch.testing.assert_close(t.param.detach(), before[i] - 0.05 * d * m.z(seed, i))


def test_history_replays_the_steps_bit_for_bit():
    """What a federated client sends: (seed, d / n, lr) entries; another copy replaying them
    in order reaches the same bits (queries 2: two entries a step)."""
    batch = make_batch("llama")
    a = forward_grad(make_model("llama"), lr=5e-2, trainable="lora", rank=4, queries=2)
    b = forward_grad(make_model("llama"), lr=5e-2, trainable="lora", rank=4, queries=2)
    start = {k: v.clone() for k, v in a.trainable_state().items()}
    probe = forward_grad(make_model("llama"), trainable="lora", rank=4, queries=2)
    probe.load_trainable_state(start)
    result = a.step([batch])
    entries = a.clear_history()
    assert len(entries) == 2 and len({s for s, _, _ in entries}) == 2 and a.history == []
    ds = [probe.directional_derivative(s, [batch])[1] for s, _, _ in entries]
    assert [g for _, g, _ in entries] == [d / 2 for d in ds]  # each at the start theta
    assert result.metrics["projected_grad"] == sum(ds) / 2
    for _ in range(2):
        a.step([batch])
    entries += a.clear_history()
    b.load_trainable_state(start)
    for seed, g, lr in entries:
        b.replay(seed, g, lr)
    for k, v in a.trainable_state().items():
        assert torch.equal(v, b.trainable_state()[k]), k


def test_a_seed_fixes_the_tangents_and_another_changes_them():
    batch = make_batch("bert")
    runs = [forward_grad(make_model("bert"), seed=s) for s in (3, 3, 4)]
    ds = [m.step([batch]).metrics["projected_grad"] for m in runs]
    assert ds[0] == ds[1] != ds[2]


def test_lora_trains_the_adapters_and_head_only_and_learns():
    model, batch = make_model("bert"), make_batch("bert")
    m = forward_grad(model, lr=5e-2, trainable="lora", rank=4)
    keys = set(m.trainable_state())
    assert keys and all("lora_" in k or "modules_to_save" in k for k in keys)
    with torch.no_grad():
        start = float(forward_loss(m.model.eval(), batch))
    for _ in range(10):
        m.step([batch])
    with torch.no_grad():
        assert float(forward_loss(m.model.eval(), batch)) < start
    assert not any("lora_" in k for k in m.export_model().state_dict())


def test_bad_options_are_reported():
    with pytest.raises(EdgetuneError, match="trainable"):
        forward_grad(make_model("bert"), trainable="last-1")
    with pytest.raises(EdgetuneError, match="queries"):
        forward_grad(make_model("bert"), queries=0)
    with pytest.raises(EdgetuneError, match="rank"):
        forward_grad(make_model("bert"), rank=0)
    with pytest.raises(EdgetuneError, match="forward_grad option"):
        forward_grad(make_model("bert"), eps=1e-3)
    with pytest.raises(EdgetuneError, match="chunked_loss"):
        settings = MethodSettings(lr=1e-2, total_steps=1, chunked_loss=True)
        build_method("forward_grad", make_model("llama"), settings)
