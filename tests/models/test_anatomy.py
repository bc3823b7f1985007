"""`edgetune.models.anatomy` on every supported family, and built-in scheme names."""

from __future__ import annotations

import pytest
from tiny import make_model
from torch import nn

from edgetune.errors import EdgetuneError
from edgetune.models.anatomy import describe, is_linear
from edgetune.scheme import UpdateScheme

EXPECTED = {  # kind: (n_layers, qkv modules of the last layer, head, output, embeddings)
    "bert": (
        2,
        ["attention.self.query", "attention.self.key", "attention.self.value"],
        ("bert.pooler.dense", "classifier"),
        ("classifier",),
        ("bert.embeddings",),
    ),
    "distilbert": (
        2,
        ["attention.q_lin", "attention.k_lin", "attention.v_lin"],
        ("pre_classifier", "classifier"),
        ("classifier",),
        ("distilbert.embeddings",),
    ),
    "albert": (
        1,
        ["attention.query", "attention.key", "attention.value"],
        ("albert.pooler", "classifier"),
        ("classifier",),
        ("albert.embeddings",),
    ),
    "llama": (
        2,
        ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
        ("lm_head",),
        ("lm_head",),
        ("model.embed_tokens",),
    ),
    "llama_cls": (
        2,
        ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
        ("score",),
        ("score",),
        ("model.embed_tokens",),
    ),
    "gpt2": (2, ["attn.c_attn"], ("lm_head",), ("lm_head",), ("transformer.wte",)),
    "t5": (
        4,
        [
            f"layer.{i}.{a}.{p}"
            for i, a in ((0, "SelfAttention"), (1, "EncDecAttention"))
            for p in "qkv"
        ],
        ("lm_head",),
        ("lm_head",),
        ("encoder.embed_tokens", "decoder.embed_tokens"),
    ),
}


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_units_map_to_the_real_modules(kind):
    model = make_model(kind)
    a = describe(model)
    n_layers, qkv, head, output, embeddings = EXPECTED[kind]
    assert a.n_layers == n_layers
    last = a.blocks[-1]
    assert list(a.modules("qkv", n_layers - 1)) == [f"{last}.{q}" for q in qkv]
    assert (a.head, a.output, a.embeddings) == (head, output, embeddings)
    modules = dict(model.named_modules())
    for layer in range(n_layers):
        for unit in ("qkv", "attn_out", "ffn1", "ffn2"):
            names = a.modules(unit, layer)
            assert names and all(is_linear(modules[n]) for n in names), (unit, layer)
        assert all(not is_linear(modules[n]) for n in a.modules("norm", layer))


def test_layer_order_and_final_norms():
    a = describe(make_model("t5"))
    assert a.blocks == ("encoder.block.0", "encoder.block.1", "decoder.block.0", "decoder.block.1")
    assert "encoder.final_layer_norm" in a.modules("norm", 1)
    assert "decoder.final_layer_norm" in a.modules("norm", 3)
    assert a.modules("ffn1", 3) == (
        "decoder.block.1.layer.2.DenseReluDense.wi_0",
        "decoder.block.1.layer.2.DenseReluDense.wi_1",
    )
    assert "model.norm" in describe(make_model("llama")).modules("norm", 1)


def test_albert_layers_are_the_distinct_shared_layers():
    model = make_model("albert")  # 3 passes through one shared layer
    assert model.config.num_hidden_layers == 3
    assert describe(model).blocks == ("albert.encoder.albert_layer_groups.0.albert_layers.0",)


def test_unknown_family_is_a_clear_error():
    with pytest.raises(EdgetuneError, match="not supported"):
        describe(nn.Linear(2, 2))
    with pytest.raises(EdgetuneError, match="out of range"):
        describe(make_model("bert")).modules("qkv", 7)


@pytest.mark.parametrize(
    ("name", "lowest", "n_updates"),
    [
        ("last-2", 2, 11),
        ("bias-only", 0, 21),
        ("bias-only-1", 3, 6),
        ("qkv-ffn1-1@0.25", 3, 6),
        ("ratios-0.25,0.5,1", 1, 16),
    ],
)
def test_builtin_scheme_names(name, lowest, n_updates):
    s = UpdateScheme.builtin(name, 4)
    assert s.lowest_layer() == lowest and len(s.updates) == n_updates and s.trains_head()
    if "@" in name:
        assert {u.weight_fraction for u in s.updates if u.unit == "qkv"} == {0.25}
    with pytest.raises(EdgetuneError):
        UpdateScheme.builtin("last-9", 4)
