"""`edgetune plan` through typer's CliRunner on an app built here."""

import typer
import yaml
from typer.testing import CliRunner

from edgetune.commands.plan import plan
from edgetune.errors import EdgetuneError
from edgetune.scheme import UpdateScheme


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command()(plan)
    app.command("noop")(lambda: None)  # two commands: `plan` stays a named subcommand
    return app


def _args(tiny_bert, topics_jsonl, tmp_path, *extra):
    return [
        "plan",
        "--model",
        str(tiny_bert),
        "--data",
        str(topics_jsonl),
        "--task",
        "classify",
        "--seq-len",
        "16",
        "--batch-size",
        "4",
        "--steps",
        "1",
        "--analysis-batch",
        "4",
        "--eval-examples",
        "4",
        "--cache",
        str(tmp_path / "cache"),
        *extra,
    ]


def test_plan_writes_a_scheme_within_the_budget(tiny_bert, topics_jsonl, tmp_path, fixed_overhead):
    out = tmp_path / "plan.yaml"
    args = _args(
        tiny_bert,
        topics_jsonl,
        tmp_path,
        "--budget",
        str(fixed_overhead + 6_000_000),
        "--out",
        str(out),
        "--plot",
        str(tmp_path / "gains.png"),
    )
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    scheme = UpdateScheme.load(out)
    assert scheme.trains_head()
    raw = yaml.safe_load(out.read_text())
    # the budget is the process's peak (as for finetune): the step's peak, weights included,
    # beside the runtime; the search's room is what is left beside both and the weights
    assert raw["forecast"]["peak_bytes"] <= 6e6
    assert raw["budget_bytes"] == 6e6 - raw["forecast"]["weights_bytes"]
    assert "process peak" in result.output
    assert raw["forecast"]["training_bytes"] <= raw["budget_bytes"]
    assert (tmp_path / "gains.png").is_file()
    assert "wrote" in result.output


def test_plan_budget_too_small_is_an_error(tiny_bert, topics_jsonl, tmp_path):
    args = _args(tiny_bert, topics_jsonl, tmp_path, "--budget", "1KB")
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code != 0
    assert isinstance(result.exception, EdgetuneError)
    assert "do not fit the budget" in str(result.exception)


def test_plan_needs_a_budget_or_a_device(tiny_bert, topics_jsonl, tmp_path):
    result = CliRunner().invoke(_app(), _args(tiny_bert, topics_jsonl, tmp_path))
    assert isinstance(result.exception, EdgetuneError)
    assert "budget" in str(result.exception)


def test_plan_within_a_step_limit_verified(tiny_bert, topics_jsonl, tmp_path, fixed_overhead):
    # Prepare / Execute: memory for any scheme, a step limit, the two best schemes judged
    out = tmp_path / "fast.yaml"
    budget = str(fixed_overhead + 64_000_000)
    extra = ("--budget", budget, "--max-step", "1.3", "--verify", "2", "--out", str(out))
    result = CliRunner().invoke(_app(), _args(tiny_bert, topics_jsonl, tmp_path, *extra))
    # Assert: the forecast step within the limit, the judge's gain recorded and printed
    assert result.exit_code == 0, result.output
    raw = yaml.safe_load(out.read_text())
    assert 1.0 <= raw["forecast"]["step_forwards"] <= 1.3
    assert raw["measured_gain"] is not None and "measured" in result.output
    assert "a forward" in result.output


def test_plan_step_limit_below_a_forward_is_an_error(tiny_bert, topics_jsonl, tmp_path):
    extra = ("--budget", "64MB", "--max-step", "0.5")
    result = CliRunner().invoke(_app(), _args(tiny_bert, topics_jsonl, tmp_path, *extra))
    assert isinstance(result.exception, EdgetuneError)
    assert "at least 1" in str(result.exception)
