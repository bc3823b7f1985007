"""`pepita` and `mempepita`: the rule by hand on a 2-layer MLP, lockstep equals two-pass."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny import make_batch, make_model
from torch import nn

from edgetune.errors import EdgetuneError
from edgetune.methods import build_method
from edgetune.methods.base import MethodSettings
from edgetune.methods.pepita_core import (
    PepitaCore,
    classification_loss,
    feedback_matrix,
    output_error,
)


class MLP(nn.Module):
    """x -> Linear -> ReLU -> Linear -> logits; `inp` is where the modulation is added."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.fc1, self.fc2 = nn.Identity(), nn.Linear(8, 16), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(self.inp(x))))


def mlp_core(mlp: MLP, feedback: torch.Tensor, lockstep: bool) -> PepitaCore:
    for p in mlp.parameters():
        p.requires_grad_(False)
    return PepitaCore(
        run=lambda b: mlp(b["x"]),
        hidden={"fc1": mlp.fc1},
        output={"fc2": mlp.fc2},
        inputs=[(mlp.inp, True)],
        feedback=feedback,
        loss=lambda logits, b: classification_loss(logits, b["labels"]),
        error=lambda logits, b: output_error(logits, b["labels"], causal=False),
        lockstep=lockstep,
    )


@pytest.mark.parametrize("lockstep", [False, True])
def test_update_equals_the_hand_computed_rule_on_a_2_layer_mlp(lockstep):
    torch.manual_seed(0)
    mlp = MLP()
    x, y = torch.randn(5, 8), torch.tensor([0, 2, 1, 1, 0])
    feedback = feedback_matrix(8, 3, 0.05, seed=1)  # (d_in, C)
    W1, b1, W2, b2 = (
        t.detach().clone() for t in (mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias)
    )

    loss = mlp_core(mlp, feedback, lockstep).accumulate({"x": x, "labels": y})

    # by hand (Dellaferrera & Kreiman 2022, h = the Linear's output before the ReLU)
    onehot = torch.eye(3)[y]
    h1 = x @ W1.T + b1
    out = torch.relu(h1) @ W2.T + b2
    e = torch.softmax(out, -1) - onehot  # (B, C)
    x_mod = x + e @ feedback.T  # x' = x + F e
    h1_mod = x_mod @ W1.T + b1
    a_mod = torch.relu(h1_mod)
    e_mod = torch.softmax(a_mod @ W2.T + b2, -1) - onehot  # the reference uses pass 2's error
    B = x.shape[0]
    dW1 = (h1 - h1_mod).T @ x_mod / B  # first layer: (h1 - h1')^T x'
    dW2 = e_mod.T @ a_mod / B  # last layer: e'^T h1'
    torch.testing.assert_close(mlp.fc1.weight.grad, dW1)
    torch.testing.assert_close(mlp.fc1.bias.grad, (h1 - h1_mod).sum(0) / B)
    torch.testing.assert_close(mlp.fc2.weight.grad, dW2)
    torch.testing.assert_close(mlp.fc2.bias.grad, e_mod.sum(0) / B)
    assert loss == pytest.approx(float(nn.functional.cross_entropy(out, y)))
    assert torch.equal(mlp.fc1.weight, W1)  # the core forms updates, the optimizer applies


def settings(lr=0.1, **options):
    return MethodSettings(lr=lr, total_steps=10, seed=5, options=options)


@pytest.mark.parametrize(
    "kind",
    ["bert", "llama", "llama_cls", "t5", "t5_cls", "gpt2", "distilbert", "albert", "bert_lm"],
)
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_mempepita_update_equals_pepitas(kind, momentum):
    model, batch = make_model(kind), make_batch(kind)
    a = build_method("pepita", copy.deepcopy(model), settings(momentum=momentum))
    b = build_method("mempepita", copy.deepcopy(model), settings(momentum=momentum))
    for _ in range(2):
        ra, rb = a.step([batch]), b.step([batch])
        assert ra.loss == pytest.approx(rb.loss, rel=1e-5)
    sa, sb, s0 = a.trainable_state(), b.trainable_state(), dict(model.named_parameters())
    assert any(not torch.equal(sa[k], s0[k]) for k in sa)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-5, atol=1e-6)


def test_micro_batches_average_the_updates():
    model = make_model("bert")
    b1, b2 = make_batch("bert", 1), make_batch("bert", 2)
    a = build_method("mempepita", copy.deepcopy(model), settings())
    b = build_method("pepita", copy.deepcopy(model), settings())
    a.step([b1, b2])
    b.step([b1, b2])
    for k, v in a.trainable_state().items():
        torch.testing.assert_close(v, b.trainable_state()[k])


