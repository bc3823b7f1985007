"""The step-time model: every MAC the cost model counts is in one of the step's kernels, and
the kernel tables are read as measured (interpolated between points, scaled past the last)."""

import json
import math
from dataclasses import replace

import pytest
from rules import RULES

from edgetune.cost.device import load_device, roofline, step_time
from edgetune.cost.graph import Tape, Train
from edgetune.cost.latency import MAPPED_DEFAULT, MAPPED_LEAN, Kernels, Work
from edgetune.cost.methods import Rule, step_cost
from edgetune.cost.shapes import ModelShape
from edgetune.errors import EdgetuneError
from edgetune.scheme import UnitUpdate, UpdateScheme

ENC = ModelShape("enc", "bert", "encoder", 1000, 64, 2, 4, 4, 16, 128, n_positions=64,
                 type_vocab=2, pooler=True)  # fmt: skip
DEC = ModelShape("dec", "llama", "decoder", 1000, 64, 2, 4, 2, 16, 128, gated=True, act="silu",
                 norm="rmsnorm", bias=False, tied=True, emb_norm=False, final_norm=True,
                 kv_cache=True, rope_dim=16)  # fmt: skip
SCHEME = UpdateScheme((UnitUpdate("qkv", 1, 0.5, True), UnitUpdate("ffn2", 1, 1.0, True)), "top")


@pytest.mark.parametrize("shape", [ENC, DEC], ids=["encoder", "decoder"])
@pytest.mark.parametrize(
    "method", ["backprop", "lora", "sparse", "mezo", "pepita", "mempepita", "forward_grad"]
)
def test_every_mac_is_in_a_kernel(shape, method):
    head = "classifier" if shape is ENC else "lm"
    c = step_cost(shape, RULES[method], 2, 16, head=head, n_labels=3, scheme=SCHEME)
    if RULES[method].update == "forward-mode":  # the tangent products are in its forward MACs
        assert c.work.macs == pytest.approx(c.fwd_macs)
    else:
        assert c.work.macs == pytest.approx(c.macs)
    assert c.work.streams and (c.work.adamw or c.work.normals or RULES[method].update != "backward")


@pytest.mark.parametrize("method", ["backprop", "lora", "sparse"])
def test_checkpointing_adds_the_recomputed_forward_and_queries_scale(method):
    plain = step_cost(DEC, RULES[method], 2, 16, scheme=SCHEME)
    again = step_cost(DEC, RULES[method], 2, 16, scheme=SCHEME, checkpointing=True)
    assert again.work.macs == pytest.approx(again.macs)  # a block's frozen products too
    assert again.work.macs > plain.work.macs
    one, four = (step_cost(DEC, RULES["mezo"], 2, 16, queries=q) for q in (1, 4))
    assert four.work.macs == pytest.approx(4 * one.work.macs)
    assert sum(four.work.normals.values()) == 4 * sum(one.work.normals.values())


def test_a_linear_records_its_products_and_their_gradients():
    tape = Tape(4)
    x = tape.new(8 * 32, rg=True)
    tape.linear(x, 8, 32, 16, Train(1.0, True, lora_rank=2), True)
    e = tape.events[-1]
    assert e.gemms == ((1, 8, 32, 16), (1, 8, 32, 2), (1, 8, 2, 16))
    assert (1, 8, 16, 32) in e.dx_gemms and (1, 16, 8, 32) in e.dw_gemms  # dX = dY W, dW


def _tables(per_flop: float = 1e-9, fixed: float = 1e-6) -> dict:
    """Synthetic tables: a product costs `fixed` + 2 m k n `per_flop` seconds."""
    sides = [16, 64, 256]
    gemm = [[[fixed + 2 * m * k * n * per_flop for n in sides] for k in sides] for m in sides]
    return {"sides": sides, "gemm": {"fp32": gemm}, "stream": [[1e3, 1e-6], [1e6, 1e-4]],
            "normal": [[1e3, 2e-6], [1e6, 2e-3]], "adamw": [[1e3, 3e-6], [1e6, 3e-3]],
            "bernoulli": [[1e3, 4e-6], [1e6, 4e-3]]}  # fmt: skip


