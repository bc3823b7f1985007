"""`edgetune cost` and `edgetune devices` through typer's CliRunner on a small app."""

import json

import pytest
import typer
from typer.testing import CliRunner

from edgetune.commands.cost import cost, devices
from edgetune.errors import EdgetuneError


@pytest.fixture
def app():
    a = typer.Typer()
    a.command()(cost)
    a.command()(devices)
    return a


def test_cost_json_rows(app):
    r = CliRunner().invoke(app, ["cost", "--model", "distilbert", "--method", "backprop,mempepita",
                                 "--seq", "32,512", "--device", "rpi4", "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert [(x["method"], x["seq"]) for x in rows] == [
        ("backprop", 32), ("mempepita", 32), ("backprop", 512), ("mempepita", 512)]  # fmt: skip
    bp, mp = rows[2], rows[3]
    assert bp["params"] == 66_362_880 + 768 * 768 + 768 + 2 * 768 + 30522  # + MLM head
    assert mp["memory_bytes"]["activations"] < bp["memory_bytes"]["activations"]
    assert bp["macs_vs_backprop"] == 0 and mp["macs_vs_backprop"] > 0.3
    assert bp["fits"] is True and bp["latency_s"] > 0 and bp["device"] == "rpi4"


def test_cost_table_and_plot(app, tmp_path):
    png = tmp_path / "sweep.png"
    r = CliRunner().invoke(
        app,
        [
            "cost",
            "--model",
            "alexatm-20b",
            "--seq",
            "32,128",
            "--tgt-seq",
            "64",
            "--device",
            "mtia-v1",
            "--plot",
            str(png),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "alexatm-20b" in r.output and "NO" in r.output  # 20 B parameters do not fit 128 MB
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cost_sparse_default_scheme(app):
    r = CliRunner().invoke(app, ["cost", "--model", "minilm-l6", "--method", "backprop,sparse",
                                 "--seq", "128", "--head", "classifier", "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    bp, sp = json.loads(r.output)
    assert sp["trained_params"] < bp["trained_params"] / 2 and sp["macs"] < bp["macs"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "gpt5"], "unknown model 'gpt5'"),
        (["--device", "rpi9"], "unknown device 'rpi9'"),
        (["--method", "backprop,adam"], "unknown method 'adam'"),
        (["--seq", "32,abc"], "comma-separated whole numbers"),
        (["--seq", "0"], "positive"),
        (["--dtype", "fp8"], "unknown --dtype"),
        (["--batch", "0"], "at least 1"),
    ],
)
def test_cost_bad_input_raises_edgetune_error(app, args, message):
    r = CliRunner().invoke(app, ["cost", *args])
    assert r.exit_code != 0
    assert isinstance(r.exception, EdgetuneError) and message in str(r.exception)


def test_devices_lists_profiles(app, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGETUNE_CACHE", str(tmp_path))
    r = CliRunner().invoke(app, ["devices", "--sources"])
    assert r.exit_code == 0, r.output
    for name in ("stm32h7", "rpi4", "jetson-agx-orin", "mtia-v1", "h100", "this-machine"):
        assert name in r.output
    assert "not measured yet" in r.output and "NVIDIA A100 datasheet" in r.output


def test_cost_accounting_paper_is_the_paper_s_own_beside_ours(app):
    """`--accounting paper` gives the seed paper's MACs and activation counts (its block
    formulas, `edgetune.cost.paper`) beside edgetune's, for the rules the paper covers."""
    from edgetune.cost import paper

    r = CliRunner().invoke(app, ["cost", "--model", "distilbert", "--method", "backprop,lora",
                                 "--seq", "2048", "--accounting", "paper", "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    bp, lora = json.loads(r.output)
    assert bp["paper_macs"] == paper.macs(paper.DISTILBERT, 2048)["backprop"]
    assert bp["paper_activations"] == paper.activations(paper.DISTILBERT, 2048)["backprop"]
    assert bp["paper_macs"] > bp["macs"]  # the one-hot embedding and the softmax Jacobian
    assert "paper_macs" not in lora  # the paper accounts for backprop, pepita, mempepita
    table = CliRunner().invoke(app, ["cost", "--model", "distilbert", "--seq", "128",
                                     "--accounting", "paper"])  # fmt: skip
    assert table.exit_code == 0 and "seed paper's accounting" in table.output
    bad = CliRunner().invoke(app, ["cost", "--accounting", "papers"])
    assert isinstance(bad.exception, EdgetuneError) and "default or paper" in str(bad.exception)
