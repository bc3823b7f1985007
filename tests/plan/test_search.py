"""Budgeted search on hand-made gain tables, checked against brute force; budgets; YAML."""

import itertools

import pytest
import yaml

from edgetune.errors import EdgetuneError
from edgetune.plan.planner import Plan, training_budget
from edgetune.plan.search import (
    Cost,
    Costs,
    Item,
    builtin_schemes,
    knapsack,
    search,
    shortlist,
)
from edgetune.plan.table import Candidate, ContributionTable, Entry, scheme_of, summed_gain
from edgetune.scheme import UpdateScheme
from edgetune.units import parse_bytes

# Prepare: 3 blocks; depth costs grow downwards; items with integer costs
DEPTH = {0: 9, 1: 5, 2: 2}
BASE = 1
ITEMS = [
    Item(Candidate("qkv", 2, 1.0), 5.0, 4),
    Item(Candidate("qkv", 2, 0.5), 3.5, 2),
    Item(Candidate("ffn1", 2, 1.0), 4.0, 5),
    Item(Candidate("bias", 2, 0.0), 1.0, 0),
    Item(Candidate("qkv", 1, 1.0), 6.0, 4),
    Item(Candidate("ffn1", 1, 0.25), 2.5, 1),
    Item(Candidate("bias", 1, 0.0), 0.5, 0),
    Item(Candidate("ffn2", 0, 1.0), 9.0, 6),
    Item(Candidate("bias", 0, 0.0), 0.2, 0),
]


# step times (forwards), in whole tenths so that a limit's cells are exact
DEPTH_TIME = {0: 0.3, 1: 0.2, 2: 0.1}
TIMES = [0.1, 0.1, 0.2, 0.0, 0.1, 0.1, 0.0, 0.2, 0.0]
TIMED = [Item(it.candidate, it.gain, it.cost, t) for it, t in zip(ITEMS, TIMES, strict=True)]


def brute_force(budget: float, items=ITEMS, max_step: float = float("inf")) -> float:
    best = 0.0
    for n in range(1, len(items) + 1):
        for subset in itertools.combinations(items, n):
            groups = [it.group for it in subset]
            if len(set(groups)) < len(groups):  # one fraction per unit and block
                continue
            l0 = min(it.candidate.layer for it in subset)
            cost = BASE + DEPTH[l0] + sum(it.cost for it in subset)
            step = 1.0 + DEPTH_TIME[l0] + sum(it.time for it in subset)
            if cost <= budget and step <= max_step + 1e-9:
                best = max(best, sum(it.gain for it in subset))
    return best


@pytest.mark.parametrize("budget", [3, 4, 6, 8, 10, 12, 15, 19, 25, 40])
def test_knapsack_matches_brute_force(budget):
    # Execute
    per_depth = knapsack(ITEMS, Costs(BASE, DEPTH), budget, resolution=1000)
    # Assert: the best over the lowest blocks is the best summed gain, and every choice fits
    assert max((g for _, g in per_depth.values()), default=0.0) == pytest.approx(
        brute_force(budget)
    )
    for l0, (chosen, gain) in per_depth.items():
        assert sum(it.gain for it in chosen) == pytest.approx(gain)
        assert min(it.candidate.layer for it in chosen) >= l0
        assert BASE + DEPTH[l0] + sum(it.cost for it in chosen) <= budget
        assert len({it.group for it in chosen}) == len(chosen)


@pytest.mark.parametrize("budget", [6, 10, 15, 25, 40])
@pytest.mark.parametrize("max_step", [1.1, 1.2, 1.3, 1.5])
def test_knapsack_with_a_step_limit_matches_brute_force(budget, max_step):
    # Execute: memory and step time, each within its limit (time cells of 0.01 forwards)
    costs = Costs(BASE, DEPTH, 1.0, DEPTH_TIME)
    cells = round((max_step - 1.0) * 100)
    per_depth = knapsack(TIMED, costs, budget, resolution=1000, max_step=max_step,
                         time_resolution=cells)  # fmt: skip
    # Assert: the best summed gain under both limits, and every choice within both
    best = max((g for _, g in per_depth.values()), default=0.0)
    assert best == pytest.approx(brute_force(budget, TIMED, max_step))
    for l0, (chosen, _) in per_depth.items():
        assert BASE + DEPTH[l0] + sum(it.cost for it in chosen) <= budget
        assert 1.0 + DEPTH_TIME[l0] + sum(it.time for it in chosen) <= max_step + 1e-9
    # the limit binds: without it, more gain fits where the budget allows
    if budget >= 25:
        assert brute_force(budget) > brute_force(budget, TIMED, 1.3)


