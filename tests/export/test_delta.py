"""A sparse run's delta (`edgetune export RUN --format delta`): its trained rows over the base,
small, and applied to the base it gives the run's saved model bit for bit."""

from __future__ import annotations

import json

import pytest
import tiny
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
from typer.testing import CliRunner

from edgetune.cli import app
from edgetune.export import export
from edgetune.export.delta import apply_delta, check
from edgetune.export.source import open_model
from edgetune.scheme import UnitUpdate, UpdateScheme


@pytest.fixture(scope="module")
def classifier_run(tiny_bert, topics_file, tmp_path_factory):
    """Sparse over half the rows of the last block of a BERT classifier (biases, norms and the
    head whole)."""
    return tiny.classify_run(tiny_bert, topics_file, tmp_path_factory.mktemp("runs") / "cls",
                             "train.method=sparse", "method.scheme=last-1@0.5")  # fmt: skip


@pytest.fixture(scope="module")
def held_run(tiny_bert, topics_file, tmp_path_factory):
    """The classifier run over a base held in q8_0 blocks (the trained rows dequantized)."""
    return tiny.classify_run(tiny_bert, topics_file, tmp_path_factory.mktemp("runs") / "held",
                             "train.method=sparse", "method.scheme=last-1@0.5",
                             "model.weights=q8_0")  # fmt: skip


@pytest.fixture(scope="module")
def decoder_run(tiny_llama, chat_jsonl, tmp_path_factory):
    """Sparse over half the rows of the last block's q, k, v and gate/up projections and its
    norms of a Llama (the tied head, which would bring the whole embedding, frozen)."""
    runs = tmp_path_factory.mktemp("runs")
    scheme = UpdateScheme((UnitUpdate("qkv", 1, 0.5), UnitUpdate("ffn1", 1, 0.5),
                           UnitUpdate("norm", 1)), "half-of-block-1")  # fmt: skip
    scheme.save(runs / "scheme.yaml")
    # the chat run of the LoRA tests, with sparse instead
    return tiny.lora_run(tiny_llama, chat_jsonl, runs / "chat", "train.method=sparse",
                         f"method.scheme={runs / 'scheme.yaml'}")  # fmt: skip


@pytest.mark.parametrize(
    ("run", "base", "cls", "held"),
    [("classifier_run", "tiny_bert", AutoModelForSequenceClassification, False),
     ("held_run", "tiny_bert", AutoModelForSequenceClassification, True),
     ("decoder_run", "tiny_llama", AutoModelForCausalLM, False)],
)  # fmt: skip
def test_base_plus_delta_is_the_runs_saved_model_bitwise(run, base, cls, held, request):
    # Prepare
    run, base = request.getfixturevalue(run), request.getfixturevalue(base)
    # Execute: the command, with its own bitwise check
    result = CliRunner().invoke(app, ["export", str(run), "--format", "delta", "--check"])
    # Assert
    assert result.exit_code == 0, result.output
    assert "check passed" in result.output
    manifest = run / "export" / f"{run.name}-delta.json"
    meta = json.loads(manifest.read_text())
    tensors = load_file(str(run / "export" / meta["tensors_file"]))
    saved = cls.from_pretrained(run / "model").state_dict()
    rebuilt = apply_delta(manifest).model.state_dict()
    assert saved.keys() == rebuilt.keys()
    for k, v in saved.items():
        assert torch.equal(rebuilt[k], v), k
    # the delta holds the scheme's rows only, and training changed them
    original = cls.from_pretrained(base).state_dict()
    rows = [k for k, entry in meta["tensors"].items() if entry["rows"] is not None]
    assert rows, "the scheme split no weight"
    for key in rows:
        entry = meta["tensors"][key]
        a, b = entry["rows"]
        assert tensors[key].shape[0] == b - a < entry["shape"][0]
        name = entry["parameter"]
        assert torch.equal(saved[name][a:b], tensors[key])
        if held:  # the frozen rows as the q8_0 blocks hold them: near the fp32 base, not it
            torch.testing.assert_close(saved[name][b:], original[name][b:], atol=5e-3, rtol=0)
        else:
            assert torch.equal(saved[name][b:], original[name][b:]), "frozen rows changed"
    assert any(not torch.equal(tensors[k], original[meta["tensors"][k]["parameter"]][
        slice(*meta["tensors"][k]["rows"])]) for k in rows), "training changed no row"  # fmt: skip
    assert meta["changed_values"] < 0.5 * meta["model_values"]
    assert meta["base"]["name"] == str(base.resolve())


def test_the_check_finds_a_delta_that_does_not_give_the_run(classifier_run, tmp_path):
    # Prepare: the delta written and checked, then one value of it changed
    model = open_model(str(classifier_run))
    written = export(model, "delta", tmp_path, held_out=[])
    assert written.figures["tensors_differing"] == 0 and not written.failures
    manifest, data = written.files
    tensors = load_file(str(data))
    key = next(iter(tensors))
    tensors[key].view(-1)[0] += 1.0
    save_file(tensors, str(data))
    # Execute
    figures, failures = check(model, [manifest, data], "fp32", [])
    # Assert
    assert figures["tensors_differing"] == 1
    assert failures and "differs from the run's model in 1 tensors" in failures[0]


def test_a_delta_is_refused_for_a_run_that_trains_no_scheme_or_a_model(chat_run, tiny_llama,
                                                                      tmp_path):  # fmt: skip
    lora = CliRunner().invoke(app, ["export", str(chat_run), "--format", "delta"])
    assert lora.exit_code != 0
    assert "a delta is written for sparse" in str(lora.exception)
    folder = CliRunner().invoke(app, ["export", str(tiny_llama), "--format", "delta",
                                      "--out", str(tmp_path)])  # fmt: skip
    assert folder.exit_code != 0 and "from a run folder" in str(folder.exception)
