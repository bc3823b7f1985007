"""The training loop: learning, run folder, checkpoints, exact resume, failures."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from edgetune.config import load_config
from edgetune.errors import EdgetuneError
from edgetune.methods import METHODS
from edgetune.train import finetune


def _cfg(model, data, out, *extra):
    return load_config(
        None,
        [
            f"model.name={model}",
            f"data.name={data}",
            "data.task=classify",
            "data.seq_len=16",
            "train.batch_size=8",
            "train.lr=3e-3",
            "train.max_steps=12",
            "train.save_every=4",
            f"out={out}",
            *extra,
        ],
    )


def test_finetune_learns_and_writes_the_run_folder(tiny_bert, topics_jsonl, tmp_path):
    out = tmp_path / "run"
    result = finetune(
        _cfg(tiny_bert, topics_jsonl, out, "train.max_steps=30", "train.eval_before=true")
    )
    m = json.loads((out / "metrics.json").read_text())
    assert m["eval"]["accuracy"] > m["test_before"]["accuracy"] + 0.2
    assert m["train"]["loss_last"] < m["train"]["loss_first"]
    assert m["time"]["step_s_median"] > 0 and m["memory"]["peak_rss_mb"] > 0
    assert result.metrics["eval"] == m["eval"]
    for name in ("config.yaml", "summary.md", "model/config.json", "model/model.safetensors"):
        assert (out / name).is_file(), name
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == [
        "step-000028",
        "step-000030",
    ]
    assert not list(out.rglob("*.tmp")), "temporary files left behind"


def test_validation_runs_every_eval_every_steps_and_after_the_last(
    tiny_bert, topics_jsonl, tmp_path
):
    cfg = _cfg(tiny_bert, topics_jsonl, tmp_path / "run", "train.max_steps=5", "train.eval_every=2")
    history = finetune(cfg).metrics["validation_history"]
    assert [h["step"] for h in history] == [2, 4, 5]
    assert all(0 <= h["accuracy"] <= 1 for h in history)


def test_same_seed_same_weights(tiny_bert, topics_jsonl, tmp_path):
    for name in ("a", "b"):
        finetune(_cfg(tiny_bert, topics_jsonl, tmp_path / name, "train.max_steps=5"))
    a = load_file(tmp_path / "a/model/model.safetensors")
    b = load_file(tmp_path / "b/model/model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


KILLED_RUN = textwrap.dedent(
    """
    import os, signal, sys
    import edgetune.train as train
    from edgetune.config import load_config

    kill_after = int(sys.argv[1])
    saved = train.save_checkpoint

    def save_then_die(run_dir, step, *args, **kwargs):
        path = saved(run_dir, step, *args, **kwargs)
        if step == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)  # a real kill: no cleanup runs
        return path

    train.save_checkpoint = save_then_die
    train.finetune(load_config(sys.argv[2]))
    """
)


def test_resume_after_kill_is_bit_identical(tiny_bert, topics_jsonl, tmp_path):
    # accumulation and an epoch boundary inside the run, dropout on: all must line up
    extra = ["train.grad_accum=2", "train.max_steps=16", "train.threads=1"]  # same math order
    finetune(_cfg(tiny_bert, topics_jsonl, tmp_path / "whole", *extra))

    cfg = _cfg(tiny_bert, topics_jsonl, tmp_path / "killed", *extra)
    cfg_file = tmp_path / "killed.yaml"
    cfg_file.write_text(cfg.to_yaml())
    script = tmp_path / "killed_run.py"
    script.write_text(KILLED_RUN)
    proc = subprocess.run([sys.executable, str(script), "8", str(cfg_file)], capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert not (tmp_path / "killed/metrics.json").exists()

    finetune(cfg, resume=True)
    whole = load_file(tmp_path / "whole/model/model.safetensors")
    resumed = load_file(tmp_path / "killed/model/model.safetensors")
    for key in whole:
        assert torch.equal(whole[key], resumed[key]), key
    a = json.loads((tmp_path / "whole/metrics.json").read_text())["train"]["loss_history"]
    b = json.loads((tmp_path / "killed/metrics.json").read_text())["train"]["loss_history"]
    assert a == b


def test_existing_run_needs_resume(tiny_bert, topics_jsonl, tmp_path):
    finetune(_cfg(tiny_bert, topics_jsonl, tmp_path / "r", "train.max_steps=2"))
    with pytest.raises(EdgetuneError, match="already holds a run"):
        finetune(_cfg(tiny_bert, topics_jsonl, tmp_path / "r", "train.max_steps=2"))


def test_corrupt_and_foreign_checkpoints_are_refused(tiny_bert, topics_jsonl, tmp_path):
    out = tmp_path / "r"
    finetune(_cfg(tiny_bert, topics_jsonl, out, "train.max_steps=4"))
    ckpt = sorted((out / "checkpoints").iterdir())[-1]
    # foreign: made by another method
    meta = json.loads((ckpt / "checkpoint.json").read_text())
    (ckpt / "checkpoint.json").write_text(json.dumps({**meta, "method": "mezo"}))
    with pytest.raises(EdgetuneError, match="made with method='mezo'"):
        finetune(_cfg(tiny_bert, topics_jsonl, out, "train.max_steps=8"), resume=True)
    # corrupt: truncated tensors
    (ckpt / "checkpoint.json").write_text(json.dumps(meta))
    data = (ckpt / "trainable.safetensors").read_bytes()
    (ckpt / "trainable.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(EdgetuneError, match="is corrupt"):
        finetune(_cfg(tiny_bert, topics_jsonl, out, "train.max_steps=8"), resume=True)


def test_non_finite_loss_stops_and_leaves_nothing(tiny_bert, topics_jsonl, tmp_path):
    out = tmp_path / "r"
    cfg = _cfg(
        tiny_bert,
        topics_jsonl,
        out,
        "train.lr=1e30",
        "train.max_grad_norm=null",
        "train.warmup_ratio=0",
        "train.save_every=0",
    )
    with pytest.raises(EdgetuneError, match="loss became"):
        finetune(cfg)
    assert not out.exists()


def test_full_disk_leaves_no_half_written_checkpoint(
    tiny_bert, topics_jsonl, tmp_path, monkeypatch
):
    import edgetune.checkpoint as checkpoint

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", full)
    out = tmp_path / "r"
    with pytest.raises(EdgetuneError, match="disk full"):
        finetune(_cfg(tiny_bert, topics_jsonl, out, "train.max_steps=4"))
    assert not out.exists()


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_runs_in_the_loop_and_saves_a_loadable_model(
    method, tiny_bert, topics_jsonl, tmp_path
):
    from edgetune.cli import app  # noqa: F401  (the CLI imports cleanly with every method)
    from edgetune.data.load import load_data
    from edgetune.data.tasks import tokenize
    from edgetune.evaluate import evaluate
    from edgetune.models.loader import load_model

    out = tmp_path / method
    extra = ["method.scheme=last-1"] if method == "sparse" else []
    cfg = _cfg(tiny_bert, topics_jsonl, out, f"train.method={method}", "train.max_steps=4",
               *extra)  # fmt: skip
    finetune(cfg)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["train"]["steps"] == 4 and saved["run"]["method"] == method
    loaded = load_model(str(out / "model"), "classify", num_labels=4)
    data = tokenize(load_data(cfg.data), loaded.tokenizer, cfg.data, loaded.kind)
    again = evaluate(loaded.model, data, "test", loaded.tokenizer.pad_token_id)
    assert again["accuracy"] == pytest.approx(saved["eval"]["accuracy"])


def test_resume_continues_from_the_run_s_own_config(tiny_bert, topics_jsonl, tmp_path):
    """`finetune --out RUN --resume` needs no flags repeated: a run made at batch 2 x 16 on 24
    rows continues as such; a larger --max-steps is applied and recorded; validation history
    and the test before training survive the resume."""
    from typer.testing import CliRunner

    from edgetune.cli import app

    out = tmp_path / "r"
    args = ["finetune", "--model", str(tiny_bert), "--data", str(topics_jsonl), "--task",
            "classify", "--batch-size", "2", "--seq-len", "16", "--max-steps", "4",
            "data.train_samples=24", "train.eval_every=2", "train.save_every=2",
            "train.eval_before=true", "--out", str(out)]  # fmt: skip
    runner = CliRunner()
    assert runner.invoke(app, args).exit_code == 0
    first = json.loads((out / "metrics.json").read_text())
    config_before = (out / "config.yaml").read_text()
    result = runner.invoke(app, ["finetune", "--out", str(out), "--resume", "--max-steps", "6"])
    assert result.exit_code == 0, result.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["train"]["steps"] == 6 and m["run"]["total_steps"] == 6
    assert [h["step"] for h in m["validation_history"]] == [2, 4, 6]
    assert m["test_before"] == first["test_before"]
    assert m["resumed"] == [{"step": 4, "changes": {"train.max_steps": 6}}]
    cfg = load_config(out / "config.yaml")
    assert (cfg.train.batch_size, cfg.data.seq_len, cfg.data.train_samples) == (2, 16, 24)
    assert cfg.train.max_steps == 6
    after = (out / "config.yaml").read_text()
    assert config_before.replace("max_steps: 4", "max_steps: 6") == after


def test_a_resume_with_other_settings_is_refused_and_changes_nothing(
    tiny_bert, topics_jsonl, tmp_path
):
    out = tmp_path / "r"
    finetune(_cfg(tiny_bert, topics_jsonl, out, "train.max_steps=4"))
    before = (out / "config.yaml").read_text()
    other = _cfg(tiny_bert, topics_jsonl, out, "train.max_steps=6", "train.batch_size=16",
                 "train.lr=1e-4")  # fmt: skip
    with pytest.raises(EdgetuneError, match=r"train.batch_size: 8 in the run, 16 now.*train.lr"):
        finetune(other, resume=True)
    assert (out / "config.yaml").read_text() == before
    with pytest.raises(EdgetuneError, match="nothing to resume"):
        finetune(_cfg(tiny_bert, topics_jsonl, tmp_path / "empty"), resume=True)


def test_the_summary_s_reproduce_line_works_as_written(
    tiny_bert, topics_jsonl, tmp_path, monkeypatch
):
    import re
    import shlex

    from typer.testing import CliRunner

    from edgetune.cli import app

    monkeypatch.chdir(tmp_path)
    finetune(_cfg(tiny_bert, topics_jsonl, "runs/a", "train.max_steps=3"))
    summary = (tmp_path / "runs/a/summary.md").read_text()
    command = re.search(r"reproduce it: `edgetune ([^`]+)`", summary)[1]
    result = CliRunner().invoke(app, shlex.split(command))
    assert result.exit_code == 0, result.output
    first = json.loads((tmp_path / "runs/a/metrics.json").read_text())
    again = json.loads((tmp_path / "runs/a-again/metrics.json").read_text())
    assert again["train"]["loss_history"] == first["train"]["loss_history"]


def test_run_files_follow_the_user_s_umask(tiny_bert, topics_jsonl, tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        out = tmp_path / "r"
        finetune(_cfg(tiny_bert, topics_jsonl, out, "train.max_steps=2"))
    finally:
        os.umask(old)
    for path in (out / "model", out / "checkpoints" / "step-000002"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o755, path
    for path in (out / "metrics.json", out / "config.yaml", out / "model" / "config.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_the_recorded_peak_includes_the_end_of_the_run(
    tiny_bert, topics_jsonl, tmp_path, monkeypatch
):
    """Export and saving happen before the peak is read (and LoRA merges in place)."""
    import edgetune.train as train_module
    import edgetune.trained as trained_module

    order = []
    monkeypatch.setattr(train_module, "peak_rss_mb", lambda: order.append("peak") or 1.0)
    real_dir = trained_module.atomic_dir

    def saving(path):
        order.append(f"save {path.name}")
        return real_dir(path)

    monkeypatch.setattr(trained_module, "atomic_dir", saving)
    finetune(_cfg(tiny_bert, topics_jsonl, tmp_path / "r", "train.max_steps=2",
                  "train.method=lora"))  # fmt: skip
    # training peak, the adapter and the merged model, then the whole run's peak
    assert order == ["peak", "save adapter", "save model", "peak"]


def test_out_pointing_at_a_file_is_refused(tiny_bert, topics_jsonl, tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(EdgetuneError, match="is a file"):
        finetune(_cfg(tiny_bert, topics_jsonl, path))


def test_a_hybrid_with_a_budget_gets_the_most_backprop_blocks_that_fit(
    tiny_bert, topics_jsonl, tmp_path, fixed_overhead
):
    """Neither backprop_blocks nor a scheme: the run plans the count (`plan_blocks`) and keeps
    it in its config.yaml; a budget between the peaks of one and two blocks gives one."""
    from edgetune.forecast import predict
    from edgetune.methods.options import HybridOptions
    from edgetune.pipeline import load

    # Prepare: the tiny BERT has 2 blocks; a budget between the steps of 1 and 2 on top
    probe = load(_cfg(tiny_bert, topics_jsonl, tmp_path / "p", "train.method=hybrid"))
    one, two = (predict(probe.step_inputs(), "hybrid", HybridOptions(backprop_blocks=k))
                for k in (1, 2))  # fmt: skip
    budget = int(fixed_overhead + (one.memory.peak + two.memory.peak) / 2)
    out = tmp_path / "h"
    # Execute
    finetune(_cfg(tiny_bert, topics_jsonl, out, "train.method=hybrid", "train.max_steps=2",
                  f"train.budget={budget}"))  # fmt: skip
    # Assert
    assert "backprop_blocks: 1" in (out / "config.yaml").read_text()
