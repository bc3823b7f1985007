"""Relations between methods that follow from their definitions, on a real-size shape."""

from dataclasses import replace

import pytest
from rules import RULES

from edgetune.cost.methods import Precision, Rule, step_cost
from edgetune.cost.shapes import ModelShape, block_params, n_params
from edgetune.errors import EdgetuneError
from edgetune.scheme import UnitUpdate, UpdateScheme

# a BERT-base-like encoder written out, so these tests need no transformers
S = ModelShape("enc", "bert", "encoder", 30522, 768, 12, 12, 12, 64, 3072, n_positions=512,
               type_vocab=2, pooler=True)  # fmt: skip


# SmolLM2-135M written out: GQA, tied LM head, KV cache
SMOL = ModelShape("smol", "llama", "decoder", 49152, 576, 30, 9, 3, 64, 1536, gated=True,
                  act="silu", norm="rmsnorm", bias=False, tied=True, emb_norm=False,
                  final_norm=True, kv_cache=True, rope_dim=64)  # fmt: skip
V, D = SMOL.vocab, SMOL.d_model


def _step_bytes(c) -> float:
    """The step's own bytes: the peak beyond weights and optimizer state."""
    return c.memory.peak - c.memory.weights - c.memory.optimizer


def test_mezo_is_two_forwards_at_inference_memory():
    bp, mz = (step_cost(S, RULES[m], 4, 128) for m in ("backprop", "mezo"))
    assert mz.macs == 2 * bp.fwd_macs
    assert mz.memory.gradients == mz.memory.optimizer == mz.memory.activations == 0
    assert mz.memory.weights == n_params(S, "lm") * 4
    assert bp.memory.total / mz.memory.total > 3  # MeZO: several times less than backprop


def test_pepita_and_mempepita_forwards():
    pe, mp = (step_cost(S, RULES[m], 1, 256) for m in ("pepita", "mempepita"))
    bp = step_cost(S, RULES["backprop"], 1, 256)
    assert pe.fwd_macs == 2 * bp.fwd_macs and mp.fwd_macs == 3 * bp.fwd_macs
    assert pe.update_macs == mp.update_macs
    # the error projection F e costs M x V x d MACs with an LM head
    proj = 256 * S.vocab * S.d_model
    # local updates dW = delta^T x: one weight-gradient product per trained linear
    block = 4 * 768**2 + 2 * 768 * 3072
    head = 768 * 768 + 768 * S.vocab  # MLM transform and decoder
    assert pe.update_macs - proj == 256 * (12 * block + head)
    assert mp.memory.activations < pe.memory.activations


def test_adamw_states_and_sgd():
    adam = step_cost(S, RULES["backprop"], optimizer="adamw")
    sgd = step_cost(S, RULES["backprop"], optimizer="sgd")
    assert adam.memory.optimizer == 2 * adam.memory.gradients and sgd.memory.optimizer == 0
    bf = step_cost(S, RULES["backprop"], precision=Precision("bf16", "bf16", "fp32", "bf16"))
    assert bf.memory.weights == adam.memory.weights / 2
    assert bf.memory.optimizer == adam.memory.optimizer
    with pytest.raises(EdgetuneError, match="unknown dtype"):
        Precision("fp8")


def test_sparse_backward_stops_at_lowest_layer_and_fraction_scales():
    top = UpdateScheme((UnitUpdate("ffn1", 11), UnitUpdate("head")))
    low = UpdateScheme((UnitUpdate("ffn1", 0), UnitUpdate("head")))
    # classifier head: a tied LM head would add the embedding table's dW to every scheme
    kw = dict(head="classifier")
    c_top, c_low = (step_cost(S, RULES["sparse"], 1, 128, scheme=x, **kw) for x in (top, low))
    assert c_top.bwd_macs < c_low.bwd_macs / 5
    quarter = UpdateScheme((UnitUpdate("ffn1", 11, 0.25), UnitUpdate("head")))
    c_q = step_cost(S, RULES["sparse"], 1, 128, scheme=quarter, **kw)
    ffn1_w = 128 * 768 * 3072
    assert c_top.bwd_macs - c_q.bwd_macs == pytest.approx(0.75 * ffn1_w)
    assert c_top.trained_params - c_q.trained_params == pytest.approx(0.75 * 768 * 3072)
    # a split weight's trained rows are a copy beside the frozen original; a whole one is not
    assert c_top.memory.copies == 0.0
    assert c_q.memory.copies == pytest.approx(0.25 * 768 * 3072 * 4)
    bias = UpdateScheme((UnitUpdate("ffn1", 11, 0.0, True), UnitUpdate("head")))
    c_b = step_cost(S, RULES["sparse"], 1, 128, scheme=bias, **kw)
    assert c_b.memory.activations < c_top.memory.activations  # no stored input for a bias
    with pytest.raises(EdgetuneError, match="needs an update scheme"):
        step_cost(S, RULES["sparse"])


