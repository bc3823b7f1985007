"""The progress bar of every long job (training, evaluation, the contribution analysis): what it
does, done/total, a line of its own (loss and step rate, the candidate measured), elapsed and
remaining time; transient, so a log keeps only the lines that matter."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def progress_bar(console: Console | None = None) -> Progress:
    """A bar on `console` (default: stderr); tasks take an `info` field."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console or Console(stderr=True),
        transient=True,
    )
