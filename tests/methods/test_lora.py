"""`lora`: targets per family, what trains, merged export equals the adapted model."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from tiny import make_batch, make_model

from edgetune.errors import EdgetuneError
from edgetune.methods import build_method
from edgetune.methods.base import MethodSettings


def lora(kind, **options):
    settings = MethodSettings(lr=1e-2, total_steps=10, options={"r": 4, **options})
    return build_method("lora", make_model(kind), settings)


@pytest.mark.parametrize(
    ("kind", "targets"),
    [
        ("bert", {"query", "key", "value"}),
        ("llama", {"q_proj", "k_proj", "v_proj"}),
        ("gpt2", {"c_attn"}),
        ("t5", {"q", "k", "v"}),
        ("distilbert", {"q_lin", "k_lin", "v_lin"}),
        ("phi3", {"qkv_proj"}),
    ],
)
def test_default_targets_are_the_qkv_projections_of_the_family(kind, targets):
    m = lora(kind)
    assert set(m.model.peft_config["default"].target_modules) == targets


@pytest.mark.parametrize(
    ("kind", "names"),
    [("phi3", ["qkv_proj", "down_proj"]), ("gemma3", ["o_proj", "down_proj"]),
     ("qwen2", ["q_proj"]), ("gpt2", ["c_attn", "c_fc"])],
)  # fmt: skip
def test_the_forecast_counts_the_adapters_peft_makes(kind, names):
    """One adapter per fused linear (Phi-3's qkv_proj and gate_up_proj, GPT-2's c_attn), a
    tied head left frozen (Gemma 3), targets named by unit or by module."""
    import tiny

    from edgetune.cost.shapes import shape_from_config
    from edgetune.forecast import StepInputs, predict

    inputs = StepInputs(shape_from_config(tiny.config(kind).to_dict()), batch=2, seq=8)
    for targets in (["qkv", "ffn1"], names):
        trained = lora(kind, target_modules=targets).trainable_state()
        want = predict(inputs, "lora", {"r": 4, "target_modules": targets}).trained_params
        assert want == sum(t.numel() for t in trained.values()), targets


def test_adapters_and_the_classifier_head_are_all_that_trains():
    m = lora("bert", target_modules=["qkv", "ffn1"])
    names = set(m.trainable_state())
    assert all("lora_" in n or "modules_to_save" in n for n in names)
    assert any("intermediate.dense.lora_A" in n for n in names)
    assert any("classifier.modules_to_save" in n for n in names)
    assert not any("lm_head" in n for n in set(lora("llama").trainable_state()))


@pytest.mark.parametrize("kind", ["bert", "llama", "gpt2", "t5_cls"])
def test_export_merges_into_a_plain_model_with_the_same_outputs(kind, tmp_path):
    m, batch = lora(kind), make_batch(kind)
    for _ in range(3):
        m.step([batch])
    m.model.eval()
    with torch.no_grad():
        adapted = m.model(**batch).logits
    exported = m.export_model()  # merged in place: no second copy of the model at the end
    assert not isinstance(exported, PeftModel)
    assert not any("lora" in n for n, _ in exported.named_parameters())
    exported.eval()
    with torch.no_grad():
        torch.testing.assert_close(exported(**batch).logits, adapted, atol=1e-5, rtol=1e-5)
        base = make_model(kind).eval()(**batch).logits
    assert not torch.allclose(base, adapted)
    exported.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()


@pytest.mark.parametrize(
    ("kind", "k", "blocks"),
    [("llama", 1, {"layers.1"}), ("t5", 3, {"encoder.block.1", "decoder.block"})],
)
def test_layers_puts_adapters_in_the_last_blocks_only(kind, k, blocks):
    """`layers: last-K`: adapters in the last K blocks (T5: encoder blocks first, so last-3 of
    2 + 2 is encoder block 1 and both decoder blocks); nothing below them needs a gradient."""
    m = lora(kind, layers=f"last-{k}", target_modules=["qkv", "ffn1"])

    def adapted(method):
        return {n.rsplit(".lora_A", 1)[0] for n in method.trainable_state() if ".lora_A" in n}

    everywhere = adapted(lora(kind, target_modules=["qkv", "ffn1"]))
    want = {n for n in everywhere if any(f"{b}." in n for b in blocks)}
    assert want and adapted(m) == want and len(want) < len(everywhere)
    m.step([make_batch(kind)])


def test_bad_options_are_reported():
    with pytest.raises(EdgetuneError, match="r must be"):
        lora("bert", r=0)
    with pytest.raises(EdgetuneError, match="unknown lora option"):
        lora("bert", rank=4)
    with pytest.raises(EdgetuneError, match="use all or last-K"):
        lora("bert", layers="head")
    with pytest.raises(EdgetuneError, match="has 2 blocks"):
        lora("bert", layers="last-3")
