"""A frozen base held in a low-precision format: GGUF's blocks exactly, layer-by-layer
dequantization in the forward and backward, LoRA and sparse over it, the loader's sources."""

import gguf
import numpy as np
import pytest
import tiny
import torch
import torch.nn.functional as F

import edgetune.precision
from edgetune.config import load_config
from edgetune.errors import EdgetuneError
from edgetune.methods.base import MethodSettings
from edgetune.methods.options import LoraOptions, SparseOptions
from edgetune.methods.registry import build_method
from edgetune.models.loader import apply_adapter, load_model
from edgetune.models.lowbit import densify, materialize
from edgetune.models.quantized import (
    Packed,
    QuantEmbedding,
    QuantLinear,
    bytes_per_weight,
    quantize,
)

GGUF_TYPES = {
    "q8_0": gguf.GGMLQuantizationType.Q8_0,
    "q4_0": gguf.GGMLQuantizationType.Q4_0,
    "q4_1": gguf.GGMLQuantizationType.Q4_1,
}


@pytest.mark.parametrize("fmt", sorted(GGUF_TYPES))
def test_blocks_are_gguf_blocks(fmt):
    """Quantized here and by the gguf package's reference, the values are the same."""
    torch.manual_seed(0)
    w = torch.randn(24, 128) * 0.05
    w[3, :32] = 0  # an all-zero block (scale 0)
    ours = quantize(w, fmt).dense().numpy()
    qt = GGUF_TYPES[fmt]
    ref = gguf.quants.dequantize(gguf.quants.quantize(w.numpy(), qt), qt)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-7)
    assert np.abs(ours - w.numpy()).max() < (0.02 if fmt == "q8_0" else 0.05)


@pytest.mark.parametrize("fmt", ["int8", "bf16", "fp16"])
def test_other_formats_round_trip_within_their_precision(fmt):
    w = torch.randn(16, 40)
    err = (quantize(w, fmt).dense() - w).abs().max() / w.abs().max()
    assert 0 < err < (1 / 127 if fmt == "int8" else 1e-2)


def test_refusals():
    with pytest.raises(EdgetuneError, match="multiple of 32"):
        quantize(torch.randn(4, 40), "q4_0")
    with pytest.raises(EdgetuneError, match="cannot hold"):
        quantize(torch.randn(4, 32), "q3_k")


@pytest.mark.parametrize("chunk", [1 << 22, 64 * 5])  # one piece, and 5-row chunks
@pytest.mark.parametrize("fmt", ["q4_1", "q8_0", "int8"])
def test_linear_forward_and_input_gradient_equal_the_dense_ones(fmt, chunk, monkeypatch):
    monkeypatch.setattr(edgetune.precision, "CHUNK", chunk)
    torch.manual_seed(0)
    packed = quantize(torch.randn(48, 64), fmt)
    layer = QuantLinear(packed, torch.randn(48))
    x = torch.randn(3, 7, 64, requires_grad=True)
    y = layer(x)
    (y * torch.arange(48.0)).sum().backward()
    xd = x.detach().clone().requires_grad_(True)
    yd = F.linear(xd, packed.dense(), layer.bias)
    (yd * torch.arange(48.0)).sum().backward()
    assert (y - yd).norm() <= 1e-6 * yd.norm()
    assert (x.grad - xd.grad).norm() <= 1e-6 * xd.grad.norm()


