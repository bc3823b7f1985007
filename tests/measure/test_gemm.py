"""The GEMM/bandwidth measurement and the kernel tables write a this-machine profile the cost
model can read."""

import json

from edgetune.cost.device import load_device, roofline, step_time
from edgetune.cost.latency import ELEMENTWISE
from edgetune.cost.methods import Rule, step_cost
from edgetune.cost.shapes import ModelShape


def test_measure_this_machine(tmp_path, monkeypatch):
    from edgetune.measure.gemm import measure_this_machine

    monkeypatch.setenv("EDGETUNE_CACHE", str(tmp_path))
    data = measure_this_machine(n=64, repeats=3, sides=(16, 64), sizes=2)
    saved = json.loads((tmp_path / "this-machine.json").read_text())
    assert saved["peak_flops"]["fp32"] == data["peak_flops"]["fp32"] > 1e6
    assert saved["bandwidth"] > 1e6
    d = load_device("this-machine")
    assert d.peak("fp32") == data["peak_flops"]["fp32"]
    tables = d.timed("fp32")
    assert tables is not None and tables.sides == (16, 64)
    assert tables.gemm_s(16, 16, 16) > 0 and len(tables.stream) == len(tables.adamw) == 2
    assert tables.bandwidth == saved["bandwidth"] and tables.first_touch > 1e6
    assert sorted(tables.dequant) == [18 / 32, 20 / 32, 1.0, 34 / 32, 2.0]  # q4_0 .. bf16
    for name in ELEMENTWISE:  # every kernel the tape names, forward and backward, timed
        for key in (name, name + ".backward"):
            assert len(tables.ops[key]) == 2 and all(s > 0 for _, s in tables.ops[key])
    shape = ModelShape("enc", "bert", "encoder", 100, 32, 1, 2, 2, 16, 64, n_positions=32)
    c = step_cost(shape, Rule("backward", "all"), 2, 8, head="classifier")
    assert step_time(c, d) == tables.seconds(c.work) != roofline(c, d).latency_s
