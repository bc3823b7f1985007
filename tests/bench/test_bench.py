"""The measurement plumbing of `edgetune bench` on a tiny BERT classifier (seconds).

Workers run in-process here (their fresh-interpreter wrapper is tested once, on the cheapest
worker); the CLI test swaps `run` for the in-process call so it stays fast.
"""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

import edgetune.bench.methods as bench
import edgetune.bench.tables as tables
from edgetune.bench.methods import Setup, Variant
from edgetune.bench.worker import run_worker
from edgetune.commands.bench import bench_app
from edgetune.errors import EdgetuneError


@pytest.fixture
def setup(tiny_bert, topics_jsonl) -> Setup:
    return Setup(str(tiny_bert), str(topics_jsonl), task="classify", batch=4, seq=16, steps=3,
                 eval_samples=8, rounds=2, threads=1)  # fmt: skip


def _in_process(kind, setup, v=None):
    spec = {"kind": kind, "setup": setup.__dict__, "variant": v and v.__dict__}
    return json.loads(json.dumps(bench.worker(spec)))  # the JSON round trip of the real path


@pytest.mark.parametrize(
    "variant",
    [
        Variant("backprop", "backprop", 1e-3),
        Variant("sparse last-1 in-place", "sparse", 1e-3, {"scheme": "last-1", "in_place": True}),
        Variant("mezo", "mezo", 1e-5),
        Variant("mempepita", "mempepita", 1e-2),
    ],
    ids=lambda v: v.label,
)
def test_step_worker_returns_sane_fields(setup, variant):
    r = bench.worker_step(setup, variant)
    assert r["step_s"] > 0 and r["forward_eval_s"] > 0
    assert r["step_over_forward"] > 0
    assert r["peak_rss_mb"] >= r["base_rss_mb"] > 0
    assert r["flops_per_step"] > 0
    assert 0 < r["trainable_params"] < 1e7
    assert r["predicted"]["flops"] > 0 and r["predicted"]["peak_mb"] > 0
    if variant.method in ("backprop", "sparse"):
        assert r["saved_bytes"] > 0  # autograd kept activations for the backward
    else:
        assert r["saved_bytes"] < 1e6  # no backward pass through the model


def test_flops_per_step_orders_the_methods(setup):
    """A full backprop step counts more FLOPs than a sparse step on the last block only."""
    bp = bench.worker_step(setup, Variant("backprop", "backprop", 1e-3))
    sp = bench.worker_step(setup, Variant("sparse", "sparse", 1e-3, {"scheme": "last-1"}))
    assert sp["flops_per_step"] < bp["flops_per_step"]
    assert sp["trainable_params"] < bp["trainable_params"]


def test_inference_worker_in_a_fresh_interpreter(setup):
    r = bench.run("inference", setup)
    assert "error" not in r, r
    assert r["peak_rss_mb"] >= r["base_rss_mb"] > 0
    assert r["forward_eval_s"] > 0 and r["forward_train_s"] > 0


def test_a_failing_worker_reports_an_error(setup):
    bad = Setup(**{**setup.__dict__, "model": "no-such-model-anywhere"})
    r = bench.run("step", bad, Variant("backprop", "backprop", 1e-3))
    assert "error" in r and r["error"]


