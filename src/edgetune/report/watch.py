"""Runs you can watch: what a training run tells, step by step, while it runs.

- `metrics.jsonl` in the run folder, one JSON object a line, flushed as it is written (`tail -f`
  follows it): per optimizer step `step`, `loss`, the numbers the method's step returns (`lr`;
  `grad_norm` where the step clips the gradients; MeZO's projected gradient and its two
  losses), `step_s` (the method's step: forward, backward, update), `rss_mb` (resident
  memory after it) and `eta_s` (the remaining time, as the log line says it); per validation
  `{"step": N, "validation": {...}}`. A resume first cuts it back to its checkpoint's step, so
  the file is the run's, step for step.
- A plain line every `train.log_every` steps and after the last where the console is not a
  terminal (a log file, where the progress bar draws nothing): step, loss, lr, time per step,
  resident memory, remaining time.
- The expected time of the run, said once: before the first step from the forecast where it has
  a step time (a `--device`, else this machine once `edgetune bench hardware` has measured it),
  else once the first steps are timed. The log lines and the
  progress bar then give the remaining time from the median of the last steps.
- `curves.png` (`edgetune.report.figures.plot_curves`) at every checkpoint, the last one at the
  end of training.
- TensorBoard events in `tensorboard/` where the `tensorboard` package is installed (the
  `tensorboard` extra); elsewhere none.
"""

from __future__ import annotations

import itertools
import json
import statistics
from pathlib import Path
from typing import Any

from rich.console import Console

from edgetune.config import RunConfig
from edgetune.errors import EdgetuneError
from edgetune.forecast import Forecast
from edgetune.io import atomic_write_text
from edgetune.measure.memory import rss_mb
from edgetune.methods.base import StepResult
from edgetune.report.figures import plot_curves
from edgetune.units import seconds

JSONL, BOARD, CURVES = "metrics.jsonl", "tensorboard", "curves.png"
STARTED = (JSONL, BOARD)  # what a run writes from its first step, before any checkpoint
FIRST = 3  # steps timed before the expected time is said (without a forecast of a step)
RECENT = 20  # the steps whose median time per step gives the remaining time


class Watch:
    """The record of one training run from step `step` on (0, or the step a resume starts
    from); a context manager that closes its files."""

    def __init__(
        self, cfg: RunConfig, console: Console, total: int, step: int, forecast: Forecast
    ) -> None:
        self.out, self.console, self.total, self.start = Path(cfg.out), console, total, step
        self.log_every = 0 if console.is_terminal else cfg.train.log_every
        self.title = f"{cfg.model.name} on {cfg.data.name} ({cfg.train.method})"
        self.times: list[float] = []  # the method's step times, in this process
        _cut_back(self.out / JSONL, step)
        self._file = open(self.out / JSONL, "a")  # noqa: SIM115  (closed by __exit__)
        self._board = _board(self.out / BOARD, step)
        latency, device = forecast.latency_s, forecast.device
        self.said = False  # the expected time
        if latency is not None and device is not None and step < total:
            self.said = True
            self._say(f"expected time {_clock(latency * (total - step))} for steps {step + 1}-"
                      f"{total}: the forecast's {seconds(latency)} a step on {device.name} (cost "
                      "model; validation and checkpoints not counted)")  # fmt: skip

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *_exc) -> None:
        self._file.close()
        if self._board is not None:
            self._board.close()

    def step(self, step: int, result: StepResult, step_s: float) -> dict[str, Any]:
        """Record optimizer step `step`, which took the method `step_s` seconds: its line, the
        log line when one is due, the expected time once. Returns the progress bar's fields."""
        self.times.append(step_s)
        rss = rss_mb()
        per = statistics.median(self.times[-RECENT:])
        eta = per * (self.total - step)
        self._write({"step": step, "loss": result.loss, **result.metrics, "step_s": step_s,
                     "rss_mb": rss, "eta_s": eta})  # fmt: skip
        if not self.said and len(self.times) == FIRST and step < self.total:
            self.said = True
            self._say(f"expected time {_clock(sum(self.times) + eta)} for steps "
                      f"{self.start + 1}-{self.total}: {seconds(per)} a step, the median of "
                      f"steps {step - FIRST + 1}-{step} (validation and checkpoints not "
                      "counted)")  # fmt: skip
        if self.log_every and (step % self.log_every == 0 or step == self.total):
            lr = result.metrics.get("lr")
            self._say("  ".join([f"step {step}/{self.total}", f"loss {result.loss:.4f}",
                                 *([f"lr {lr:.2g}"] if lr is not None else []),
                                 f"{per:.3g} s/step", f"rss {rss:.0f} MiB",
                                 f"eta {_clock(eta)}"]))  # fmt: skip
        return {"info": f"loss {result.loss:.4f}  {1 / per:.2f} step/s", "eta": eta}

    def validation(self, step: int, metrics: dict[str, float]) -> None:
        """Record the validation after step `step`."""
        self._write({"step": step, "validation": metrics})

    def plot(self) -> None:
        """curves.png from the run's records so far."""
        records = [json.loads(line) for line in (self.out / JSONL).read_text().splitlines()]
        plot_curves(records, self.out / CURVES, self.title)

    def _write(self, record: dict[str, Any]) -> None:
        path = self.out / JSONL
        try:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        except OSError as e:
            raise EdgetuneError(f"cannot append to {path}: {e.strerror or e}") from None
        if self._board is not None:
            section, values = (("validation", record["validation"]) if "validation" in record
                               else ("train", record))  # fmt: skip
            for key, value in values.items():
                if key != "step" and isinstance(value, int | float):
                    self._board.add_scalar(f"{section}/{key}", value, record["step"])

    def _say(self, line: str) -> None:
        self.console.print(line, highlight=False, soft_wrap=True)


def _cut_back(path: Path, step: int) -> None:
    """`path` as it stood at `step`: the lines of later steps removed (and a line a kill cut
    short), in one atomic rewrite; nothing where the file is not there."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = itertools.takewhile(lambda line: line.endswith("\n") and _step(line) <= step, lines)
    atomic_write_text(path, "".join(kept))


def _step(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")  # not a record of this module: cut from here


def _board(folder: Path, step: int) -> Any:
    """A TensorBoard writer into `folder` where the tensorboard package is installed, else
    None; on a resume from `step` it hides the events of later steps a killed run wrote."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # the `tensorboard` extra is not installed
        return None
    return SummaryWriter(str(folder), purge_step=step + 1 if step else None, flush_secs=10)


def _clock(s: float) -> str:
    """`45s`, `1m32s`, `2h05m`."""
    minutes, secs = divmod(round(s), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