def test_a_frozen_held_layer_saves_nothing_for_backward():
    layer = QuantLinear(quantize(torch.randn(64, 64), "q4_0"), None)
    x = torch.randn(32, 64, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        layer(x).sum().backward()
    assert saved == []


def test_bf16_autocast_dequantizes_into_bf16():
    layer = QuantLinear(quantize(torch.randn(32, 64), "q8_0"), None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(torch.randn(4, 64))
    assert y.dtype == torch.bfloat16


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    return tiny.folder("llama", tmp_path_factory.mktemp("held") / "llama")


def _held(folder, fmt="q4_1"):
    return load_model(str(folder), "lm", weights=fmt)


def test_loader_holds_every_matrix_and_leaves_norms_fp32(llama_folder):
    held = _held(llama_folder).model
    modules = dict(held.named_modules())
    assert isinstance(modules["model.embed_tokens"], QuantEmbedding)
    assert isinstance(modules["model.layers.0.self_attn.q_proj"], QuantLinear)
    assert all(p.dtype == torch.float32 for p in held.parameters())
    assert not any(p.is_meta for p in held.parameters())
    assert bytes_per_weight(held) == pytest.approx(20 / 32)


def test_held_model_matches_the_dense_model_within_quantization_error(llama_folder):
    dense = load_model(str(llama_folder), "lm").model
    batch = tiny.batch("llama")
    with torch.no_grad():
        ref = dense(**batch).logits
        for fmt, tol in (("q8_0", 0.02), ("q4_1", 0.2)):
            out = _held(llama_folder, fmt).model(**batch).logits
            assert (out - ref).abs().max() / ref.abs().max() < tol, fmt


def test_lora_gradients_over_a_held_base_equal_those_over_its_dense_weights(llama_folder):
    """The must-show check: a dequantize-on-the-fly base and the same weights held dense give
    the same LoRA gradients (1e-5 relative)."""
    held = _held(llama_folder).model
    dense = densify(_held(llama_folder).model)  # the same dequantized weights, as nn.Linear
    settings = MethodSettings(lr=1e-3, total_steps=1, options=LoraOptions())
    grads = []
    for model in (held, dense):
        torch.manual_seed(0)  # the same adapter initialization
        method = build_method("lora", model, settings)
        batch = tiny.batch("llama")
        method.model(**batch).loss.backward()
        grads.append({n: p.grad.clone() for n, p in method.model.named_parameters()
                      if p.requires_grad})  # fmt: skip
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name, g in grads[0].items():
        ref = grads[1][name]
        assert (g - ref).norm() <= 1e-5 * ref.norm() + 1e-12, name


def test_lora_over_a_held_base_trains_and_saves_a_peft_adapter(llama_folder, tmp_path):
    held = _held(llama_folder).model
    method = build_method("lora", held, MethodSettings(lr=1e-2, total_steps=5,
                                                       options=LoraOptions()))  # fmt: skip
    batch = tiny.batch("llama")
    losses = [method.step([batch]).loss for _ in range(5)]
    assert losses[-1] < losses[0]
    method.export_model().save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    again = apply_adapter(_held(llama_folder).model, tmp_path / "adapter")
    with torch.no_grad():
        method.model.eval()
        torch.testing.assert_close(again(**batch).logits, method.model(**batch).logits)


def test_sparse_over_a_held_base_trains_split_rows_and_keeps_the_rest_held(llama_folder):
    held = _held(llama_folder).model
    options = SparseOptions(scheme="last-1")
    method = build_method("sparse", held, MethodSettings(lr=1e-2, total_steps=3,
                                                         options=options))  # fmt: skip
    batch = tiny.batch("llama")
    losses = [method.step([batch]).loss for _ in range(3)]
    assert losses[-1] < losses[0]
    still_held = [n for n, m in method.model.named_modules() if isinstance(m, Packed)]
    assert any("layers.0." in n for n in still_held)  # the untrained block stays held
    exported = method.export_model()
    assert not any(isinstance(m, Packed) for m in exported.modules())


def test_hybrid_over_a_held_base_trains_lora_below_and_refuses_all(llama_folder):
    batch = tiny.batch("llama")
    options = {"backprop_blocks": 1, "zo_trainable": "lora", "zo_lr": 1e-2}
    method = build_method("hybrid", _held(llama_folder).model,
                          MethodSettings(lr=1e-2, total_steps=3, options=options))  # fmt: skip
    losses = [method.step([batch]).loss for _ in range(3)]
    assert losses[-1] < losses[0]
    keys = [t.key for t in method.directions.tensors]
    assert keys and all("lora_" in k and "layers.0." in k for k in keys)
    with pytest.raises(EdgetuneError, match="zo_trainable lora or frozen"):
        build_method("hybrid", _held(llama_folder).model,
                     MethodSettings(lr=1e-2, total_steps=3, options={}))  # fmt: skip


def test_methods_that_change_every_weight_are_refused_over_a_held_base():
    for method in ("backprop", "mezo", "pepita", "mempepita"):
        with pytest.raises(EdgetuneError, match="holds the base frozen"):
            load_config(None, {"train.method": method, "model.weights": "q4_0"})
    assert load_config(None, {"train.method": "lora", "model.weights": "q4_0"})


def test_bad_formats_and_a_gguf_format_without_a_gguf_file(llama_folder):
    with pytest.raises(EdgetuneError, match="unknown model.weights 'q3_k'"):
        load_config(None, {"model.weights": "q3_k"})
    with pytest.raises(EdgetuneError, match="not a GGUF file"):
        load_model(str(llama_folder), "lm", weights="gguf")


def _random_held(seed):
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        model = tiny.CLASSES["llama"](tiny.config("llama"))
    materialize(model, "q4_0", None, seed)
    return model


def test_random_init_held_is_seeded_and_drawn_by_the_model_initializer():
    a, b = _random_held(3), _random_held(3)
    pa = a.get_submodule("model.layers.0.mlp.up_proj").packed
    assert pa.fmt == "q4_0" and torch.equal(
        pa.data, b.get_submodule("model.layers.0.mlp.up_proj").packed.data
    )
    std = pa.dense().std().item()
    assert std == pytest.approx(a.config.initializer_range, rel=0.2)
    assert torch.equal(a.model.norm.weight, torch.ones_like(a.model.norm.weight))


def test_a_classifier_head_stays_fp32_and_trains_with_lora(tmp_path):
    folder = tiny.folder("bert", tmp_path / "bert")
    model = load_model(str(folder), "classify", num_labels=3, weights="q8_0").model
    modules = dict(model.named_modules())
    assert isinstance(modules["bert.encoder.layer.0.attention.self.query"], QuantLinear)
    assert isinstance(modules["classifier"], torch.nn.Linear)
    assert isinstance(modules["bert.pooler.dense"], torch.nn.Linear)
    method = build_method("lora", model, MethodSettings(lr=1e-2, total_steps=3,
                                                        options=LoraOptions()))  # fmt: skip
    trained = [n for n, p in method.model.named_parameters() if p.requires_grad]
    assert any("classifier" in n for n in trained) and any("lora_A" in n for n in trained)
    batch = tiny.batch("bert")
    assert method.step([batch]).loss > 0
