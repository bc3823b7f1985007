"""The Python API mirrors the CLI."""

import json

import pytest

import edgetune


def test_finetune_from_python(tiny_bert, topics_jsonl, tmp_path):
    result = edgetune.finetune(
        model=str(tiny_bert),
        data=str(topics_jsonl),
        task="classify",
        seq_len=16,
        max_steps=3,
        out=tmp_path / "run",
        overrides={"train.batch_size": 8, "train.lr": 1e-3},
    )
    saved = json.loads((tmp_path / "run/metrics.json").read_text())
    assert result.metrics["eval"]["accuracy"] == saved["eval"]["accuracy"]
    assert saved["train"]["steps"] == 3


def test_unknown_shortcut_is_refused():
    with pytest.raises(edgetune.EdgetuneError, match="unknown setting 'learning_rate'"):
        edgetune.load_config(learning_rate=1.0)


QUIET = """
import json, sys
import edgetune
from edgetune.config import load_config
sys.argv = ["edgetune", *sys.argv[1:]]
model, data, out, which = sys.argv[1:5]
if which == "api":
    edgetune.finetune(model=model, data=data, task="classify", seq_len=16, max_steps=1,
                      batch_size=4, out=out, overrides={"train.final_eval": False})
else:
    from edgetune.cli import main
    sys.argv = ["edgetune", "plan", "--model", model, "--data", data, "--task", "classify",
                "--seq-len", "16", "--budget", "1GB", "--steps", "1", "--analysis-batch", "4",
                "--eval-examples", "4", "--layers", "1", "--fractions", "1",
                "--cache", out + "-cache", "--out", out + ".yaml"]
    main()
"""


@pytest.mark.parametrize("which", ["api", "plan"])
def test_library_progress_bars_and_load_reports_stay_quiet(which, topics_jsonl, tmp_path):
    """A model whose classifier head is new makes transformers print a load report and its
    weight-loading bar; the Python API and `edgetune plan` silence them as finetune does."""
    import subprocess
    import sys

    import tiny
    from transformers import AutoTokenizer, BertModel

    from edgetune.models.bundled import bundled_path

    base = tmp_path / "base"  # a backbone without a head: loading it for classify reports
    tokenizer = AutoTokenizer.from_pretrained(bundled_path("minilm-l6"))
    BertModel(tiny.config("bert", vocab_size=len(tokenizer))).save_pretrained(base)
    tokenizer.save_pretrained(base)
    script = tmp_path / "quiet.py"
    script.write_text(QUIET)
    proc = subprocess.run([sys.executable, str(script), str(base), str(topics_jsonl),
                           str(tmp_path / "out"), which], capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    for noise in ("LOAD REPORT", "Loading weights", "it/s]", "MISSING"):
        assert noise not in proc.stderr, proc.stderr[-2000:]