def test_layers_option_limits_what_trains():
    model = make_model("bert")
    m = build_method("pepita", copy.deepcopy(model), settings(layers="head"))
    assert set(m.trainable_state()) == {
        "bert.pooler.dense.weight",
        "bert.pooler.dense.bias",
        "classifier.weight",
        "classifier.bias",
    }
    m = build_method("pepita", copy.deepcopy(model), settings(layers="last-1"))
    names = set(m.trainable_state())
    assert any(".layer.1." in n for n in names) and not any(".layer.0." in n for n in names)


def test_adamw_applies_the_pepita_update():
    """optimizer=adamw: AdamW steps each weight with PEPITA's update as its gradient (the SGD
    run's update, recovered from its weights, fed to a plain AdamW gives the same weights)."""
    model = make_model("bert")
    sgd = build_method("pepita", copy.deepcopy(model), settings(lr=1.0, layers="head"))
    adam = build_method("pepita", copy.deepcopy(model), settings(lr=1e-3, layers="head",
                                                                  optimizer="adamw"))  # fmt: skip
    batch = make_batch("bert")
    before = {k: v.clone() for k, v in sgd.trainable_state().items()}
    sgd.step([batch])
    adam.step([batch])
    for k, w in before.items():
        p = torch.nn.Parameter(w.clone())
        p.grad = w - sgd.trainable_state()[k]  # lr 1: the update itself (weight decay 0)
        wd = settings().weight_decay if w.ndim >= 2 else 0.0
        torch.optim.AdamW([p], lr=1e-3 * sgd.steppers.lam(0), weight_decay=wd).step()
        torch.testing.assert_close(adam.trainable_state()[k], p.detach(), rtol=1e-5, atol=1e-7)
    assert len(adam.state_dict()["steppers"]["optimizers"][0]["state"]) == 1  # moments kept


def test_the_forecast_counts_the_layers_that_learn_and_the_optimizer():
    from edgetune.cost.shapes import shape_from_config
    from edgetune.forecast import StepInputs, predict

    model = make_model("bert")
    shape = shape_from_config(model.config.to_dict())
    inputs = StepInputs(shape, batch=2, seq=16, head="classifier", n_labels=3)
    for layers in ("head", "last-1", "all"):
        m = build_method("mempepita", copy.deepcopy(model), settings(layers=layers))
        trained = sum(v.numel() for v in m.trainable_state().values())
        c = predict(inputs, "mempepita", {"layers": layers})
        assert c.trained_params == trained, layers
        assert c.memory.optimizer == 0
    c = predict(inputs, "mempepita", {"layers": "head", "optimizer": "adamw"})
    assert c.memory.optimizer == 2 * 4 * c.trained_params  # two fp32 moments a weight


def test_feedback_is_fixed_by_the_seed():
    a = build_method("pepita", make_model("bert"), settings())
    b = build_method("pepita", make_model("bert"), settings())
    c = build_method("pepita", make_model("bert"), MethodSettings(lr=0.1, total_steps=1, seed=6))
    assert torch.equal(a.feedback, b.feedback) and not torch.equal(a.feedback, c.feedback)
    bound = 0.05 * (6 / 32) ** 0.5
    assert a.feedback.shape == (32, 3) and a.feedback.abs().max() <= bound


def test_bad_options_are_reported():
    with pytest.raises(EdgetuneError, match="optimizer"):
        build_method("pepita", make_model("bert"), settings(optimizer="lion"))
    with pytest.raises(EdgetuneError, match="sgd only"):
        build_method("pepita", make_model("bert"), settings(optimizer="adamw", momentum=0.9))
    with pytest.raises(EdgetuneError, match="layers"):
        build_method("pepita", make_model("bert"), settings(layers="first-2"))
    with pytest.raises(EdgetuneError, match="unknown mempepita option"):
        build_method("mempepita", make_model("bert"), settings(lrr=1))


def test_label_words_classifier_trains_with_both_rules():
    from edgetune.methods.label_words import LabelWords

    batch = {**make_batch("llama"), "labels": torch.tensor([0, 2, 1, 1])}
    a = build_method("pepita", LabelWords(make_model("llama"), [5, 9, 17]), settings(lr=0.01))
    b = build_method("mempepita", LabelWords(make_model("llama"), [5, 9, 17]), settings(lr=0.01))
    assert a.feedback.shape == (32, 3)
    losses = [a.step([batch]).loss for _ in range(5)]
    for _ in range(5):
        b.step([batch])
    assert losses[-1] < losses[0]
    for k, v in a.trainable_state().items():
        torch.testing.assert_close(v, b.trainable_state()[k], rtol=1e-5, atol=1e-6)
