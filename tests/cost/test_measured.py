"""The cost model against measurement on tiny random models (CPU, seconds):

- forward and backward FLOPs within 5 % of torch.utils.flop_counter.FlopCounterMode, which
  counts matrix products only; element-wise work (softmax, norms, activations, loss,
  embedding lookups) is neither counted there nor in `2 * macs`;
- bytes saved for backward within 10 % of what autograd's saved-tensor hooks see, for backprop
  and for sparse update schemes emulated by switching requires_grad on the chosen parameters.
"""

from __future__ import annotations

import pytest

from edgetune.cost.methods import step_cost
from edgetune.cost.shapes import shape_from_config
from edgetune.plan.scheme import UnitUpdate, UpdateScheme

B, T, TGT = 2, 32, 16


def _build(cfg, cls_name):
    import torch
    import transformers

    torch.manual_seed(0)
    cfg._attn_implementation = "eager"  # the attention the cost model describes
    return getattr(transformers, cls_name)(cfg).eval()  # eval: dropout off


def _loss_fn(model, cfg, head):
    import torch

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (B, T), generator=g)
    kw = {}
    if cfg.is_encoder_decoder:
        kw["decoder_input_ids"] = torch.randint(0, cfg.vocab_size, (B, TGT), generator=g)
        kw["labels"] = torch.randint(0, cfg.vocab_size, (B, TGT), generator=g)
    elif head == "lm":
        kw["labels"] = torch.randint(0, cfg.vocab_size, (B, T), generator=g)
    else:
        kw["labels"] = torch.randint(0, 2, (B,), generator=g)
    return lambda: model(input_ids=ids, **kw).loss


FAMILIES = ["bert", "bert-mlm", "distilbert", "albert", "gpt2", "llama-gqa", "t5", "flan-t5-gated"]


@pytest.mark.parametrize("family", FAMILIES)
def test_backprop_flops_and_saved_bytes(tiny, family):
    from edgetune.measure.flops import count_flops
    from edgetune.measure.saved import saved_bytes

    cfg, cls_name, head = tiny[family]
    model = _build(cfg, cls_name)
    fn = _loss_fn(model, cfg, head)
    measured = count_flops(fn)
    saved = saved_bytes(fn, model)
    c = step_cost(shape_from_config(cfg.to_dict()), "backprop", B, T, TGT, head=head)
    assert 2 * c.fwd_macs == pytest.approx(measured.forward, rel=0.05)
    assert 2 * c.bwd_macs == pytest.approx(measured.backward, rel=0.05)
    assert c.memory.activations == pytest.approx(saved, rel=0.10)


# Parameter-name patterns of the units of `UpdateScheme` per family (layer index {i}).
UNIT_PARAMS = {
    "bert": {
        "qkv": [f"bert.encoder.layer.{{i}}.attention.self.{p}" for p in ("query", "key", "value")],
        "attn_out": ["bert.encoder.layer.{i}.attention.output.dense"],
        "ffn1": ["bert.encoder.layer.{i}.intermediate.dense"],
        "ffn2": ["bert.encoder.layer.{i}.output.dense"],
        "norm": ["bert.encoder.layer.{i}.attention.output.LayerNorm",
                 "bert.encoder.layer.{i}.output.LayerNorm"],
        "head": ["bert.pooler.dense", "classifier"],
    },
    "llama-gqa": {
        "qkv": ["model.layers.{i}.self_attn.q_proj", "model.layers.{i}.self_attn.k_proj",
                "model.layers.{i}.self_attn.v_proj"],
        "attn_out": ["model.layers.{i}.self_attn.o_proj"],
        "ffn1": ["model.layers.{i}.mlp.gate_proj", "model.layers.{i}.mlp.up_proj"],
        "ffn2": ["model.layers.{i}.mlp.down_proj"],
        "norm": ["model.layers.{i}.input_layernorm", "model.layers.{i}.post_attention_layernorm"],
        "final_norm": ["model.norm"],  # trains with the last block's norm unit
        "head": ["lm_head"],
    },
}  # fmt: skip


def _apply_scheme(model, family, scheme: UpdateScheme) -> None:
    """Emulate a scheme with requires_grad only (fraction 1): weight trains if
    weight_fraction > 0, bias if bias; embeddings and everything unnamed frozen. A final norm
    after the last block trains with that block's norm unit (the cost model's convention)."""
    params = dict(model.named_parameters())
    for p in params.values():
        p.requires_grad_(False)
    n_layers = model.config.num_hidden_layers
    for u in scheme.updates:
        names = list(UNIT_PARAMS[family][u.unit])
        if u.unit == "norm" and u.layer == n_layers - 1:
            names += UNIT_PARAMS[family].get("final_norm", [])
        for prefix in names:
            prefix = prefix.format(i=u.layer)
            if u.weight_fraction > 0:
                params[f"{prefix}.weight"].requires_grad_(True)
            if u.bias and f"{prefix}.bias" in params:
                params[f"{prefix}.bias"].requires_grad_(True)


