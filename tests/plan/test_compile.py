"""Ahead-of-time training graph: a compiled step trains like eager; failures fall back."""

import pytest
import torch

from edgetune.data.tasks import collate
from edgetune.methods import build_method
from edgetune.methods.base import MethodSettings
from edgetune.plan.compile import compile_step, is_compiled, release


def _method(tiny_bert):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert)
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
    model.eval()  # no dropout: eager and compiled runs see the same numbers
    settings = MethodSettings(lr=1e-3, total_steps=3, options={"scheme": "qkv-ffn1-1@0.5"})
    return build_method("sparse", model, settings)


def _batch():
    g = torch.Generator().manual_seed(0)
    ex = [
        {"input_ids": torch.randint(1000, 2000, (12,), generator=g).tolist(), "labels": i % 4}
        for i in range(4)
    ]
    return collate(ex, 0)


def _no_dropout(method):
    for m in method.model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def test_backend_failure_falls_back_to_eager(tiny_bert):
    method = _method(tiny_bert)

    def broken(gm, inputs):
        raise RuntimeError("capture failed on purpose")

    with pytest.warns(RuntimeWarning, match="training eagerly"):
        report = compile_step(method, _batch(), backend=broken)
    assert not report.compiled and "on purpose" in report.error
    assert not is_compiled(method)
    assert all(p.grad is None for p in method.model.parameters())
    assert method.step([_batch()]).loss > 0  # the eager path still trains


def test_compiled_step_matches_eager(tiny_bert):
    eager, compiled = _method(tiny_bert), _method(tiny_bert)
    _no_dropout(eager), _no_dropout(compiled)
    report = compile_step(compiled, _batch(), backend="aot_eager")
    assert report.compiled and report.compile_s > 0 and is_compiled(compiled)
    for _ in range(2):
        a, b = eager.step([_batch()]).loss, compiled.step([_batch()]).loss
        assert a == pytest.approx(b, rel=1e-4)
    torch.testing.assert_close(compiled.trainable_state(), eager.trainable_state())
    release(compiled)
    assert not is_compiled(compiled)
