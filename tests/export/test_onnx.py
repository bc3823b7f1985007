"""ONNX export (`edgetune export --format onnx`) of tiny models, run in ONNX Runtime and compared
with PyTorch: a BERT classifier's logits, a Llama decoder's next-token logits through its KV
cache; and through the command, a classifier run, a LoRA run (merged, and adapter only).

The tests that run ONNX Runtime skip without the export extra (CI's default install)."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import tiny
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)
from typer.testing import CliRunner

from edgetune.cli import app
from edgetune.errors import EdgetuneError
from edgetune.export import export
from edgetune.export import onnx as onnx_export
from edgetune.export.source import RunModel

HAS_ORT = all(importlib.util.find_spec(m) for m in ("onnxruntime", "onnxscript"))
needs_ort = pytest.mark.skipif(
    not HAS_ORT, reason="the export extra (onnxruntime, onnxscript) is not installed"
)

TEXTS = [
    "Shares of the bank rose after the market opened.",
    "Rain and wind are in the forecast for the weekend.",
    "The coach said the team played its best match.",
    "Bread, cheese and a bowl of soup.",
    "ok",
]


def _run_model(folder, cls, task) -> RunModel:
    model = cls.from_pretrained(folder).eval()
    return RunModel("tiny", model, AutoTokenizer.from_pretrained(folder), task, None, None, None)


def _ids(tokenizer) -> list[np.ndarray]:
    return [np.asarray(tokenizer(t)["input_ids"]) for t in TEXTS]


def _session(exported):
    import onnxruntime as ort

    (graph,) = [f for f in exported.files if f.name == "model.onnx"]
    return ort.InferenceSession(str(graph))


@pytest.fixture(scope="module")
def bert_export(tiny_bert, tmp_path_factory):
    m = _run_model(tiny_bert, AutoModelForSequenceClassification, "classify")
    return m, export(m, "onnx", tmp_path_factory.mktemp("bert-onnx"), None, _ids(m.tokenizer))


@pytest.fixture(scope="module")
def llama_export(tiny_llama, tmp_path_factory):
    m = _run_model(tiny_llama, AutoModelForCausalLM, "lm")
    return m, export(m, "onnx", tmp_path_factory.mktemp("llama-onnx"), None, _ids(m.tokenizer))


@needs_ort
def test_classifier_logits_match_pytorch_with_dynamic_batch_and_length(bert_export):
    # Prepare: the written folder, and a batch of a size and length the export never saw
    m, exported = bert_export
    names = {p.name for p in exported.files}
    assert {"model.onnx", "config.json", "tokenizer.json"} <= names
    assert exported.files[0].parent.name == "tiny-onnx"
    enc = m.tokenizer(TEXTS + TEXTS[:2], padding=True, return_tensors="np")
    # Execute
    feed = {"input_ids": enc["input_ids"].astype(np.int64),
            "attention_mask": enc["attention_mask"].astype(np.int64)}  # fmt: skip
    (got,) = _session(exported).run(None, feed)
    with torch.no_grad():
        want = m.model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
    # Assert: the check's own figures, and an independent run
    assert got.shape == (7, 4)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert exported.figures["texts"] == len(TEXTS)
    assert exported.figures["labels_equal"] == len(TEXTS)
    assert exported.figures["max_logit_diff"] < onnx_export.LOGIT_TOL
    assert not exported.failures


@needs_ort
def test_decoder_cache_steps_equal_whole_sequence_logits(llama_export):
    m, exported = llama_export
    row = m.tokenizer(TEXTS[0])["input_ids"]
    # Execute: the first 3 tokens as a prompt, then one token a call through the cache
    got = onnx_export.cached_logits(_session(exported), row, prompt=3)
    with torch.no_grad():
        want = m.model(input_ids=torch.tensor([row])).logits[0].numpy()
    # Assert
    assert got.shape == want.shape == (len(row), len(m.tokenizer))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    figures = exported.figures
    assert figures["positions"] == sum(len(m.tokenizer(t)["input_ids"]) - 1 for t in TEXTS)
    assert figures["agreement"] == 1.0
    assert abs(figures["ppl_change"]) < 1e-4
    # a random model over SmolLM2's 49,152 tokens is near uniform
    assert 0.5 * len(m.tokenizer) < figures["ppl_runtime"] < 2 * len(m.tokenizer)


@needs_ort
def test_decoder_batch_of_two_with_left_padding(llama_export):
    # Prepare: two prompts of different lengths, the shorter one padded on the left
    m, exported = llama_export
    session = _session(exported)
    long, short = (m.tokenizer(t)["input_ids"] for t in TEXTS[:2])
    short = short[: len(long) - 3]
    ids = np.array([long, [0] * 3 + short], np.int64)
    mask = np.array([[1] * len(long), [0] * 3 + [1] * len(short)], np.int64)
    positions = np.clip(mask.cumsum(-1) - 1, 0, None)
    past = {i.name: np.zeros((2, i.shape[1], 0, i.shape[3]), np.float32)
            for i in session.get_inputs() if i.name.startswith("past_key_values.")}  # fmt: skip
    # Execute
    logits, *_ = session.run(
        None, {"input_ids": ids, "attention_mask": mask, "position_ids": positions, **past}
    )
    with torch.no_grad():
        want = m.model(input_ids=torch.tensor([short])).logits[0].numpy()
    # Assert: the padded row's real positions equal the unpadded run
    np.testing.assert_allclose(logits[1, 3:], want, atol=1e-4, rtol=0)


def test_a_check_outside_its_tolerance_is_a_failure_line(tiny_bert, tmp_path, monkeypatch):
    # Prepare: logits off by 1e-3 (the runtime and the comparison stubbed out)
    m = _run_model(tiny_bert, AutoModelForSequenceClassification, "classify")
    off = {"texts": 1, "labels_equal": 1, "label_agreement": 1.0, "max_logit_diff": 1e-3}
    monkeypatch.setattr(onnx_export, "_runtime", lambda: None)
    monkeypatch.setattr(onnx_export, "_session", lambda ort, path: None)
    monkeypatch.setattr(onnx_export, "check_classifier", lambda *args: off)
    # Execute
    figures, failures = onnx_export.check(m, [tmp_path / "model.onnx"], "fp32", [])
    # Assert
    assert figures == off
    assert failures == ["the classifier's logits in ONNX Runtime differ from PyTorch's by "
                        "1.00e-03 (tolerance 1e-04)"]  # fmt: skip


def test_an_encoder_decoder_is_refused_by_name(tmp_path):
    m = RunModel("t5", tiny.model("t5").eval(), None, "lm", None, None, None)
    with pytest.raises(EdgetuneError, match="T5ForConditionalGeneration is neither"):
        export(m, "onnx", tmp_path)


def test_without_the_extra_the_command_says_how_to_install_it(tiny_llama, tmp_path,
                                                               monkeypatch):  # fmt: skip
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` fails
    result = CliRunner().invoke(app, ["export", str(tiny_llama), "--format", "onnx",
                                      "--out", str(tmp_path)])  # fmt: skip
    assert result.exit_code != 0
    assert "pip install 'edgetune[export]'" in str(result.exception)
    assert not list(tmp_path.iterdir())


# -- through the command, from run folders ----------------------------------------------------


@pytest.fixture(scope="module")
def classifier_run(tiny_bert, topics_file, tmp_path_factory):
    return tiny.classify_run(tiny_bert, topics_file, tmp_path_factory.mktemp("runs") / "cls")


@needs_ort
def test_command_exports_and_checks_a_classifier_run_on_its_test_split(classifier_run):
    result = CliRunner().invoke(app, ["export", str(classifier_run), "--format", "onnx",
                                      "--check"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "check passed" in result.output and "labels_equal" in result.output
    folder = classifier_run / "export" / "cls-onnx"
    assert (folder / "model.onnx").is_file() and (folder / "model.onnx.data").is_file()
    # the labels the run learned travel with the graph
    config = AutoConfig.from_pretrained(folder)
    assert sorted(config.id2label.values()) == ["finance", "food", "sports", "weather"]


@needs_ort
@pytest.mark.parametrize("merged", [True, False], ids=["merged", "adapter-only"])
def test_command_exports_and_checks_a_lora_run(merged, chat_run, tiny_llama, chat_jsonl,
                                               tmp_path):  # fmt: skip
    run = chat_run if merged else tiny.lora_run(tiny_llama, chat_jsonl, tmp_path / "adapter",
                                                "train.merge=false")  # fmt: skip
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["export", str(run), "--format", "onnx", "--check",
                                      "--positions", "60", "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "check passed" in result.output
    for figure in ("agreement", "ppl_reference", "ppl_runtime", "ppl_change", "max_logit_diff"):
        assert figure in result.output
    # the graph holds the fine-tuned weights: its logits are the run's, not the base's
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / f"{run.name}-onnx" / "model.onnx"))
    row = AutoTokenizer.from_pretrained(tiny_llama)("repeat red cat sun")["input_ids"]
    got = onnx_export.cached_logits(session, row, prompt=len(row))
    with torch.no_grad():
        tuned = AutoModelForCausalLM.from_pretrained(chat_run / "model")
        want = tuned(input_ids=torch.tensor([row])).logits[0].numpy()
        base = AutoModelForCausalLM.from_pretrained(tiny_llama)(torch.tensor([row])).logits
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert np.abs(got - base[0].numpy()).max() > 1e-3


def test_gguf_refuses_a_classifier_run_naming_onnx(classifier_run, tmp_path):
    result = CliRunner().invoke(app, ["export", str(classifier_run), "--out", str(tmp_path)])
    assert result.exit_code != 0 and "--format onnx" in str(result.exception)
