"""The command line: help with examples, and bad input ending in one clear line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def run(*args, cwd=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "edgetune.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def test_help_lists_commands_and_examples():
    top = run("--help")
    assert top.returncode == 0
    for command in ("finetune", "eval", "models", "data"):
        assert command in top.stdout
    sub = run("finetune", "--help")
    assert sub.returncode == 0 and "edgetune finetune --config configs/demo.yaml" in sub.stdout


def test_data_list_and_methods():
    listing = run("data", "list")
    assert (
        listing.returncode == 0
        and "reuters-r8" in listing.stdout
        and "email-subjects" in listing.stdout
    )
    assert "backprop" in run("methods").stdout.split()


def _bad(tmp_path, *args):
    proc = run("finetune", "--out", str(tmp_path / "run"), *args)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error:"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists(), "a failed run left a folder behind"
    return proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "no-such-model", "--random-init"], "needs a registry model name"),
        (["--model", "gpt3-small"], "no published weights"),
        (["--data", "missing.jsonl", "--task", "classify"], "no such file"),
        (["--config", "missing.yaml"], "config file not found"),
        (["--method", "telepathy", "--max-steps", "1", "data.train_samples=16"], "unknown method"),
        (["train.nonsense=1"], "unknown key"),
        (["--data", "2024", "--task", "classify"], "data '2024' is not a bundled data set"),
        (["--data", "d.jsonl", "--task", "translate"], "unknown task 'translate'"),
        (["--budget", "0"], "memory size must be positive"),
        (["--learning-rate", "1e-3"], "no such option: --learning-rate"),
        (["--method", "lora", "method.rank=4"], "unknown lora option(s) rank"),
        (["--method", "backprop", "--scheme", "last-2"], "method backprop has no update scheme"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, args, message):
    assert message in " ".join(_bad(tmp_path, *args).split())


def test_bad_jsonl_line_is_named(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "a", "label": "x"}\n{oops\n')
    assert "line 2 is not valid JSON" in _bad(tmp_path, "--data", str(data), "--task", "classify")


def test_version_and_help_say_what_they_should():
    from typer.testing import CliRunner

    from edgetune.cli import app
    from edgetune.version import VERSION

    runner = CliRunner()
    assert runner.invoke(app, ["--version"]).stdout.strip() == f"edgetune {VERSION}"
    for command in ("finetune", "eval", "generate", "chat", "plan", "cost", "federate"):
        assert "Examples" in runner.invoke(app, [command, "--help"]).stdout, command


def test_unreachable_hub_id_is_named(tmp_path):
    message = _bad(tmp_path, "--model", "someone/some-model", "--max-steps", "1")
    assert "cannot load model 'someone/some-model'" in message


def test_finetune_and_eval_a_tiny_model(tiny_bert, topics_jsonl, tmp_path):
    out = tmp_path / "run"
    proc = run(
        "finetune",
        "--model",
        str(tiny_bert),
        "--data",
        str(topics_jsonl),
        "--task",
        "classify",
        "--max-steps",
        "3",
        "--seq-len",
        "16",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    assert f"run folder: {out}" in proc.stdout
    ev = run("eval", str(out))
    assert ev.returncode == 0, ev.stderr
    metrics = json.loads(ev.stdout)
    saved = json.loads((out / "metrics.json").read_text())["eval"]
    assert metrics["accuracy"] == pytest.approx(saved["accuracy"])
