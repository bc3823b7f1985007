"""The forecast printed before training and the memory budget it enforces."""

import pytest

from edgetune.config import load_config
from edgetune.cost import shape_from_config, step_cost
from edgetune.errors import EdgetuneError
from edgetune.forecast import forecast_run, parse_bytes
from edgetune.train import finetune, prepare


@pytest.mark.parametrize(
    ("text", "value"),
    [("256MB", 256e6), ("1.5GiB", 1.5 * 2**30), ("64 mib", 64 * 2**20), ("10", 10)],
)
def test_parse_bytes(text, value):
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text", ["", "MB", "-3MB", "12 parsecs", "0GB"])
def test_parse_bytes_refuses_nonsense(text):
    with pytest.raises(EdgetuneError, match="memory"):
        parse_bytes(text)


def _cfg(model, data, out, *extra):
    return load_config(None, [f"model.name={model}", f"data.name={data}", "data.task=classify",
                              "data.seq_len=16", "train.batch_size=8", "train.max_steps=2",
                              f"out={out}", *extra])  # fmt: skip


def test_forecast_is_the_cost_model_of_this_run(tiny_bert, topics_jsonl, tmp_path):
    p = prepare(_cfg(tiny_bert, topics_jsonl, tmp_path / "r"))
    fc = forecast_run(p, budget=None, device="rpi4")
    shape = shape_from_config(p.loaded.model.config.to_dict())
    want = step_cost(shape, "backprop", batch=8, seq=16, head="classifier", n_labels=4)
    assert fc.cost.memory.peak == want.memory.peak and fc.cost.flops == want.flops
    assert fc.latency_s is not None and fc.latency_s > 0
    assert "rpi4" in fc.line() and "peak" in fc.line()


def test_a_run_over_budget_is_refused_naming_what_fits(tiny_bert, topics_jsonl, tmp_path):
    p = prepare(_cfg(tiny_bert, topics_jsonl, tmp_path / "r"))
    need = forecast_run(p, None, None).cost.memory.peak
    with pytest.raises(EdgetuneError, match=r"more than .*what would fit: .*mezo") as err:
        finetune(_cfg(tiny_bert, topics_jsonl, tmp_path / "r", f"train.budget={int(need * 0.9)}"))
    assert "backprop" in str(err.value)
    assert not (tmp_path / "r").exists()
    # the same run within budget trains
    finetune(_cfg(tiny_bert, topics_jsonl, tmp_path / "r", f"train.budget={int(need * 1.1)}"))
    assert (tmp_path / "r/metrics.json").is_file()


def test_sparse_with_a_budget_and_no_scheme_plans_one(
    tiny_bert, topics_jsonl, tmp_path, monkeypatch
):
    monkeypatch.setenv("EDGETUNE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "r"
    finetune(_cfg(tiny_bert, topics_jsonl, out, "train.method=sparse", "train.budget=1GB"))
    from edgetune.config import load_config as load

    scheme = load(out / "config.yaml").method["scheme"]
    assert scheme.startswith(str(tmp_path / "cache" / "plans"))
    from edgetune.plan.scheme import UpdateScheme

    assert UpdateScheme.load(scheme).updates  # a real, non-empty scheme trained this run