def test_a_script_function_runs_as_a_worker(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(
        "import os\n\ndef work(spec):\n"
        "    return {'twice': 2 * spec['x'], 'threads': os.environ['OMP_NUM_THREADS']}\n"
        "\nif __name__ == '__main__':\n    raise SystemExit('the body must not run as main')\n"
    )
    assert run_worker(f"{script}:work", {"x": 21}, threads=3) == {"twice": 42, "threads": "3"}
    assert "error" in run_worker(f"{script}:missing", {})


def test_compare_summarizes_and_writes_outputs(setup, monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "run", _in_process)
    variants = [Variant("backprop", "backprop", 1e-3), Variant("mezo", "mezo", 1e-5)]
    summary = bench.compare(setup, variants, accuracy={"mezo"}, log=lambda m: None)
    bp, mz = summary["rows"]
    # in one process the peak RSS only grows, so backprop may not rise above "inference"
    assert bp["above_inference_vs_backprop"] in (None, pytest.approx(1.0))
    assert bp["step_vs_backprop"] == pytest.approx(1.0)
    assert "accuracy_run" not in bp
    assert 0.0 <= mz["accuracy_run"]["eval"]["accuracy"] <= 1.0
    table = tables.methods_table(summary)
    assert "| mezo |" in table and "| backprop |" in table
    paths = tables.write_outputs(summary, tmp_path, "m", table)
    assert [p.suffix for p in paths] == [".json", ".md", ".png"]
    assert all(p.stat().st_size > 0 for p in paths)
    hw = bench.hardware(summary, {"peak_flops": {"fp32": 1e10}, "threads": 1, "when": "now",
                                  "gemm_n": 64, "repeats": 1, "bandwidth": 1e9})  # fmt: skip
    assert all(r["mfu"] > 0 and r["tokens_per_s"] > 0 for r in hw["rows"])
    assert "MFU" in tables.hardware_table(hw)


def test_sweep_chooses_the_learning_rate_on_validation(setup, monkeypatch):
    def fake(kind, _setup, v):  # validation peaks at lr 1e-3, test elsewhere
        assert kind == "accuracy"
        return {"validation": {"accuracy": 1.0 - abs(v.lr - 1e-3)}, "eval": {"accuracy": v.lr}}

    monkeypatch.setattr(bench, "run", fake)
    result = bench.sweep(setup, [Variant("bp", "backprop", 1e-3)], [0.1, 1, 10], log=lambda m: 0)
    (row,) = result["rows"]
    assert [t["lr"] for t in row["tried"]] == [1e-4, 1e-3, 1e-2]
    assert row["chosen"]["lr"] == 1e-3 and row["chosen"]["eval"]["accuracy"] == 1e-3
    assert "| bp | 0.0001 (" in tables.sweep_table(result)


def test_accuracy_worker_reports_validation_and_test(setup, monkeypatch):
    monkeypatch.setattr(bench, "run", _in_process)
    (row,) = bench.sweep(setup, [Variant("mezo", "mezo", 1e-5)], [1], log=lambda m: 0)["rows"]
    assert set(row["chosen"]["validation"]) >= {"accuracy", "macro_f1"}
    assert 0.0 <= row["chosen"]["eval"]["accuracy"] <= 1.0


def test_a_variant_runs_its_own_steps_and_scores_before(setup, monkeypatch):
    """A variant's `steps` replace the setup's in its accuracy run (and its rows); with
    `eval_before` the run also scores the untrained model on test."""
    v = Variant("bp", "backprop", 1e-3, steps=2, eval_before=True)
    cfg = bench.run_config(setup, v, "accuracy")
    assert cfg.train.max_steps == 2 and cfg.train.eval_every == 2 and cfg.train.eval_before
    assert cfg.data.train_samples == 2 * setup.batch
    r = bench.worker_accuracy(setup, v)
    assert r["steps"] == 2 and r["train_s"] > 0 and r["train_peak_rss_mb"] > 0
    assert 0.0 <= r["test_before"]["accuracy"] <= 1.0
    assert "test_before" not in bench.worker_accuracy(setup, Variant("bp", "backprop", 1e-3))


def _lean_summary(metric: str, values: dict[str, tuple[str, float, float, float]]) -> dict:
    """A comparison summary: label -> (method, step peak MiB, train s, test metric)."""
    rows = []
    for label, (method, peak, train_s, value) in values.items():
        run = {
            "eval": {metric: value},
            "validation": {metric: value},
            "train_s": train_s,
            "steps": 10,
            "train_peak_rss_mb": peak,
        }
        rows.append({"label": label, "method": method, "options": {}, "lr": 1e-3,
                     "peak_rss_mb": peak, "peak_over_inference": peak / 500.0,
                     "accuracy_run": run})  # fmt: skip
    before = 0.2 if metric == "accuracy" else 60.0
    rows[0]["accuracy_run"]["test_before"] = {metric: before}
    return {"setup": {"model": "m", "data": "d", "batch": 4, "seq": 16, "threads": 1,
                      "eval_samples": 8},
            "inference": {"peak_rss_mb": 500.0}, "rows": rows}  # fmt: skip


def test_lean_verdicts_judge_memory_time_metric_and_hybrids(tmp_path):
    from edgetune.report.figures import plot_lean

    summary = _lean_summary("accuracy", {
        "bp": ("backprop", 1500.0, 10.0, 0.95),
        "head": ("sparse", 560.0, 20.0, 0.90),     # meets: 1.12x, 2x time, 90 %
        "slow": ("mezo", 520.0, 200.0, 0.91),       # 20x the reference's time
        "big": ("sparse", 700.0, 20.0, 0.93),       # 1.4x inference
        "weak": ("mezo", 520.0, 20.0, 0.50),        # below 88 %
        "hyb": ("hybrid", 565.0, 30.0, 0.92),       # beats head, slow and weak (at <= 1.03x)
        "hyb2": ("hybrid", 710.0, 30.0, 0.92),      # big (0.93) is at its memory and better
    })  # fmt: skip
    targets = bench.LeanTargets(peak_over_inference=1.15, wall_over_reference=10, accuracy=88.0)
    v = bench.lean_verdicts(summary, targets)
    assert {k for k, r in v["rows"].items() if r["meets"]} == {"head", "hyb"}
    assert v["goal_metric"] == 88.0
    assert v["rows"]["slow"]["wall_over_reference"] == pytest.approx(20.0)
    assert v["hybrids"]["hyb"] == {"singles": ["head", "slow", "weak"], "beats_all": True}
    assert v["hybrids"]["hyb2"]["beats_all"] is False and "big" in v["hybrids"]["hyb2"]["singles"]
    table = tables.lean_table(summary, v)
    assert (
        "| head | 0.001 | 10 | 20 | 2.00 | 560 | 1.120 | 560 | 90.00 % | 90.00 % | **yes** |"
        in table
    )
    assert "`hyb` against" in table and "**beats all of them**" in table
    plot_lean(summary, v, tmp_path / "lean.png")
    assert (tmp_path / "lean.png").stat().st_size > 0


def test_lean_verdicts_share_of_a_perplexity_gain(tmp_path):
    """The LM target: the share of the reference's log-perplexity gain (60 -> 50 ppl)."""
    from edgetune.report.figures import plot_lean

    summary = _lean_summary("perplexity", {
        "lora": ("lora", 800.0, 10.0, 50.0),
        "zo": ("mezo", 510.0, 50.0, 60.0 * (50.0 / 60.0) ** 0.6),  # 60 % of the gain
        "zo2": ("mezo", 510.0, 50.0, 58.0),                        # 19 %
    })  # fmt: skip
    targets = bench.LeanTargets(peak_over_inference=1.05, wall_over_reference=10,
                                gain_fraction=0.5)  # fmt: skip
    v = bench.lean_verdicts(summary, targets)
    assert v["rows"]["zo"]["gain_fraction"] == pytest.approx(0.6)
    assert v["goal_metric"] == pytest.approx(60.0 * (50.0 / 60.0) ** 0.5)  # half the gain
    assert v["rows"]["zo"]["meets"] and not v["rows"]["zo2"]["meets"]
    assert "(60% of the gain)" in tables.lean_table(summary, v)
    plot_lean(summary, v, tmp_path / "lean.png")  # with the target's perplexity drawn in
    assert (tmp_path / "lean.png").stat().st_size > 0


def _app() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(bench_app, name="bench")
    return app


def test_cli_bench_methods_and_hardware(setup, monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "run", _in_process)
    monkeypatch.setenv("EDGETUNE_CACHE", str(tmp_path / "cache"))
    common = ["--model", setup.model, "--data", setup.data, "--task", "classify", "--batch", "4",
              "--seq", "16", "--rounds", "1", "--threads", "1", "--out", str(tmp_path)]  # fmt: skip
    runner = CliRunner()
    res = runner.invoke(_app(), ["bench", "methods", *common, "--steps", "2",
                                 "--eval-samples", "8", "--only", "backprop,mezo"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert (tmp_path / "methods-minilm.png").is_file()
    assert "| mezo |" in res.stdout
    res = runner.invoke(_app(), ["bench", "hardware", *common, "--gemm-n", "64",
                                 "--kernel-sides", "16,64", "--kernel-sizes", "2",
                                 "--only", "sparse qkv-ffn1-2"])  # fmt: skip
    assert res.exit_code == 0, res.output
    hw = json.loads((tmp_path / "hardware.json").read_text())
    assert hw["gemm"]["peak_flops"]["fp32"] > 0
    assert (tmp_path / "cache" / "this-machine.json").is_file()  # the profile's numbers
    assert hw["rows"][0]["predicted_step_s"] > 0  # its timed kernels now know this machine


def test_cli_rejects_bad_input(setup):
    runner = CliRunner()
    res = runner.invoke(_app(), ["bench", "methods", "--only", "nope"])
    assert isinstance(res.exception, EdgetuneError) and "unknown variant" in str(res.exception)
    res = runner.invoke(_app(), ["bench", "methods", "--preset", "huge"])
    assert isinstance(res.exception, EdgetuneError)
    res = runner.invoke(_app(), ["bench", "methods", "--batch", "0"])
    assert isinstance(res.exception, EdgetuneError)