SCHEMES = {
    "qkv-ffn1-last": lambda n: UpdateScheme.qkv_ffn1(n, 1),
    "bias-only": lambda n: UpdateScheme.bias_only(n),
    "last-1": lambda n: UpdateScheme.last_k(n, 1),
    "head-only": lambda n: UpdateScheme((UnitUpdate("head"),), "head-only"),
}


@pytest.mark.parametrize("family", ["bert", "llama-gqa"])
@pytest.mark.parametrize("scheme_name", sorted(SCHEMES))
def test_sparse_flops_and_saved_bytes(tiny, family, scheme_name):
    from edgetune.measure.flops import count_flops
    from edgetune.measure.saved import saved_bytes

    cfg, cls_name, head = tiny[family]
    if family == "llama-gqa" and scheme_name == "bias-only":
        pytest.skip("Llama has no biases; bias-only trains the norms and head only")
    model = _build(cfg, cls_name)
    shape = shape_from_config(cfg.to_dict())
    scheme = SCHEMES[scheme_name](shape.n_layers)
    _apply_scheme(model, family, scheme)
    fn = _loss_fn(model, cfg, head)
    measured = count_flops(fn)
    saved = saved_bytes(fn, model)
    c = step_cost(shape, "sparse", B, T, head=head, scheme=scheme)
    assert 2 * c.fwd_macs == pytest.approx(measured.forward, rel=0.05)
    assert 2 * c.bwd_macs == pytest.approx(measured.backward, rel=0.05)
    assert c.memory.activations == pytest.approx(saved, rel=0.10)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert c.trained_params == trainable


def _t5_params(unit: str, layer: int, n_enc: int, n_layers: int) -> list[str]:
    """Parameter names of a scheme unit in T5 (encoder blocks 0..n_enc-1, then decoder)."""
    stack, j = ("encoder", layer) if layer < n_enc else ("decoder", layer - n_enc)
    blk = f"{stack}.block.{j}.layer"
    attn = [f"{blk}.0.SelfAttention"] + ([f"{blk}.1.EncDecAttention"] if stack == "decoder" else [])
    ff = f"{blk}.{2 if stack == 'decoder' else 1}.DenseReluDense"
    names = {
        "qkv": [f"{a}.{x}" for a in attn for x in "qkv"]
        + ([f"{blk}.0.SelfAttention.relative_attention_bias"] if j == 0 else []),
        "attn_out": [f"{a}.o" for a in attn],
        "ffn1": [f"{ff}.wi"],
        "ffn2": [f"{ff}.wo"],
        "norm": [f"{blk}.{k}.layer_norm" for k in range(3 if stack == "decoder" else 2)]
        + ([f"{stack}.final_layer_norm"] if layer in (n_enc - 1, n_layers - 1) else []),
    }
    return names[unit]


@pytest.mark.parametrize("k", [1, 3])
def test_sparse_encoder_decoder_layer_numbering(tiny, k):
    """T5: scheme layers count encoder blocks first, then decoder blocks; the last k blocks
    train (k=3 reaches into the encoder, so the backward crosses into it through the
    cross-attention's k and v)."""
    from edgetune.measure.flops import count_flops
    from edgetune.measure.saved import saved_bytes

    cfg, cls_name, head = tiny["t5"]
    model = _build(cfg, cls_name)
    shape = shape_from_config(cfg.to_dict())
    n = shape.n_layers + shape.n_dec_layers
    scheme = UpdateScheme.last_k(n, k)
    params = dict(model.named_parameters())
    for p in params.values():
        p.requires_grad_(False)
    for u in scheme.updates:
        if u.unit != "head":  # the tied LM head stays frozen under sparse
            for prefix in _t5_params(u.unit, u.layer, shape.n_layers, n):
                params[f"{prefix}.weight"].requires_grad_(True)
    fn = _loss_fn(model, cfg, head)
    measured = count_flops(fn)
    saved = saved_bytes(fn, model)
    c = step_cost(shape, "sparse", B, T, TGT, head=head, scheme=scheme)
    assert 2 * c.fwd_macs == pytest.approx(measured.forward, rel=0.05)
    assert 2 * c.bwd_macs == pytest.approx(measured.backward, rel=0.05)
    assert c.memory.activations == pytest.approx(saved, rel=0.10)
    assert c.trained_params == sum(p.numel() for p in model.parameters() if p.requires_grad)
