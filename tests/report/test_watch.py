"""Runs you can watch: metrics.jsonl line by line (cut back on resume), plain log lines where
the console is not a terminal, the bar kept on a terminal, the expected time, curves.png,
TensorBoard events."""

from __future__ import annotations

import io
import json
import re

import pytest
from rich.console import Console

from edgetune.config import load_config
from edgetune.report.watch import Watch
from edgetune.train import finetune

TIMED = ("step_s", "rss_mb", "eta_s")  # the fields that differ between two runs of the same steps


def _cfg(model, data, out, *extra):
    return load_config(None, [f"model.name={model}", f"data.name={data}", "data.task=classify",
                              "data.seq_len=16", "train.batch_size=8", "train.lr=3e-3",
                              "train.max_steps=6", "train.save_every=3", f"out={out}",
                              *extra])  # fmt: skip


def _records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


class Stopped(Exception):
    pass


def _stop_after(stop: int, monkeypatch) -> None:
    """Runs stop right after the record of step `stop` is written, as a kill there would."""
    recorded = Watch.step

    def step_then_stop(self, step, *args):
        fields = recorded(self, step, *args)
        if step == stop:
            raise Stopped
        return fields

    monkeypatch.setattr(Watch, "step", step_then_stop)


def _headless():
    """A console writing to a file, as under `edgetune finetune ... > log 2>&1`."""
    return Console(file=io.StringIO(), width=80)


def test_a_run_records_every_step_and_validation_and_draws_its_curves(
    tiny_bert, topics_jsonl, tmp_path
):
    # Prepare
    out = tmp_path / "r"
    # Execute
    result = finetune(_cfg(tiny_bert, topics_jsonl, out, "train.eval_every=4"))
    # Assert: a line per step, a line per validation, in the order they happened
    records = _records(out)
    assert [(r["step"], "validation" in r) for r in records] == [
        (1, False), (2, False), (3, False), (4, False), (4, True), (5, False), (6, False),
        (6, True),
    ]  # fmt: skip
    steps = [r for r in records if "loss" in r]
    for r in steps:
        assert set(r) == {"step", "loss", "lr", "grad_norm", "step_s", "rss_mb", "eta_s"}
        assert r["step_s"] > 0 and r["rss_mb"] > 0 and r["grad_norm"] > 0 and r["eta_s"] >= 0
    assert [r["loss"] for r in steps] == result.metrics["train"]["loss_history"]
    assert [{"step": r["step"], **r["validation"]} for r in records if "validation" in r] == (
        result.metrics["validation_history"]
    )
    assert (out / "curves.png").read_bytes().startswith(b"\x89PNG")


def test_resume_cuts_the_record_back_to_its_checkpoint(
    tiny_bert, topics_jsonl, tmp_path, monkeypatch
):
    """A run stopped at step 5 (after its checkpoint at 3, its lines of steps 4 and 5 and the
    validation at 4 written) and resumed has the record of a run never stopped."""

    # Prepare
    extra = ("train.eval_every=4",)
    finetune(_cfg(tiny_bert, topics_jsonl, tmp_path / "whole", *extra))
    _stop_after(5, monkeypatch)
    with pytest.raises(Stopped):
        finetune(_cfg(tiny_bert, topics_jsonl, tmp_path / "stopped", *extra))
    assert [r["step"] for r in _records(tmp_path / "stopped")] == [1, 2, 3, 4, 4, 5]
    monkeypatch.undo()
    # Execute
    finetune(_cfg(tiny_bert, topics_jsonl, tmp_path / "stopped", *extra), resume=True)

    # Assert
    def untimed(out):
        return [{k: v for k, v in r.items() if k not in TIMED} for r in _records(out)]

    assert untimed(tmp_path / "stopped") == untimed(tmp_path / "whole")