def test_kernel_tables_interpolate_and_scale():
    k = Kernels.from_json(_tables(), "fp32")
    assert k is not None and Kernels.from_json(_tables(), "bf16") is None
    assert k.gemm_s(64, 64, 64) == pytest.approx(1e-6 + 2 * 64**3 * 1e-9)  # a grid point
    between = k.gemm_s(128, 64, 64)
    assert k.gemm_s(64, 64, 64) < between < k.gemm_s(256, 64, 64)
    assert k.gemm_s(1024, 64, 64) == pytest.approx(4 * k.gemm_s(256, 64, 64))  # past the grid
    assert k.gemm_s(1, 1, 1) == k.gemm_s(16, 16, 16)  # below it: the fixed cost
    w = Work()
    w.gemms[(3, 16, 64, 64)] += 2  # a batched product: its rows stacked
    w.streams[1e3] += 1
    w.normals[1e6] += 1
    w.adamw[1e4] += 1
    adamw = math.exp(math.log(3e-6) + (math.log(3e-3) - math.log(3e-6)) / 3)  # 1e4: a third
    assert k.seconds(w) == pytest.approx(2 * k.gemm_s(48, 64, 64) + 1e-6 + 2e-3 + adamw)


def test_named_element_wise_kernels_use_their_tables_and_the_memory_bounds_every_one():
    raw = {**_tables(), "ops": {"gelu": [[1e3, 5e-6], [1e6, 5e-3]]}}
    k = Kernels.from_json(raw, "fp32")
    assert k is not None
    w = Work()
    w.ops[("gelu", 1e6, 3e6)] += 1  # timed by its own table, by its output's bytes
    w.ops[("softmax", 1e6, 1e6)] += 2  # no table: the stream of its bytes
    assert k.seconds(w) == pytest.approx(5e-3 + 2 * 1e-4)
    slow = Kernels.from_json(raw, "fp32", bandwidth=1e8)  # memory slower than the tables
    assert slow is not None and slow.seconds(w) == pytest.approx(3e6 / 1e8 + 2 * 1e6 / 1e8)
    w.streams[1e3] += 1
    assert slow.seconds(w) == pytest.approx(0.05 + max(1e-6, 1e3 / 1e8))


@pytest.mark.parametrize("shape", [ENC, DEC], ids=["encoder", "decoder"])
def test_the_tape_names_its_element_wise_kernels_and_the_embeddings_gradient_fill(shape):
    head = "classifier" if shape is ENC else "lm"
    full = step_cost(shape, Rule("backward", "all"), 2, 16, head=head, n_labels=3)
    names = {name for name, _, _ in full.work.ops}
    kinds = {"softmax", "log_softmax"} | (  # the pooler's tanh
        {"gelu", "layernorm", "tanh"} if shape is ENC else {"silu", "rmsnorm"}
    )
    assert names == kinds | {k + ".backward" for k in kinds}
    table = 4 * shape.vocab * shape.d_model  # the fp32 gradient of the word embeddings
    lora = step_cost(shape, Rule("backward", "adapters"), 2, 16, head=head, n_labels=3)
    assert full.work.streams[table] >= 1 and lora.work.streams[table] == 0