def _table(gains: dict[str, float], head: bool = True) -> ContributionTable:
    t = ContributionTable("m", "d", "classify", 2, head, True, 2.0, 1.5, 4)
    t.entries = {k: Entry(k, g, True) for k, g in gains.items()}
    return t


GAINS = {"qkv@1x1": 0.3, "ffn1@1x1": 0.2, "bias@1x0": 0.05, "qkv@0x1": 0.4, "bias@0x0": 0.01}
WEIGHT = {"qkv": 30.0, "ffn1": 40.0}
STEP = {"qkv": 0.1, "ffn1": 0.2}


def _exact(scheme: UpdateScheme) -> Cost:
    """A toy exact forecast: memory head 10, depth 20 per block opened, weights by unit; step
    1 forward, 0.1 per block opened, weights' gradients by unit."""
    low = scheme.lowest_layer()
    opened = 0 if low is None else 2 - low
    memory = 10.0 + 20.0 * opened
    memory += sum(WEIGHT.get(u.unit, 0.0) * u.weight_fraction for u in scheme.updates)
    step = 1.0 + 0.1 * opened + sum(STEP.get(u.unit, 0.0) * u.weight_fraction
                                    for u in scheme.updates)  # fmt: skip
    return Cost(memory, step)


def test_search_picks_the_best_scheme_under_the_exact_cost():
    best = search(_table(GAINS), _exact, budget=100.0)
    scheme = best.scheme
    # qkv@1 + ffn1@1 (+ bias@1): 10 + 20 + 70 = 100 beats qkv@0: 10 + 40 + 30 = 80, gain 0.41
    assert best.gain == pytest.approx(0.55) and best.cost.memory == 100.0
    assert _exact(scheme).memory <= 100.0
    assert {(u.unit, u.layer, u.weight_fraction) for u in scheme.updates if u.weight_fraction} >= {
        ("qkv", 1, 1.0),
        ("ffn1", 1, 1.0),
    }
    assert scheme.trains_head()


def test_budget_too_small_says_what_the_smallest_scheme_needs():
    with pytest.raises(EdgetuneError, match="too small.*needs 10 B"):
        search(_table(GAINS), _exact, budget=5.0)


def test_budget_for_the_head_alone_plans_the_head():
    best = search(_table(GAINS), _exact, budget=12.0)
    assert [u.unit for u in best.scheme.updates] == ["head"] and best.gain == 0.0


@pytest.mark.parametrize(
    "text,value",
    [("64MB", 64e6), ("1.5GB", 1.5e9), ("512MiB", 512 * 2**20), ("2e8", 2e8), (1000, 1000.0)],
)
def test_parse_bytes(text, value):
    assert parse_bytes(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["lots", "-5MB", "0", "12 parsecs"])
def test_parse_bytes_rejects(text):
    with pytest.raises(EdgetuneError):
        parse_bytes(text)


def test_plan_yaml_round_trip_with_forecast(tmp_path):
    scheme = scheme_of([Candidate("qkv", 1, 0.25), Candidate("bias", 1, 0.0)], True, True)
    plan = Plan(scheme, 0.42, 64e6, {"training_bytes": 3.2e7, "peak_bytes": 1.2e8})
    path = tmp_path / "plan.yaml"
    plan.save(path)
    assert UpdateScheme.load(path) == scheme
    raw = yaml.safe_load(path.read_text())
    assert raw["forecast"]["training_bytes"] == 3.2e7
    assert raw["predicted_gain"] == 0.42 and raw["budget_bytes"] == 64e6


def test_scheme_of_merges_a_unit_named_twice():
    s = scheme_of([Candidate("qkv", 0, 0.5), Candidate("bias", 0, 0.0)], False, True)
    qkv = [u for u in s.updates if u.unit == "qkv"]
    assert len(qkv) == 1 and qkv[0].weight_fraction == 0.5 and qkv[0].bias
    # a bias-free family (Llama) trains the block's norm scales for "bias"
    (norm,) = scheme_of([Candidate("bias", 3, 0.0)], False, False).updates
    assert (norm.unit, norm.layer, norm.weight_fraction) == ("norm", 3, 1.0)