def test_a_headless_run_logs_plain_lines_with_the_expected_time(
    tiny_bert, topics_jsonl, tmp_path, monkeypatch, fixed_overhead
):
    # Prepare: this machine's peak not measured (no this-machine.json in the cache)
    monkeypatch.setenv("EDGETUNE_CACHE", str(tmp_path / "cache"))
    console = _headless()
    # Execute
    finetune(_cfg(tiny_bert, topics_jsonl, tmp_path / "r", "train.log_every=2"), console=console)
    # Assert
    log = console.file.getvalue()
    lines = re.findall(r"^step (\d+)/6  loss (\d+\.\d{4})  lr \S+  \S+ s/step  rss \d+ MiB  "
                       r"eta \d+s$", log, re.MULTILINE)  # fmt: skip
    losses = [r["loss"] for r in _records(tmp_path / "r")]
    assert [(int(s), float(loss)) for s, loss in lines] == [
        (s, pytest.approx(losses[s - 1], abs=1e-4)) for s in (2, 4, 6)
    ]
    assert re.search(r"^expected time \d+s for steps 1-6: .* a step, the median of steps 1-3",
                     log, re.MULTILINE)  # fmt: skip
    assert log.index("expected time") < log.index("step 4/6")
    assert "━" not in log  # no progress bar in a file


def test_with_this_machine_measured_the_expected_time_comes_before_step_1(
    tiny_bert, topics_jsonl, tmp_path, monkeypatch, fixed_overhead
):
    monkeypatch.setenv("EDGETUNE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "this-machine.json").write_text(
        '{"when": "now", "peak_flops": {"fp32": 1e10}, "bandwidth": 1e10}')  # fmt: skip
    console = _headless()
    finetune(_cfg(tiny_bert, topics_jsonl, tmp_path / "r"), console=console)
    log = console.file.getvalue()
    said = re.search(r"^expected time \S+ for steps 1-6: the forecast's .* a step on "
                     r"this-machine", log, re.MULTILINE)  # fmt: skip
    assert said and log.index(said.group(0)) < log.index("after training")
    assert log.count("expected time") == 1


def test_log_every_0_logs_no_step_and_the_forecast_says_the_expected_time(
    tiny_bert, topics_jsonl, tmp_path
):
    # Prepare
    console = _headless()
    cfg = _cfg(tiny_bert, topics_jsonl, tmp_path / "r", "train.log_every=0", "train.device=rpi4")
    # Execute
    finetune(cfg, console=console)
    # Assert
    log = console.file.getvalue()
    assert not re.search(r"^step \d+/6", log, re.MULTILINE)
    assert re.search(r"^expected time \d+s for steps 1-6: the forecast's .* a step on "
                     r"rpi4 \(cost model", log, re.MULTILINE)  # fmt: skip
    assert log.count("expected time") == 1


def test_on_a_terminal_the_bar_stays_and_no_line_is_logged(tiny_bert, topics_jsonl, tmp_path):
    # Prepare
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    # Execute
    finetune(_cfg(tiny_bert, topics_jsonl, tmp_path / "r", "train.log_every=1"), console=console)
    # Assert
    log = console.file.getvalue()
    assert not re.search(r"^step \d+/6", log, re.MULTILINE)
    last = log.rsplit("\r", 1)[-1]  # the frame left on screen
    assert "train backprop" in last and "6/6" in last


def test_tensorboard_events_are_written_where_tensorboard_is_installed(
    tiny_bert, topics_jsonl, tmp_path, monkeypatch
):
    """And a resume hides the events a stopped run wrote after its checkpoint."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # Prepare: stopped after step 5, its checkpoint at 3
    out = tmp_path / "r"
    _stop_after(5, monkeypatch)
    with pytest.raises(Stopped):
        finetune(_cfg(tiny_bert, topics_jsonl, out, "train.eval_every=2"))
    monkeypatch.undo()
    # Execute
    finetune(_cfg(tiny_bert, topics_jsonl, out, "train.eval_every=2"), resume=True)
    # Assert
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(
        [r["loss"] for r in _records(out) if "loss" in r]
    )
    assert [e.step for e in events.Scalars("validation/accuracy")] == [2, 4, 6]