def test_a_held_base_forms_each_frozen_matrix_in_each_forward_and_backward():
    rule = Rule("backward", "adapters")
    dense = step_cost(DEC, rule, 2, 16, head="lm")
    held = step_cost(DEC, rule, 2, 16, head="lm", held_bytes=20 / 32)
    assert not dense.work.dequant and held.work == dense.work + Work(dequant=held.work.dequant)
    q_width = DEC.n_heads * DEC.head_dim
    formed = held.work.dequant
    # the blocks' query and output projections (square here): formed in the forward and again
    # for their input gradients
    assert q_width == DEC.d_model and formed[(20 / 32, q_width**2)] == 2 * 2 * DEC.n_layers
    assert formed[(20 / 32, DEC.vocab * DEC.d_model)] == 2  # the tied LM head
    zo = step_cost(DEC, Rule("zeroth-order", "adapters"), 2, 16, head="lm", held_bytes=20 / 32)
    assert zo.work.dequant[(20 / 32, DEC.vocab * DEC.d_model)] == 2  # two forwards, no backward
    raw = {**_tables(), "dequant": {"0.5625": [[1e3, 1e-5], [1e6, 1e-2]],
                                    "1.0625": [[1e3, 1e-6], [1e6, 1e-3]]}}  # fmt: skip
    k = Kernels.from_json(raw, "fp32")
    assert k is not None
    w = Work()
    w.dequant[(20 / 32, 1e6)] += 1  # q4_1's bytes: the nearest table is q4_0's
    assert k.seconds(w) == pytest.approx(1e-2)


def test_buffers_the_allocator_maps_afresh_cost_their_first_touch():
    from edgetune.forecast import StepInputs, predict

    raw = {**_tables(), "first_touch": 1e9}
    k = Kernels.from_json(raw, "fp32")
    assert k is not None
    w = Work(mapped_from=1e6)
    w.allocs[2e6] += 3  # mapped afresh each time
    w.allocs[1e5] += 7  # served from memory the process holds
    assert k.seconds(w) == pytest.approx(3 * 2e6 / 1e9)
    assert Kernels.from_json(_tables(), "fp32").seconds(w) == 0.0  # not measured: not counted
    # the forecast says which buffers: 32 MiB and more by default, 128 KiB with the lean one
    inputs = StepInputs(DEC, 2, 16)
    plain, lean = predict(inputs, "backprop"), predict(replace(inputs, lean_allocator=True),
                                                       "backprop")  # fmt: skip
    assert plain.work.allocs == lean.work.allocs and plain.work.allocs
    assert (plain.work.mapped_from, lean.work.mapped_from) == (MAPPED_DEFAULT, MAPPED_LEAN)
    table = 4 * DEC.vocab * DEC.d_model  # the tied embeddings' gradient, formed each step
    assert plain.work.allocs[table] >= 1


def test_malformed_tables_are_one_clear_error():
    raw = _tables()
    raw["gemm"]["fp32"] = raw["gemm"]["fp32"][:2]
    with pytest.raises(EdgetuneError, match="bench hardware"):
        Kernels.from_json(raw, "fp32")
    with pytest.raises(EdgetuneError, match="bench hardware"):
        Kernels.from_json({"gemm": {"fp32": []}}, "fp32")


def test_this_machine_times_kernels_once_measured_and_profiles_keep_the_roofline(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("EDGETUNE_CACHE", str(tmp_path))
    c = step_cost(ENC, Rule("backward", "all"), 2, 16, head="classifier", n_labels=3)
    path = tmp_path / "this-machine.json"
    path.write_text(json.dumps({"when": "t", "peak_flops": {"fp32": 1e11}, "bandwidth": 2e10}))
    dev = load_device("this-machine")
    assert step_time(c, dev) == roofline(c, dev).latency_s  # no tables yet
    path.write_text(json.dumps({"when": "t", "peak_flops": {"fp32": 1e11}, "bandwidth": 2e10,
                                "kernels": _tables()}))  # fmt: skip
    dev = load_device("this-machine")
    timed = Kernels.from_json(_tables(), "fp32", 2e10)
    assert timed is not None and step_time(c, dev) == pytest.approx(timed.seconds(c.work))
    assert step_time(c, dev, "bf16") is None  # neither tables nor a peak for bf16
    rpi = load_device("rpi4")
    assert step_time(c, rpi) == roofline(c, rpi).latency_s