def test_tied_lm_head_trains_the_embedding_matrix_once():
    """A trained LM head tied to the embedding matrix trains that matrix (its dW, gradient and
    AdamW state), counted once; the lookup gets no gradient (the runtime detaches it), so the
    backward still stops at the lowest trained block."""
    smol = replace(SMOL, kv_cache=False)
    m, table = 4 * 128, V * D
    head = UpdateScheme((UnitUpdate("head"),), "head-only")
    c = step_cost(smol, RULES["sparse"], 4, 128, scheme=head)
    assert c.trained_params == table
    assert c.bwd_macs == m * table  # dW only: the head's input needs no gradient
    assert c.memory.gradients == 4 * table and c.memory.optimizer == 2 * 4 * table
    last = step_cost(smol, RULES["sparse"], 4, 128, scheme=UpdateScheme.last_k(30, 2))
    assert last.trained_params == table + 2 * block_params(smol) + D  # + the final norm
    untied = step_cost(replace(smol, tied=False), RULES["sparse"], 4, 128, scheme=head)
    assert (untied.trained_params, untied.bwd_macs) == (c.trained_params, c.bwd_macs)
    bp = step_cost(smol, RULES["backprop"], 4, 128)
    assert bp.trained_params == n_params(smol, "lm")  # the embedding matrix once


def test_mezo_peak_is_the_head_with_its_perturbed_copy():
    """At the LM head MeZO holds the perturbed copy of the (tied) head matrix, the logits, the
    head's input and the KV cache (K and V of every layer, until the model returns); the
    embedding lookup adds z[ids] instead of copying the table."""
    b, t = 4, 128
    rows, cache = b * t, 30 * 2 * b * t * SMOL.kv_width * 4
    c = step_cost(SMOL, RULES["mezo"], b, t)
    assert c.memory.workspace == 4 * (V * D + rows * V + rows * D) + cache
    no_cache = step_cost(replace(SMOL, kv_cache=False), RULES["mezo"], b, t)
    assert c.memory.workspace - no_cache.memory.workspace == cache


def test_pepita_holds_every_update_mempepita_the_output_layer_phase():
    b, t = 4, 128
    rows = b * t
    pe = step_cost(SMOL, RULES["pepita"], b, t, optimizer="sgd")
    assert pe.memory.gradients == 4 * pe.trained_params  # p.grad of every linear to the end
    mp = step_cost(SMOL, RULES["mempepita"], b, t, optimizer="sgd")
    # the output layer's update: F e (rows, d), the head's input (2 rows, d), its output,
    # the concatenated logits and the leaf's gradient (2 rows, V each), dW and its scaled copy
    leaf = 4 * (rows * D + 2 * rows * D + 3 * 2 * rows * V + 2 * V * D)
    assert _step_bytes(mp) == leaf
    assert mp.memory.gradients == 4 * V * D  # one update at a time: the largest


def test_optimizer_step_makes_no_temporaries():
    """edgetune's AdamW is fused (one in-place kernel per parameter): the step adds nothing to
    the gradients, as plain SGD; with only the tied head (the embedding matrix) trained, the
    step's own bytes are then those of the backward, not the optimizer's."""
    head = UpdateScheme((UnitUpdate("head"),), "head-only")
    c = step_cost(SMOL, RULES["sparse"], 1, 128, scheme=head)
    sgd = step_cost(SMOL, RULES["sparse"], 1, 128, scheme=head, optimizer="sgd")
    assert _step_bytes(c) == _step_bytes(sgd) < 2 * 4 * V * D


