"""Contribution analysis on a tiny BERT: a gain per candidate, cached, resumed, plotted."""

import json

import pytest

import edgetune.plan.analysis as contribution
from edgetune.config import load_config
from edgetune.pipeline import load
from edgetune.plan.analysis import analyze, measure_schemes
from edgetune.plan.table import AnalysisSettings, Candidate, scheme_of
from edgetune.report.figures import plot_gains
from edgetune.scheme import UpdateScheme, resolve_scheme


def _config(tiny_bert, topics_jsonl, *extra):
    return load_config(None, [f"model.name={tiny_bert}", f"data.name={topics_jsonl}",
                              "data.task=classify", "data.seq_len=16", "train.method=sparse",
                              *extra])  # fmt: skip


@pytest.fixture
def cfg(tiny_bert, topics_jsonl):
    """A loaded session of the tiny classifier (the analysis runs on its model)."""
    return load(_config(tiny_bert, topics_jsonl))


SETTINGS = AnalysisSettings(
    steps=2, batch_size=4, eval_examples=8, fractions=(1.0, 0.5), fraction_layers=[1]
)


def _count_runs(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = contribution.train_and_eval

    def counting(model, scheme, *args, **kw):
        calls.append(scheme.name)
        return real(model, scheme, *args, **kw)

    monkeypatch.setattr(contribution, "train_and_eval", counting)
    return calls


def test_gain_per_candidate_then_resume_from_cache(cfg, tmp_path, monkeypatch):
    calls = _count_runs(monkeypatch)
    # Execute: a full analysis
    table = analyze(cfg, SETTINGS, cache=tmp_path)
    # Assert: every unit of both blocks at both fractions has a gain; fraction 1/2 of block 0
    # is filled from block 1's ratio, not measured
    units = ("qkv", "attn_out", "ffn1", "ffn2")
    keys = {Candidate(u, i, f).key for u in units for i in (0, 1) for f in (1.0, 0.5)}
    keys |= {Candidate("bias", i, 0.0).key for i in (0, 1)}
    assert set(table.entries) == keys
    assert table.head and table.n_layers == 2 and table.n_labels == 4
    assert not table.entries["qkv@0x0.5"].measured and table.entries["qkv@1x0.5"].measured
    assert len(calls) == 1 + 8 + 4 + 2  # base, fraction 1, block 1's halves, biases
    for e in table.entries.values():
        assert isinstance(e.gain, float)
    # Execute again: everything comes from the cache
    calls.clear()
    again = analyze(cfg, SETTINGS, cache=tmp_path)
    assert calls == [] and again.entries == table.entries
    # Execute after an interruption: only the missing candidates run
    path = next(tmp_path.glob("contribution-*.json"))
    raw = json.loads(path.read_text())
    raw["entries"] = {k: v for k, v in raw["entries"].items() if not k.startswith("ffn2@0")}
    path.write_text(json.dumps(raw))
    analyze(cfg, SETTINGS, cache=tmp_path)
    assert calls == ["ffn2@0x1"]
    # the plot
    plot_gains(table, tmp_path / "gains.png")
    assert (tmp_path / "gains.png").stat().st_size > 1000


def test_unmeasured_layers_are_interpolated(cfg, tmp_path):
    # below the lowest measured block nothing is assumed to help
    s = AnalysisSettings(steps=1, batch_size=4, eval_examples=4, fractions=(1.0,), layers=[1])
    table = analyze(cfg, s, cache=tmp_path)
    assert not table.entries["ffn1@0x1"].measured and table.entries["ffn1@0x1"].gain == 0.0
    # above the highest, the nearest measured block's gains
    s = AnalysisSettings(steps=1, batch_size=4, eval_examples=4, fractions=(1.0,), layers=[0])
    table = analyze(cfg, s, cache=tmp_path / "other")
    assert not table.entries["ffn1@1x1"].measured
    assert table.entries["ffn1@1x1"].gain == table.entries["ffn1@0x1"].gain


def test_a_wider_analysis_reuses_what_a_narrower_one_measured(cfg, tmp_path, monkeypatch):
    narrow = AnalysisSettings(steps=1, batch_size=4, eval_examples=4, fractions=(1.0,), layers=[1])
    first = analyze(cfg, narrow, cache=tmp_path)
    calls = _count_runs(monkeypatch)
    wide = AnalysisSettings(steps=1, batch_size=4, eval_examples=4, fractions=(1.0,))
    table = analyze(cfg, wide, cache=tmp_path)
    # only block 0's five candidates ran; block 1 kept its measurements
    assert sorted(calls) == sorted(c.key for c in _block(0))
    assert table.entries["qkv@1x1"] == first.entries["qkv@1x1"]
    assert table.entries["qkv@0x1"].measured


def _block(layer: int) -> list[Candidate]:
    return [Candidate(u, layer, 1.0) for u in ("qkv", "attn_out", "ffn1", "ffn2")] + [
        Candidate("bias", layer, 0.0)
    ]


def test_whole_schemes_are_measured_under_the_same_protocol_and_cached(cfg, tmp_path, monkeypatch):
    s = AnalysisSettings(steps=2, batch_size=4, eval_examples=8, fractions=(1.0,), layers=[1])
    table = analyze(cfg, s, cache=tmp_path)
    single = scheme_of([Candidate("qkv", 1, 1.0)], True, True, "alone")
    last = UpdateScheme.builtin("last-2", 2)
    calls = _count_runs(monkeypatch)
    # Execute
    gains = measure_schemes(cfg, [single, last], s, cache=tmp_path)
    # Assert: a one-candidate scheme gets exactly its analysed gain (seeded runs, same
    # batches); the whole model is something else; both are cached
    assert len(calls) == 2
    assert gains[0] == pytest.approx(table.entries["qkv@1x1"].gain, abs=1e-6)
    assert gains[1] != pytest.approx(gains[0])
    calls.clear()
    assert measure_schemes(cfg, [last, single], s, cache=tmp_path) == gains[::-1]
    assert calls == []  # all cached
    monkeypatch.undo()
    assert len(analyze(cfg, s, cache=tmp_path).schemes) == 2


def test_the_seed_of_the_new_head_is_part_of_the_cache_key(tiny_bert, topics_jsonl, tmp_path):
    """Another seed draws another classifier head: another analysis, not a cached one."""
    s = AnalysisSettings(steps=1, batch_size=4, eval_examples=4, fractions=(1.0,), layers=[1])
    analyze(load(_config(tiny_bert, topics_jsonl)), s, cache=tmp_path)
    analyze(load(_config(tiny_bert, topics_jsonl, "train.seed=1")), s, cache=tmp_path)
    assert len(list(tmp_path.glob("contribution-*.json"))) == 2


def test_random_init_is_part_of_the_cache_key():
    """Random weights and the pretrained ones are different models with different gains."""
    from edgetune.plan.analysis import _fingerprint

    class Loaded:  # what the key reads of a session: its config
        def __init__(self, *extra):
            self.cfg = load_config(None, ["model.name=minilm-l6", *extra])

    s = AnalysisSettings()
    assert _fingerprint(Loaded(), s) != _fingerprint(Loaded("model.random_init=true"), s)
    assert _fingerprint(Loaded(), s) == _fingerprint(Loaded(), s)


def test_the_analysis_time_is_expected_from_the_cost_model_on_this_machine(
    cfg, tmp_path, monkeypatch
):
    """Unknown before this machine's peak is measured; then each candidate's short run at the
    cost model's step time, so more steps take longer."""
    from dataclasses import replace

    from edgetune.plan.analysis import expected_time

    monkeypatch.setenv("EDGETUNE_CACHE", str(tmp_path))
    schemes = [resolve_scheme("last-1", 2), resolve_scheme("last-2", 2)]
    assert expected_time(cfg, SETTINGS, schemes) is None
    (tmp_path / "this-machine.json").write_text(json.dumps(
        {"when": "now", "peak_flops": {"fp32": 1e10}, "bandwidth": 1e10}))  # fmt: skip
    two = expected_time(cfg, SETTINGS, schemes)
    four = expected_time(cfg, replace(SETTINGS, steps=4), schemes)
    assert two is not None and four is not None and 0 < two < four
    assert expected_time(cfg, SETTINGS, schemes[:1]) < two
