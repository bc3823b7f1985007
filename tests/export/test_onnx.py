"""ONNX export of tiny random models, run in ONNX Runtime and compared with PyTorch: a BERT
classifier's logits, a Llama decoder's next-token logits through its KV cache."""

from __future__ import annotations

import numpy as np
import pytest
import tiny
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from edgetune.errors import EdgetuneError

ort = pytest.importorskip("onnxruntime", reason="the export extra (onnxruntime) is not installed")
pytest.importorskip("onnxscript", reason="the export extra (onnxscript) is not installed")

from edgetune.export import onnx as onnx_export  # noqa: E402

TEXTS = [
    "Shares of the bank rose after the market opened.",
    "Rain and wind are in the forecast for the weekend.",
    "The coach said the team played its best match.",
    "Bread, cheese and a bowl of soup.",
    "ok",
]


@pytest.fixture(scope="module")
def bert_export(tiny_bert, tmp_path_factory):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert)
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    out = tmp_path_factory.mktemp("bert-onnx") / "onnx"
    return model, tokenizer, onnx_export.export(model, tokenizer, out, check_texts=TEXTS)


@pytest.fixture(scope="module")
def llama_export(tiny_llama, tmp_path_factory):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    out = tmp_path_factory.mktemp("llama-onnx") / "onnx"
    return model, tokenizer, onnx_export.export(model, tokenizer, out, check_texts=TEXTS)


def test_classifier_logits_match_pytorch_with_dynamic_batch_and_length(bert_export):
    # Prepare: the written folder, and a batch of a size and length the export never saw
    model, tokenizer, exported = bert_export
    names = {p.name for p in exported.files}
    assert {"model.onnx", "config.json", "tokenizer.json"} <= names
    enc = tokenizer(TEXTS + TEXTS[:2], padding=True, return_tensors="np")
    # Execute
    session = ort.InferenceSession(str(exported.files[0].parent / "model.onnx"))
    feed = {"input_ids": enc["input_ids"].astype(np.int64),
            "attention_mask": enc["attention_mask"].astype(np.int64)}  # fmt: skip
    (got,) = session.run(None, feed)
    with torch.no_grad():
        want = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
    # Assert: the check's own figures, and an independent run
    assert got.shape == (7, 4)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert exported.figures["texts"] == len(TEXTS)
    assert exported.figures["labels_equal"] == len(TEXTS)
    assert exported.figures["max_logit_diff"] < onnx_export.LOGIT_TOL


def test_decoder_cache_steps_equal_whole_sequence_logits(llama_export):
    model, tokenizer, exported = llama_export
    session = ort.InferenceSession(str(exported.files[0].parent / "model.onnx"))
    row = tokenizer(TEXTS[0])["input_ids"]
    # Execute: the first 3 tokens as a prompt, then one token a call through the cache
    got = onnx_export.cached_logits(session, row, prompt=3)
    with torch.no_grad():
        want = model(input_ids=torch.tensor([row])).logits[0].numpy()
    # Assert
    assert got.shape == want.shape == (len(row), len(tokenizer))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    figures = exported.figures
    assert figures["positions"] == sum(len(tokenizer(t)["input_ids"]) - 1 for t in TEXTS)
    assert figures["agreement"] == 1.0
    assert abs(figures["ppl_change"]) < 1e-4
    # a random model over SmolLM2's 49,152 tokens is near uniform
    assert 0.5 * len(tokenizer) < figures["ppl_runtime"] < 2 * len(tokenizer)


def test_decoder_batch_of_two_with_left_padding(llama_export):
    # Prepare: two prompts of different lengths, the shorter one padded on the left
    model, tokenizer, exported = llama_export
    session = ort.InferenceSession(str(exported.files[0].parent / "model.onnx"))
    long, short = (tokenizer(t)["input_ids"] for t in TEXTS[:2])
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
        want = model(input_ids=torch.tensor([short])).logits[0].numpy()
    # Assert: the padded row's real positions equal the unpadded run
    np.testing.assert_allclose(logits[1, 3:], want, atol=1e-4, rtol=0)


def test_a_failed_check_leaves_nothing(tiny_bert, tmp_path, monkeypatch):
    # Prepare: a check whose logits are off by 1e-3 (the writing and the runtime stubbed out)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert)
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    off = {"texts": 1, "labels_equal": 1, "label_agreement": 1.0, "max_logit_diff": 1e-3}
    monkeypatch.setattr(onnx_export, "_write_classifier", lambda model, path: path.touch())
    monkeypatch.setattr(onnx_export, "_session", lambda ort, path: None)
    monkeypatch.setattr(onnx_export, "check_classifier", lambda *args: off)
    # Execute / Assert
    with pytest.raises(EdgetuneError, match="logits differ from PyTorch's by 1.00e-03"):
        onnx_export.export(model, tokenizer, tmp_path / "onnx", check_texts=TEXTS[:1])
    assert list(tmp_path.iterdir()) == []


def test_an_encoder_decoder_is_refused_by_name(tmp_path):
    with pytest.raises(EdgetuneError, match="T5ForConditionalGeneration is neither"):
        onnx_export.export(tiny.model("t5"), None, tmp_path / "onnx")
