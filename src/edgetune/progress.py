"""The progress bar of every long job (training, evaluation, the contribution analysis): what it
does, done/total, a line of its own (loss and step rate, the candidate measured), elapsed and
remaining time. It draws only on a terminal, and goes when the job ends unless asked to stay;
a log file gets the job's own lines instead (training: `edgetune.report.watch`)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class _Remaining(TimeRemainingColumn):
    """The remaining time a task states (its `eta` field, seconds: training's, from measured
    step times), else rich's estimate."""

    def render(self, task: Task) -> Text:
        eta = task.fields.get("eta")
        if eta is None:
            return super().render(task)
        minutes, seconds = divmod(int(eta), 60)
        hours, minutes = divmod(minutes, 60)
        return Text(f"{hours:d}:{minutes:02d}:{seconds:02d}", style="progress.remaining")


def progress_bar(console: Console | None = None, keep: bool = False) -> Progress:
    """A bar on `console` (default: stderr); tasks take an `info` field and may take `eta`.
    With `keep`, the bar stays on the terminal when it stops (a task not removed shows done)."""
    console = console or Console(stderr=True)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        _Remaining(),
        console=console,
        transient=not (keep and console.is_terminal),  # a file would get the last frame
    )
