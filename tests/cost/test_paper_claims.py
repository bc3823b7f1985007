"""The seed paper's published claims (Pau & Aymone 2024) come out of the cost model.

Two accountings are checked. `edgetune.cost.paper` follows the paper's own block formulas and
reproduces its numbers. `step_cost` is edgetune's autograd-faithful model: with the paper's
softmax-Jacobian convention it reproduces the compute claim; with PyTorch's real softmax
backward (the default) the compute saving of PEPITA disappears, which docs/cost-model.md states.
"""

import pytest
from rules import RULES

from edgetune.cost import paper
from edgetune.cost.device import load_device, roofline
from edgetune.cost.methods import Precision, step_cost
from edgetune.cost.shapes import shape_from_config


def _shape(name):
    from edgetune.models.registry import get_spec

    return shape_from_config(get_spec(name).config().to_dict(), name)


@pytest.mark.parametrize("p", [paper.DISTILBERT, paper.GPT3_SMALL], ids=["distilbert", "gpt3"])
def test_paper_accounting_reproduces_published_claims(p):
    c = paper.macs(p, 2048)
    saving = 1 - c["pepita"] / c["backprop"]
    assert 0.30 <= saving <= 0.51  # "30-50 % fewer operations" at long context
    for m in (32, 512, 2048):
        c = paper.macs(p, m)
        assert c["mempepita"] / c["pepita"] == pytest.approx(4 / 3, abs=0.03)  # "one third more"
        a = paper.activations(p, m)
        assert 0.50 <= 1 - a["mempepita"] / a["backprop"] <= 0.94  # "50-94 % less"


def test_paper_accounting_128mb_fit():
    """Paper's figure 6: 1 byte per number, n_ctx = 1024, batch 1: only MEMPEPITA fits
    DistilBERT in MTIA v1's 128 MB (the paper's MB are 1e6 bytes)."""
    a, w = paper.activations(paper.DISTILBERT, 1024), paper.params(paper.DISTILBERT)
    assert w + a["backprop"] > 128e6
    assert w + a["pepita"] > 128e6
    assert w + a["mempepita"] <= 128e6


@pytest.mark.parametrize("name", ["distilbert", "gpt3-small"])
def test_edgetune_model_compute_claims(name):
    s = _shape(name)
    long = {m: step_cost(s, RULES[m], 1, 2048, softmax_jacobian=True)
            for m in ("backprop", "pepita")}  # fmt: skip
    saving = 1 - long["pepita"].macs / long["backprop"].macs
    assert 0.30 <= saving <= 0.60  # paper's convention: 53 % (DistilBERT), 55 % (GPT-3 Small)
    real = {m: step_cost(s, RULES[m], 1, 2048) for m in ("backprop", "pepita", "mempepita")}
    # autograd softmax backward: PEPITA is not cheaper (error projection F e costs M V d)
    assert real["pepita"].macs / real["backprop"].macs == pytest.approx(1.0, abs=0.03)
    for seq in (32, 128, 512, 2048):
        c = {m: step_cost(s, RULES[m], 1, seq) for m in ("pepita", "mempepita")}
        assert c["mempepita"].macs / c["pepita"].macs == pytest.approx(4 / 3, abs=0.04)


@pytest.mark.parametrize("name", ["distilbert", "gpt3-small"])
def test_edgetune_model_mempepita_activation_claim(name):
    """Stored activations (kept across the step): MEMPEPITA keeps only the modulation F e,
    more than the claimed 50-94 % below backprop's saved activations. Its working set is not:
    edgetune's runtime runs the modulated pass on the concatenated batch (2B) and its
    output-layer update holds three copies of the 2B-row logits, so with an LM head
    activations + workspace fall by less than half against backprop without dropout (the
    paper's accounting has none; docs/cost-model.md). Backprop in train mode also keeps each
    dropout's noise and output, which only widens the gap."""
    s = _shape(name)
    for seq in (32, 128, 512, 1024, 2048):
        bp, mp = (step_cost(s, RULES[m], 1, seq) for m in ("backprop", "mempepita"))
        no_dropout = step_cost(s, RULES["backprop"], 1, seq, train_mode="off")
        assert 1 - mp.memory.activations / bp.memory.activations > 0.94
        peak = lambda c: c.memory.activations + c.memory.workspace  # noqa: E731
        assert 0.0 < 1 - peak(mp) / peak(no_dropout) < 0.60
        assert peak(bp) > peak(no_dropout)


def test_edgetune_model_only_mempepita_fits_128mb():
    """Assumptions (stated in docs/cost-model.md): int8 weights, activations and updates (the
    paper's 1 byte per number), batch 1, n_ctx 1024, SGD without momentum, a 2-label
    classifier head, local updates applied in place one linear at a time."""
    s, mtia = _shape("distilbert"), load_device("mtia-v1")
    fits = {}
    for m in ("backprop", "pepita", "mempepita"):
        c = step_cost(s, RULES[m], 1, 1024, head="classifier", precision=Precision.uniform("int8"),
                      optimizer="sgd")  # fmt: skip
        fits[m] = roofline(c, mtia, "int8").fits
    assert fits == {"backprop": False, "pepita": False, "mempepita": True}