def test_the_runtime_adamw_is_fused():
    torch = pytest.importorskip("torch")
    from edgetune.methods.base import MethodSettings
    from edgetune.methods.optim import make_adamw

    opt = make_adamw(torch.nn.Linear(4, 4), MethodSettings(lr=1e-3, total_steps=1))
    assert opt.defaults["fused"] is True


def test_mezo_chunk_is_the_runtimes():
    pytest.importorskip("torch")
    from edgetune.cost.forward_only import CHUNK
    from edgetune.methods.mezo import CHUNK as RUNTIME_CHUNK

    assert CHUNK == RUNTIME_CHUNK


def test_lora_adapters():
    c = step_cost(S, RULES["lora"], 1, 128, lora_rank=8, lora_units=("q", "v"))
    assert c.trained_params == 12 * 2 * 8 * (768 + 768)  # A and B on q and v of 12 layers
    assert c.memory.optimizer == 2 * c.trained_params * 4
    with pytest.raises(EdgetuneError, match="unknown LoRA targets"):
        step_cost(S, RULES["lora"], lora_units=("qq",))


def test_encoder_decoder_source_and_target_lengths():
    t5 = ModelShape("t5", "t5", "encoder-decoder", 32128, 512, 6, 8, 8, 64, 2048, n_dec_layers=6,
                    act="relu", norm="rmsnorm", bias=False, rel_buckets=32, emb_norm=False,
                    final_norm=True)  # fmt: skip
    a = step_cost(t5, RULES["backprop"], 1, 512, tgt_seq=32)
    b = step_cost(t5, RULES["backprop"], 1, 512, tgt_seq=128)
    assert b.fwd_macs > a.fwd_macs
    # the LM head runs on target tokens only: 96 more tokens x V x d
    assert b.fwd_macs - a.fwd_macs > 96 * 32128 * 512


def test_bad_numbers():
    with pytest.raises(EdgetuneError, match="positive"):
        step_cost(S, RULES["backprop"], batch=0)
    with pytest.raises(EdgetuneError, match="unknown rule"):
        step_cost(S, Rule("backward", "everything"))
    with pytest.raises(EdgetuneError, match="needs a task head"):
        step_cost(S, RULES["mempepita"], head="none")


def test_a_decoder_scoring_few_positions_forms_few_logits():
    from edgetune.cost import shape_from_config
    from edgetune.models.registry import SPECS

    shape = shape_from_config(SPECS["smollm2-135m"].config().to_dict(), "smollm2-135m")
    full = step_cost(shape, RULES["backprop"], 2, 64)
    few = step_cost(shape, RULES["backprop"], 2, 64, scored=0.125)
    # the head over 49,152 tokens is about a fifth of the forward; 1/8 of its rows remain
    head = 2 * 2 * 64 * shape.d_model * shape.vocab
    assert full.fwd_flops - few.fwd_flops == pytest.approx(head * 7 / 8, rel=0.05)
    assert few.memory.activations < full.memory.activations
    bert = shape_from_config(SPECS["minilm-l6"].config().to_dict(), "minilm-l6")
    assert (
        step_cost(bert, RULES["backprop"], 2, 64, scored=0.125).flops
        == step_cost(bert, RULES["backprop"], 2, 64).flops
    )
    with pytest.raises(EdgetuneError, match="scored share"):
        step_cost(shape, RULES["backprop"], 2, 64, scored=0.0)


def test_a_held_base_counts_its_frozen_matrices_at_the_held_bytes():
    """LoRA over a 4-bit base: every matrix frozen, so the weights fall by exactly the matrices'
    elements times (4 - held bytes); one dequantized chunk joins the working memory."""
    dense = step_cost(SMOL, RULES["lora"], 4, 128)
    held = step_cost(SMOL, RULES["lora"], 4, 128, held_bytes=20 / 32)
    blocks = 30 * (D * 9 * 64 + 2 * D * 3 * 64 + 9 * 64 * D + 3 * D * 1536)
    matrices = V * D + blocks  # the tied head is the embedding table, counted once
    assert dense.memory.weights - held.memory.weights == pytest.approx(matrices * (4 - 20 / 32))
    assert held.memory.workspace > dense.memory.workspace
    assert held.flops == dense.flops


