"""`plan_blocks`: the most top blocks by backprop whose forecast step fits a budget (`hybrid`)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from edgetune.errors import EdgetuneError
from edgetune.forecast import StepInputs, model_shape, predict
from edgetune.methods.options import HybridOptions
from edgetune.plan.planner import plan_blocks

INPUTS = StepInputs(model_shape("minilm-l6"), batch=16, seq=64, head="classifier", n_labels=8)


def peak(k: int) -> float:
    return predict(INPUTS, "hybrid", HybridOptions(backprop_blocks=k)).memory.peak


def test_the_most_blocks_that_fit():
    # Prepare: a budget between the peaks of 3 and 4 top blocks
    peaks = [peak(k) for k in range(7)]
    assert peaks == sorted(peaks)  # each block on top adds to the step
    budget = (peaks[3] + peaks[4]) / 2
    # Execute
    k, cost = plan_blocks(INPUTS, "hybrid", {}, budget)
    # Assert
    assert k == 3 and cost.memory.peak == peaks[3]
    assert plan_blocks(INPUTS, "hybrid", {}, peaks[6])[0] == 6
    assert plan_blocks(INPUTS, "hybrid", {"zo_trainable": "lora"}, peaks[0] * 10)[0] == 6


def test_a_budget_below_no_block_is_refused():
    with pytest.raises(EdgetuneError, match="even with no block by backprop"):
        plan_blocks(INPUTS, "hybrid", {}, peak(0) - 1)
    with pytest.raises(EdgetuneError, match="no count of backprop blocks"):
        plan_blocks(INPUTS, "sparse", {}, 1e9)


def test_the_scheme_sets_the_boundary():
    options = HybridOptions(scheme="qkv-ffn1-2")
    assert options.boundary(6) == 4
    assert replace(options, backprop_blocks=3).boundary(6) == 3
    assert HybridOptions().boundary(6) == 5
    with pytest.raises(EdgetuneError, match="below the boundary"):
        replace(options, backprop_blocks=1).top_scheme(6)
