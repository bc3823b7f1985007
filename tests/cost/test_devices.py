"""Device profiles load, every number has a source, and the roofline and fit logic hold."""

import json

import pytest

from edgetune.cost.device import (
    EFFICIENCY,
    bytes_moved,
    device_names,
    load_device,
    not_measured_note,
    roofline,
)
from edgetune.cost.methods import Memory, StepCost
from edgetune.errors import EdgetuneError

EXPECTED = {"stm32h7", "rpi4", "rpi5", "jetson-orin-nano", "jetson-agx-orin", "apple-m1",
            "snapdragon-8-gen2", "mtia-v1", "a100", "h100", "this-machine"}  # fmt: skip


def test_all_profiles_load_with_sources():
    assert set(device_names()) == EXPECTED
    for name in EXPECTED - {"this-machine"}:
        d = load_device(name)
        assert d.memory and d.memory.value > 0 and d.memory.source
        assert d.peak_flops, name
        for v in [d.memory, d.bandwidth, d.power, *d.peak_flops.values()]:
            if v is not None:
                assert v.value > 0 and len(v.source) > 10, name


def test_datasheet_numbers():
    assert load_device("a100").peak("bf16") == 312e12
    assert load_device("h100").peak("bf16") == 989e12
    assert load_device("jetson-agx-orin").peak("fp32") == 5.32e12
    assert load_device("mtia-v1").memory.value == 128 * 2**20
    assert load_device("stm32h7").memory.value == 2**20


def test_unknown_device_lists_known_ones():
    with pytest.raises(EdgetuneError, match=r"unknown device 'rpi9'.*rpi4.*stm32h7"):
        load_device("rpi9")


def test_this_machine_unmeasured_then_measured(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGETUNE_CACHE", str(tmp_path))
    d = load_device("this-machine")
    assert d.peak_flops == {} and d.memory.value > 0
    assert "not measured yet" in not_measured_note(d)
    (tmp_path / "this-machine.json").write_text(
        json.dumps({"when": "t", "peak_flops": {"fp32": 1e11}, "bandwidth": 2e10})
    )
    d = load_device("this-machine")
    assert d.peak("fp32") == 1e11 and d.bandwidth.value == 2e10
    assert "measured" in d.peak_flops["fp32"].source and not_measured_note(d) is None
    (tmp_path / "this-machine.json").write_text("{not json")
    with pytest.raises(EdgetuneError, match="corrupt"):
        load_device("this-machine")


def _cost(macs, weights, acts, method="backprop"):
    mem = Memory(weights, weights, 2 * weights, acts, 0.0)
    return StepCost(method, "m", 1, 1, 0, macs, 0.0, 0.0, 0.0, 0.0, mem, 1, 1.0)


def test_roofline_compute_and_memory_bound():
    rpi4 = load_device("rpi4")  # 96 GFLOP/s fp32, 12.8 GB/s
    c = _cost(macs=96e9, weights=1e6, acts=1e6)  # 192 GFLOP, ~10 MB moved
    r = roofline(c, rpi4)
    assert r.compute_s == pytest.approx(192e9 / (96e9 * EFFICIENCY))
    assert r.bound == "compute" and r.latency_s == r.compute_s
    c = _cost(macs=1e6, weights=1e9, acts=0.0)  # tiny compute, 1 GB of weights
    r = roofline(c, rpi4)
    moved = bytes_moved(c, 2)
    assert moved == 2e9 + 2e9 + 4e9
    assert r.bound == "memory" and r.latency_s == pytest.approx(moved / (12.8e9 * EFFICIENCY))


def test_fit_and_unknown_peak():
    stm = load_device("stm32h7")  # 1 MiB
    # weights + gradients + 2 Adam states = 2^19 bytes, plus activations around 2^19
    assert roofline(_cost(1, 2**17, 2**19 - 1), stm).fits is True  # total 1 MiB - 1
    assert roofline(_cost(1, 2**17, 2**19), stm).fits is True  # exactly 1 MiB
    assert roofline(_cost(1, 2**17, 2**19 + 1), stm).fits is False
    r = roofline(_cost(1e9, 1, 1), load_device("rpi4"), "bf16")  # no published bf16 peak
    assert r.latency_s is None and r.bound == "unknown"
    with pytest.raises(EdgetuneError, match="unknown dtype"):
        roofline(_cost(1, 1, 1), stm, "fp8")
