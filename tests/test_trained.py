"""What a run leaves to use: a LoRA run's PEFT adapter beside (or instead of) its merged model,
both loaded back with the run's own logits; `eval` on either."""

from __future__ import annotations

import json

import pytest
import tiny
import torch
from typer.testing import CliRunner

from edgetune.errors import EdgetuneError
from edgetune.trained import load_trained, trained_config


def _logits(model, ids):
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


def test_a_lora_run_saves_an_adapter_that_peft_loads_with_the_run_s_logits(chat_run,
                                                                           tiny_llama):  # fmt: skip
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = chat_run / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {
        p.name for p in adapter.iterdir()
    }
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_llama.resolve())
    ids = torch.tensor([[5, 17, 42, 99, 7, 256]])
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    before = _logits(base, ids)
    peft = PeftModel.from_pretrained(base, str(adapter))
    merged = AutoModelForCausalLM.from_pretrained(chat_run / "model")
    got, want = _logits(peft, ids), _logits(merged, ids)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert (want - before).abs().max() > 1e-3, "the adapter changed nothing"
    # and edgetune's own loader, through the adapter alone (its base named in its config)
    torch.testing.assert_close(_logits(load_trained(str(adapter)).model, ids), want,
                               rtol=1e-4, atol=1e-4)  # fmt: skip


def test_no_merge_saves_the_adapter_only_and_eval_reads_it(tiny_llama, chat_jsonl, tmp_path):
    from edgetune.cli import app

    run = tiny.lora_run(tiny_llama, chat_jsonl, tmp_path / "adapter-only", "train.merge=false")
    assert (run / "adapter" / "adapter_config.json").is_file() and not (run / "model").exists()
    assert trained_config(str(run)).model.adapter == str(run / "adapter")
    result = CliRunner().invoke(app, ["eval", str(run)])
    assert result.exit_code == 0, result.output
    saved = json.loads((run / "metrics.json").read_text())["eval"]
    assert json.loads(result.stdout)["perplexity"] == pytest.approx(saved["perplexity"], rel=1e-5)


def test_a_run_with_a_merged_model_loads_it(chat_run):
    cfg = trained_config(str(chat_run))
    assert cfg.model.name == str(chat_run / "model") and cfg.model.adapter is None


def test_a_run_without_a_trained_model_is_named(chat_run, tmp_path):
    (tmp_path / "config.yaml").write_text((chat_run / "config.yaml").read_text())
    with pytest.raises(EdgetuneError, match="holds no trained model"):
        trained_config(str(tmp_path))
