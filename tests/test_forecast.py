"""The one forecast: the cost model of a run as `finetune`, `plan`, `cost`, `bench` and the
federated MFU ask it, the budget it enforces and the shapes it resolves."""

from dataclasses import replace

import pytest
from rules import RULES

from edgetune.config import load_config
from edgetune.cost import NAMED_SHAPES, shape_from_config, step_cost
from edgetune.errors import EdgetuneError
from edgetune.forecast import Overhead, StepInputs, model_shape, predict
from edgetune.measure.guard import MemoryGuard
from edgetune.pipeline import Session, load
from edgetune.train import finetune


def _cfg(model, data, out, *extra):
    return load_config(None, [f"model.name={model}", f"data.name={data}", "data.task=classify",
                              "data.seq_len=16", "train.batch_size=8", "train.max_steps=2",
                              f"out={out}", *extra])  # fmt: skip


def test_forecast_is_the_cost_model_of_this_run(tiny_bert, topics_jsonl, tmp_path):
    session = load(_cfg(tiny_bert, topics_jsonl, tmp_path / "r", "train.device=rpi4"))
    fc = session.forecast()
    shape = shape_from_config(session.model.config.to_dict())
    want = step_cost(shape, RULES["backprop"], batch=8, seq=16, head="classifier", n_labels=4)
    assert fc.cost.memory.peak == want.memory.peak and fc.cost.flops == want.flops
    assert fc.latency_s is not None and fc.latency_s > 0
    assert "rpi4" in fc.line() and "peak" in fc.line()
    # the whole process: this machine's measured runtime and what the load kept, then the step
    assert fc.overhead.runtime > 100 * 2**20 and fc.overhead.loaded > 0
    assert fc.peak == fc.overhead.total + fc.cost.memory.peak
    assert "process peak" in fc.line() and "runtime" in fc.line()  # it says what it includes
    assert f"for {session.total_steps} steps" in fc.line()  # and the run's total time


def test_a_run_over_budget_is_refused_naming_what_fits(
    tiny_bert, topics_jsonl, tmp_path, monkeypatch
):
    """The budget is the process's: the runtime and what the load kept (fixed here, as a
    machine measures them) and the step."""
    around = Overhead(300 * 2**20, 10 * 2**20)
    monkeypatch.setattr(Session, "overhead", lambda self: around)
    # the memory guard measures the real process, which this fixed overhead is not
    monkeypatch.setattr(MemoryGuard, "for_run", lambda *a: None)
    step = load(_cfg(tiny_bert, topics_jsonl, tmp_path / "r")).forecast().cost.memory.peak
    budget = int(around.total + step * 0.9)
    with pytest.raises(EdgetuneError, match=r"more than .*what would fit: .*mezo") as err:
        finetune(_cfg(tiny_bert, topics_jsonl, tmp_path / "r", f"train.budget={budget}"))
    assert "backprop" in str(err.value) and "runtime 300MiB" in str(err.value)
    assert not (tmp_path / "r").exists()
    # the same run within budget trains
    budget = int(around.total + step * 1.1)
    finetune(_cfg(tiny_bert, topics_jsonl, tmp_path / "r", f"train.budget={budget}"))
    assert (tmp_path / "r/metrics.json").is_file()


def test_sparse_with_a_budget_and_no_scheme_plans_one_on_the_loaded_model(
    tiny_bert, topics_jsonl, tmp_path, monkeypatch, fixed_overhead
):
    """One load, one forecast: the plan is made on the model the run trains, its scheme is
    kept in the run's config.yaml (no file elsewhere to lose), and the plan's forecast is the
    run's."""
    import edgetune.train as train_module
    from edgetune.plan import planner

    monkeypatch.setenv("EDGETUNE_CACHE", str(tmp_path / "cache"))
    loads, plans = [], []
    real_load, real_plan = train_module.load, planner.make_plan

    def counted_load(cfg, *a, **kw):
        loads.append(cfg)
        return real_load(cfg, *a, **kw)

    def kept_plan(*a, **kw):
        plans.append(real_plan(*a, **kw))
        return plans[-1]

    monkeypatch.setattr(train_module, "load", counted_load)
    monkeypatch.setattr(planner, "make_plan", kept_plan)
    out = tmp_path / "r"
    cfg = _cfg(tiny_bert, topics_jsonl, out, "train.method=sparse", "train.budget=1GB")
    result = finetune(cfg)
    assert len(loads) == 1  # model and data loaded once
    assert cfg.method.scheme is None  # the caller's config is not changed
    scheme = load_config(out / "config.yaml").method.scheme
    plan, _table = plans[0]
    assert scheme.updates == plan.scheme.updates and scheme.updates
    run = load(load_config(out / "config.yaml")).forecast()
    assert run.cost.memory.peak == plan.forecast["peak_bytes"]
    assert run.cost.flops == plan.forecast["flops"]
    assert result.metrics["train"]["steps"] == 2