def test_the_search_room_is_the_budget_or_device_memory_minus_the_weights():
    """`--budget` means the step's peak, weights included, in plan as in finetune."""
    from edgetune.cost import load_device

    memory = load_device("rpi4").memory.value
    assert training_budget(None, "rpi4", 1e8) == memory - 1e8
    assert training_budget("1GB", None, 1e8) == 9e8
    with pytest.raises(EdgetuneError, match="exactly one"):
        training_budget("64MB", "rpi4", 1e8)
    with pytest.raises(EdgetuneError, match="do not fit"):
        training_budget(None, "stm32h7", 1e8)
    with pytest.raises(EdgetuneError, match="do not fit the budget"):
        training_budget("64MB", None, 1e8)


def test_search_without_a_head_plans_blocks_only():
    # Prepare: a language model (no head in the base)
    table = _table(GAINS, head=False)
    # Execute
    best = search(table, _exact, budget=60.0)
    # Assert: qkv@1 (10 + 20 + 30 = 60 with the toy head cost) and no head
    assert not best.scheme.trains_head() and best.gain == pytest.approx(0.35)
    with pytest.raises(EdgetuneError, match="cheapest block"):
        search(table, _exact, budget=20.0)


def test_summed_gain_takes_each_weight_at_the_largest_analysed_fraction_below_it():
    # Prepare: qkv of block 1 analysed at 1 and 1/4
    table = _table({**GAINS, "qkv@1x0.25": 0.1})
    scheme = UpdateScheme.from_dict(
        {"updates": [{"unit": "qkv", "layer": 1, "weight_fraction": 0.5, "bias": False}]}
    )
    # Execute / Assert: 1/2 counts as the analysed 1/4; no bias trained, no bias gain
    assert summed_gain(table, scheme) == pytest.approx(0.1)
    # the whole block 1 (last-1): qkv, ffn1 and the biases; attn_out/ffn2 have no entries
    assert summed_gain(table, UpdateScheme.builtin("last-1", 2)) == pytest.approx(0.55)
    # a knapsack scheme comes back to its summed gain: qkv with its own bias is not `bias`
    picked = [Candidate("qkv", 1, 1.0), Candidate("ffn1", 1, 1.0)]
    assert summed_gain(table, scheme_of(picked, True, True)) == pytest.approx(0.5)
    picked.append(Candidate("bias", 1, 0.0))
    assert summed_gain(table, scheme_of(picked, True, True)) == pytest.approx(0.55)


def _exact_peak(scheme: UpdateScheme) -> Cost:
    """A toy sub-additive cost: the weights' share is the largest one, not their sum."""
    low = scheme.lowest_layer()
    cost = 10.0 + (0 if low is None else 20.0 * (2 - low))
    return Cost(cost + max(
        [WEIGHT.get(u.unit, 0.0) * u.weight_fraction for u in scheme.updates], default=0.0
    ))  # fmt: skip


def test_a_builtin_that_fits_exactly_beats_the_additive_knapsack():
    # Additively qkv@1 + ffn1@1 cost 10 + 20 + 30 + 40 = 100 > 80; exactly, last-1 costs
    # 10 + 20 + max(30, 40) = 70. The knapsack's best within 80 is qkv@0 + biases (0.46).
    options = shortlist(_table(GAINS), _exact_peak, budget=80.0)
    names = [o.scheme.name for o in options]
    assert "last-1" in names and "last-2" not in names  # last-2 (both blocks) costs 90
    best = search(_table(GAINS), _exact_peak, budget=80.0)
    assert best.scheme.name == "last-1" and best.gain == pytest.approx(0.55)
    assert all(o.cost.memory <= 80.0 for o in options)
    assert [o.gain for o in options] == sorted((o.gain for o in options), reverse=True)


