"""`sparse`: gradients against full backprop, backward depth, in-place updates, export."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny import make_batch, make_model
from torch import nn

from edgetune.errors import EdgetuneError
from edgetune.methods import build_method
from edgetune.methods.base import MethodSettings, forward_loss
from edgetune.methods.sparse import SplitLinear
from edgetune.methods.state import merge_trainable_state, parse_key
from edgetune.scheme import UnitUpdate, UpdateScheme

# layer 1 of 2: qkv at half the channels, ffn1 bias only, ffn2 whole, norms, and the head
SCHEME = UpdateScheme(
    (
        UnitUpdate("qkv", 1, 0.5),
        UnitUpdate("ffn1", 1, 0.0, True),
        UnitUpdate("ffn2", 1, 1.0),
        UnitUpdate("norm", 1, 1.0),
        UnitUpdate("head", weight_fraction=1.0),
    )
)


def sparse(model, scheme=SCHEME, **kw):
    options = {"scheme": scheme, **kw.pop("options", {})}
    settings = MethodSettings(lr=1e-2, total_steps=10, options=options, **kw)
    return build_method("sparse", model, settings)


@pytest.mark.parametrize("kind", ["bert", "llama", "gpt2", "t5", "distilbert"])
def test_gradients_equal_full_backprop_on_the_chosen_parameters(kind):
    batch = make_batch(kind)
    full = make_model(kind)
    forward_loss(full, batch).backward()
    # a tied head's gradient differs by design (sparse detaches the embedding path): skip it
    named = list(full.named_parameters(remove_duplicate=False))
    tied = {n for n, p in named if sum(q is p for _, q in named) > 1}
    full_grads = {n: p.grad for n, p in named}

    m = sparse(make_model(kind))
    assert m.split, "the scheme should split some weights"
    forward_loss(m.model, batch).backward()
    checked = 0
    for key, tensor in m.trainable_state().items():
        name, index = parse_key(key)
        if name in tied:
            continue
        module = name.rpartition(".")[0]
        if module in m.split:  # the trained rows only, in the original layout
            s = m.split[module]
            grad = s.weight_train.grad.t() if s.conv1d else s.weight_train.grad
            if name.endswith(".bias"):
                grad = s.bias.grad
        else:
            grad = dict(m.model.named_parameters())[name].grad
        expected = full_grads[name] if index is None else full_grads[name][index]
        assert grad is not None and grad.shape == tensor.shape, key
        torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6)
        checked += 1
    assert checked >= 6
    trained = {id(p) for p in m.params}
    for n, p in m.model.named_parameters():
        if id(p) not in trained:
            assert p.grad is None, f"{n} got a gradient it does not need"
    for s in m.split.values():
        assert not s.weight_frozen.requires_grad


def test_backward_stops_at_the_lowest_trainable_module():
    m = sparse(make_model("bert"))
    seen = {}
    blocks = m.model.bert.encoder.layer
    blocks[0].register_forward_hook(lambda _m, _i, out: seen.update(l0=out[0].requires_grad))
    blocks[1].register_forward_hook(lambda _m, _i, out: seen.update(l1=out[0].requires_grad))
    forward_loss(m.model, make_batch("bert"))
    assert seen == {"l0": False, "l1": True}


@pytest.mark.parametrize("frozen_dropout", [False, True])
def test_frozen_modules_below_the_trained_ones_run_without_dropout(frozen_dropout):
    model = make_model("bert")
    m = sparse(model, "last-1", options={"frozen_dropout": frozen_dropout})
    m.step([make_batch("bert")])
    blocks = model.bert.encoder.layer
    frozen = [model.bert.embeddings, *blocks[:-1]]
    assert all(b.training == frozen_dropout for b in frozen)
    assert blocks[-1].training and model.classifier.training


def test_without_dropout_the_whole_model_steps_in_eval_mode():
    model = make_model("bert")
    batch = make_batch("bert")
    m = sparse(model, "last-1", options={"dropout": False})
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    m.step([batch])
    assert not any(x.training for x in model.modules())
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)
    # without dropout a step is deterministic: the same start and batch give the same weights
    twin = make_model("bert")
    sparse(twin, "last-1", options={"dropout": False}).step([batch])
    for (n, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q), n
    with pytest.raises(EdgetuneError, match="frozen_dropout needs dropout"):
        sparse(make_model("bert"), "last-1", options={"dropout": False, "frozen_dropout": True})


def test_a_trained_tied_head_does_not_open_the_embedding_path():
    m = sparse(make_model("gpt2"), "last-1")
    assert m.model.lm_head.weight is m.model.transformer.wte.weight
    seen = {}
    m.model.transformer.h[0].register_forward_hook(
        lambda _m, _i, out: seen.update(l0=out[0].requires_grad)
    )
    forward_loss(m.model, make_batch("gpt2")).backward()
    assert seen == {"l0": False}
    assert m.model.lm_head.weight.grad is not None


def test_split_linear_only_forms_the_trained_rows_gradient():
    lin = nn.Linear(8, 6)
    s = SplitLinear(lin, 2, train_bias=False)
    x = torch.randn(3, 8)
    torch.testing.assert_close(s(x), lin(x))
    s(x).sum().backward()
    assert s.weight_train.grad.shape == (2, 8)
    assert s.bias.grad is None
    merged = s.merged()
    assert type(merged) is nn.Linear and torch.equal(merged.weight, lin.weight)
    # the trained rows are a copy, the frozen rows a view of the original: the split adds
    # the trained rows only
    assert s.weight_frozen.untyped_storage().data_ptr() == lin.weight.untyped_storage().data_ptr()
    assert s.weight_train.untyped_storage().data_ptr() != lin.weight.untyped_storage().data_ptr()
    with torch.no_grad():
        s.weight_train.add_(1.0)
    assert torch.equal(lin.weight[:2], merged.weight[:2])  # training leaves the original be


@pytest.mark.parametrize("micro", [1, 2])
def test_in_place_update_equals_the_optimizer_step(micro):
    batches = [make_batch("bert", seed=s) for s in range(micro)]
    a = sparse(make_model("bert"), max_grad_norm=None, weight_decay=0.1)
    b = sparse(make_model("bert"), max_grad_norm=None, weight_decay=0.1, options={"in_place": True})
    for _ in range(3):
        ra, rb = a.step(batches), b.step(batches)
        assert ra.loss == pytest.approx(rb.loss, rel=1e-6)
    sa, sb = a.trainable_state(), b.trainable_state()
    assert not torch.equal(sa["classifier.weight"], make_model("bert").classifier.weight)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k])
    assert all(p.grad is None for p in b.params)


def test_in_place_gradients_of_different_parameters_never_coexist():
    m = sparse(make_model("bert"), max_grad_norm=None, options={"in_place": True})
    live = []

    def after_method_hook(_p):  # runs after the method's own hook on the same tensor
        live.append(sum(q.grad is not None for q in m.params))

    for p in m.params:
        p.register_post_accumulate_grad_hook(after_method_hook)
    m.step([make_batch("bert")])
    assert len(live) == len(m.params) and max(live) == 0


def test_in_place_refuses_gradient_clipping():
    with pytest.raises(EdgetuneError, match="max_grad_norm"):
        sparse(make_model("bert"), max_grad_norm=1.0, options={"in_place": True})


def test_export_restores_the_original_structure(tmp_path):
    original = make_model("gpt2")
    m = sparse(copy.deepcopy(original), "last-1@0.25")
    m.step([make_batch("gpt2")])
    merged = merge_trainable_state(original.state_dict(), m.trainable_state())
    exported = m.export_model()  # in place: no second copy of the model at the end of a run
    assert not any(isinstance(x, SplitLinear) for x in exported.modules())
    assert exported.state_dict().keys() == original.state_dict().keys()
    for k, v in exported.state_dict().items():
        assert torch.equal(v, merged[k]), k
    exported.save_pretrained(tmp_path)
    reloaded = type(original).from_pretrained(tmp_path).eval()
    batch = make_batch("gpt2")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, exported.eval()(**batch).logits)


@pytest.mark.parametrize("name", ["last-2", "bias-only", "qkv-ffn1-1@0.5", "ratios-0.25,1"])
def test_builtin_schemes_train(name):
    m = sparse(make_model("llama"), name)
    before = {k: v.clone() for k, v in m.trainable_state().items()}
    m.step([make_batch("llama")])
    assert any(not torch.equal(before[k], v) for k, v in m.trainable_state().items())


def test_scheme_from_yaml(tmp_path):
    path = tmp_path / "s.yaml"
    SCHEME.save(path)
    m = sparse(make_model("bert"), str(path))
    assert set(m.split) == {
        f"bert.encoder.layer.1.attention.self.{x}" for x in ("query", "key", "value")
    }


def test_tied_head_cannot_be_split():
    with pytest.raises(EdgetuneError, match="tied"):
        sparse(make_model("gpt2"), UpdateScheme((UnitUpdate("head", weight_fraction=0.5),)))


def test_bad_options_are_reported():
    with pytest.raises(EdgetuneError, match="unknown sparse option"):
        sparse(make_model("bert"), options={"shceme": "x"})
    with pytest.raises(EdgetuneError, match="unknown scheme"):
        sparse(make_model("bert"), "last-two")
    with pytest.raises(EdgetuneError, match="layer"):
        sparse(make_model("bert"), UpdateScheme((UnitUpdate("qkv", 5),)))


def test_in_place_export_leaves_no_hooks():
    m = sparse(make_model("gpt2"), "last-1@0.5", max_grad_norm=None, options={"in_place": True})
    batch = make_batch("gpt2")
    m.step([batch])
    exported = m.export_model()
    hooks = [p._post_accumulate_grad_hooks for p in exported.parameters()]
    assert not any(hooks), "gradient hooks left on the exported model"
    assert not any(mod._forward_hooks for mod in exported.modules())