def test_lora_forecast_follows_its_targets_and_rank():
    inputs = StepInputs(model_shape("minilm-l6"), batch=8, seq=64, head="classifier")
    qkv = predict(inputs, "lora", {"target_modules": ["qkv"]})
    ffn = predict(inputs, "lora", {"target_modules": ["qkv", "ffn1", "ffn2"]})
    by_name = predict(inputs, "lora", {"target_modules": ["query", "value"]})  # PEFT suffixes
    rank = predict(inputs, "lora", {"target_modules": ["qkv"], "r": 16})
    assert ffn.trained_params > qkv.trained_params > by_name.trained_params
    assert rank.trained_params > qkv.trained_params
    adapters = qkv.trained_params - by_name.trained_params  # the key projections' adapters
    assert adapters == 6 * 8 * (384 + 384)  # 6 blocks, rank 8, A (8, 384) and B (384, 8)
    with pytest.raises(EdgetuneError, match="cannot place LoRA target 'nope'"):
        predict(inputs, "lora", {"target_modules": ["nope"]})
    # Longformer's cost-model family reads BERT's layout for module names
    longformer = StepInputs(model_shape("longformer-base"), batch=1, seq=64)
    named = predict(longformer, "lora", {"target_modules": ["query", "value"]})
    assert named.trained_params == 12 * 2 * 8 * (768 + 768)


def test_an_encoder_decoder_is_forecast_at_the_target_length_the_data_uses():
    """`data.target_len` (default seq_len / 4, at least 8) is what tokenization cuts targets
    to and what the forecast costs, for finetune and the planner alike."""
    cfg = load_config(None, ["data.seq_len=256"])
    assert cfg.data.target_tokens == 64
    assert load_config(None, ["data.seq_len=16"]).data.target_tokens == 8
    assert load_config(None, ["data.target_len=20"]).data.target_tokens == 20
    t5 = StepInputs(model_shape("t5-small"), batch=1, seq=256, tgt_seq=64)
    longer = predict(replace(t5, tgt_seq=128), "backprop")
    assert predict(t5, "backprop").fwd_macs < longer.fwd_macs


def test_model_shape_resolves_registry_names_paper_shapes_and_folders(tiny_bert):
    assert model_shape("alexatm-20b") is NAMED_SHAPES["alexatm-20b"]
    assert model_shape("smollm2-135m").n_layers == 30
    assert model_shape(str(tiny_bert)).d_model == 32
    with pytest.raises(EdgetuneError, match="unknown model"):
        model_shape("no-such-model-or-folder")


def test_session_inputs_measure_the_scored_share(tiny_llama, tmp_path):
    """A causal LM's chat data scores only the answers: the forecast's LM head follows."""
    import json

    rows = [{"text": f"question {i} " * 4, "target": f"answer {i}"} for i in range(40)]
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(
        None,
        {
            "model.name": str(tiny_llama),
            "data.name": str(path),
            "data.task": "chat",
            "data.seq_len": 64,
            "train.batch_size": 4,
        },
    )
    inputs = load(cfg).step_inputs()
    assert 0 < inputs.scored < 0.5


def test_a_refusal_names_a_lower_precision_base_that_would_fit():
    inputs = StepInputs(model_shape("smollm2-135m"), batch=1, seq=64)
    need = predict(inputs, "lora").memory.peak
    held = predict(replace(inputs, held_bytes=18 / 32), "lora").memory.peak
    budget = (need + held) / 2
    fc_inputs = replace(inputs)
    with pytest.raises(EdgetuneError, match=r"this run with model.weights=q4_0") as err:
        from edgetune.forecast import check_budget

        check_budget(predict(fc_inputs, "lora"), fc_inputs, budget, None, run=("lora", None))
    assert "q8_0" in str(err.value) or held < budget


def test_the_session_forecast_counts_what_the_loaded_model_holds(tiny_llama, tmp_path):
    common = ["model.name=" + str(tiny_llama), "data.name=brown", "train.method=lora",
              "data.seq_len=32", "train.batch_size=2", "data.eval_samples=2"]  # fmt: skip
    dense = load(load_config(None, common)).forecast().cost.memory.weights
    held = load(load_config(None, [*common, "model.weights=q4_1"])).forecast().cost.memory
    assert held.weights < dense / 3
