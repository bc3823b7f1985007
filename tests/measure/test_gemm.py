"""The GEMM/bandwidth measurement writes a this-machine profile the cost model can read."""

import json

from edgetune.cost.device import load_device


def test_measure_this_machine(tmp_path, monkeypatch):
    from edgetune.measure.gemm import measure_this_machine

    monkeypatch.setenv("EDGETUNE_CACHE", str(tmp_path))
    data = measure_this_machine(n=64, repeats=3)
    saved = json.loads((tmp_path / "this-machine.json").read_text())
    assert saved["peak_flops"]["fp32"] == data["peak_flops"]["fp32"] > 1e6
    assert saved["bandwidth"] > 1e6
    d = load_device("this-machine")
    assert d.peak("fp32") == data["peak_flops"]["fp32"]