def test_a_judge_picks_the_best_measured_of_the_best_scheme_per_depth():
    # Prepare: a judge that measures the shallower scheme better
    judged: list[list[UpdateScheme]] = []

    def judge(schemes):
        judged.append(schemes)
        return [float(s.lowest_layer()) for s in schemes]

    options = shortlist(_table(GAINS), _exact, budget=100.0)
    # Execute
    best = search(_table(GAINS), _exact, budget=100.0, judge=judge, top=3, halving=False)
    # Assert: one contender per lowest block (the best summed one there), judged once; the
    # judge's favourite wins and carries its measured gain
    assert len(judged) == 1 and [s.lowest_layer() for s in judged[0]] == [0, 1]
    for s in judged[0]:
        first = next(o for o in options if o.scheme.lowest_layer() == s.lowest_layer())
        assert s == first.scheme
    assert best.scheme.lowest_layer() == 1 and best.measured == 1.0
    # top=1 judges the deepest only
    judged.clear()
    search(_table(GAINS), _exact, budget=100.0, judge=judge, top=1, halving=False)
    assert [s.lowest_layer() for s in judged[0]] == [0]


def test_a_budget_also_weighs_the_plan_of_its_half():
    # Prepare: a judge that measures the cheapest scheme best (summed gains say the opposite)
    judged: list[UpdateScheme] = []

    def judge(schemes):
        judged.extend(schemes)
        return [-_exact(s).memory for s in schemes]

    budgets = [30.0, 60.0, 120.0, 240.0]
    # Execute
    alone = [search(_table(GAINS), _exact, b, judge=judge, halving=False) for b in budgets]
    judged.clear()
    halved = [search(_table(GAINS), _exact, b, judge=judge) for b in budgets]
    # Assert: judged alone, a larger budget can plan worse than a smaller one; weighing its
    # half's plan (recursively), it never does; every plan fits its own budget
    assert alone[-1].measured < alone[0].measured
    assert [o.measured for o in halved] == sorted(o.measured for o in halved)
    for b, o in zip(budgets, halved, strict=True):
        assert _exact(o.scheme).memory <= b
    # no scheme is judged twice within one search
    judged.clear()
    search(_table(GAINS), _exact, 240.0, judge=judge)
    keys = [tuple(s.updates) for s in judged]
    assert len(keys) == len(set(keys))


def test_a_step_limit_keeps_every_option_within_it():
    # Prepare: memory for everything; the best by summed gain (both blocks) steps at 1.7
    free = search(_table(GAINS), _exact, budget=200.0)
    assert free.scheme.lowest_layer() == 0 and free.cost.step > 1.3
    # Execute
    options = shortlist(_table(GAINS), _exact, budget=200.0, max_step=1.3)
    best = search(_table(GAINS), _exact, budget=200.0, max_step=1.3)
    # Assert: every option and the plan step within 1.3 forwards (exact forecast); the plan
    # is the best summed gain among them: qkv@1 + biases (1 + 0.1 + 0.1), not ffn1@1 (1.3,
    # gain 0.2 + 0.05 < 0.35)
    assert options and all(_exact(o.scheme).step <= 1.3 + 1e-9 for o in options)
    assert best.scheme.lowest_layer() == 1 and best.gain == pytest.approx(0.35)
    assert best.cost.step == pytest.approx(1.2)
    # a limit below the head alone's step (1.0) names the quickest scheme
    with pytest.raises(EdgetuneError, match="too tight.*1.00x"):
        search(_table(GAINS), _exact, budget=200.0, max_step=0.9)


def test_builtins_leave_the_head_and_bias_only_where_the_model_has_none():
    with_head = builtin_schemes(2, head=True, has_bias=True)
    assert {s.name for s in with_head} >= {"bias-only", "last-2", "last-1@0.125", "qkv-ffn1-2"}
    assert all(s.trains_head() for s in with_head)
    lm = builtin_schemes(2, head=False, has_bias=False)
    assert not any(s.trains_head() for s in lm) and "bias-only" not in {s.name for s in lm}


def test_builtins_never_open_backward_below_the_lowest_measured_block():
    # Prepare: only block 1 was measured; block 0's entries are interpolated (gain 0)
    table = _table(GAINS)
    for key in ("qkv@0x1", "bias@0x0"):
        table.entries[key] = Entry(key, 0.0, False)
    # Execute
    options = shortlist(table, _exact, budget=500.0)
    # Assert: last-2, bias-only etc. (backward into block 0) are not weighed
    assert options and all(o.scheme.lowest_layer() == 1 for o in options)
    assert "last-1" in {o.scheme.name for o in options}