def test_checkpointing_trades_activations_for_a_forward_and_chunking_drops_the_logits():
    base = step_cost(SMOL, RULES["lora"], 4, 128)
    ckpt = step_cost(SMOL, RULES["lora"], 4, 128, checkpointing=True)
    chunk = step_cost(SMOL, RULES["lora"], 4, 128, chunked_loss=True)
    assert ckpt.memory.activations < base.memory.activations / 3
    assert ckpt.memory.peak < base.memory.peak
    blocks_fwd = base.fwd_macs - 4 * 128 * D * V  # every block runs its forward again
    assert ckpt.bwd_macs - base.bwd_macs == pytest.approx(blocks_fwd, rel=0.01)
    logits = 4 * 128 * V * 4
    assert base.memory.peak - chunk.memory.peak > logits  # logits and their log-softmax
    assert chunk.macs > base.macs  # the backward forms each chunk's logits again


def test_a_trained_head_is_not_chunked():
    scheme = UpdateScheme((UnitUpdate("head"),))
    plain = step_cost(SMOL, RULES["sparse"], 4, 128, scheme=scheme)
    asked = step_cost(SMOL, RULES["sparse"], 4, 128, scheme=scheme, chunked_loss=True)
    assert asked.memory.peak == plain.memory.peak


def test_zeroth_order_queries_and_adapters():
    """n queries are 2n forwards at one forward's peak; over adapters only the adapters are
    extra weights and copied perturbed, so the step holds less than full MeZO or LoRA."""
    zo, zo_lora = Rule("zeroth-order", "all"), Rule("zeroth-order", "adapters")
    one, four = step_cost(S, zo, 4, 128), step_cost(S, zo, 4, 128, queries=4)
    assert four.fwd_macs == 4 * one.fwd_macs and (one.passes, four.passes) == (2, 8)
    assert four.memory.peak == one.memory.peak
    units = {"lora_rank": 8, "lora_units": ("q", "k", "v")}
    ada = step_cost(S, zo_lora, 4, 128, queries=2, **units)
    bp_lora = step_cost(S, RULES["lora"], 4, 128, **units)
    assert ada.trained_params == bp_lora.trained_params == 12 * 3 * 8 * (768 + 768)
    assert (
        ada.memory.weights == bp_lora.memory.weights == one.memory.weights + 4 * ada.trained_params
    )
    assert ada.fwd_macs == 2 * 2 * bp_lora.fwd_macs and ada.bwd_macs == 0
    assert _step_bytes(ada) < _step_bytes(one) < _step_bytes(bp_lora)
    with pytest.raises(EdgetuneError, match="query"):
        step_cost(S, zo, 4, 128, queries=0)


def test_forward_mode_queries_tangents_and_adapters():
    """Forward-mode over all parameters: a forward and its backward's MACs a query, one
    query's peak whatever the count, the tangents a copy of the trained tensors and each live
    activation twice (more than MeZO holds, less than backprop's saved activations and
    optimizer state); over adapters the tangents shrink to the adapters'."""
    fm, fm_lora = Rule("forward-mode", "all"), Rule("forward-mode", "adapters")
    one, three = step_cost(S, fm, 4, 128), step_cost(S, fm, 4, 128, queries=3)
    bp, zo = step_cost(S, RULES["backprop"], 4, 128), step_cost(S, RULES["mezo"], 4, 128)
    assert one.fwd_macs == bp.macs and three.fwd_macs == 3 * one.fwd_macs
    assert one.bwd_macs == 0 and (one.passes, three.passes) == (2, 6)
    assert three.memory.peak == one.memory.peak
    assert one.memory.gradients == 4 * one.trained_params == 4 * bp.trained_params
    assert one.memory.optimizer == one.memory.activations == 0
    assert zo.memory.peak < one.memory.peak < bp.memory.peak
    units = {"lora_rank": 8, "lora_units": ("q", "k", "v")}
    ada = step_cost(S, fm_lora, 4, 128, **units)
    assert ada.trained_params == step_cost(S, RULES["lora"], 4, 128, **units).trained_params
    assert ada.memory.gradients == 4 * ada.trained_params
    # from the first adapted block up every activation carries a tangent, as over all
    assert ada.memory.workspace == one.memory.workspace and ada.fwd_macs < one.fwd_macs
    assert ada.memory.peak - ada.memory.weights < one.memory.peak - one.memory.weights
    with pytest.raises(EdgetuneError, match="query"):
        step_cost(S, fm, 4, 128, queries=0)
