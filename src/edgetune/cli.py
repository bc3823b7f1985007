"""The `edgetune` command line: registers the commands of `edgetune.commands`, one module per
verb, and turns bad input into one line on stderr and exit status 1, without a traceback."""

from __future__ import annotations

import errno
import sys
from typing import Annotated

import typer

from edgetune.commands import OVERRIDES, err
from edgetune.commands import bench as bench_command
from edgetune.commands import chat as chat_command
from edgetune.commands import cost as cost_command
from edgetune.commands import data as data_command
from edgetune.commands import eval as eval_command
from edgetune.commands import export as export_command
from edgetune.commands import federate as federate_command
from edgetune.commands import finetune as finetune_command
from edgetune.commands import generate as generate_command
from edgetune.commands import models as models_command
from edgetune.commands import plan as plan_command
from edgetune.errors import EdgetuneError
from edgetune.version import VERSION

app = typer.Typer(
    help="Fine-tune small language models on the device where they run.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edgetune {VERSION}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Fine-tune small language models on the device where they run, within its memory, with
    the cost known before you start."""


app.command(context_settings=OVERRIDES)(finetune_command.finetune)
app.command(name="eval")(eval_command.eval_)
app.command()(generate_command.generate)
app.command()(chat_command.chat)
app.command()(export_command.export)
app.command()(models_command.models)
app.command()(models_command.methods)
app.add_typer(data_command.data_app, name="data")
app.command()(cost_command.cost)
app.command()(cost_command.devices)
app.command(context_settings=OVERRIDES)(plan_command.plan)
app.command(context_settings=OVERRIDES)(federate_command.federate)
app.add_typer(bench_command.bench_app, name="bench")


def main() -> None:
    try:
        app()
    except EdgetuneError as e:
        err.print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except (MemoryError, RuntimeError, OSError) as e:
        if not out_of_memory(e):
            raise
        err.print(
            "[red]error:[/] out of memory: the process could not allocate what the run needs "
            "(a memory limit, or the device's memory); a smaller batch, a shorter sequence or a "
            "leaner method (`edgetune cost` compares them) needs less",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


def out_of_memory(e: BaseException) -> bool:
    """Whether an exception says an allocation failed (Python's, torch's CPU allocator's, or
    the kernel's ENOMEM through a library)."""
    if isinstance(e, MemoryError) or getattr(e, "errno", None) == errno.ENOMEM:
        return True
    text = str(e).lower()
    return any(s in text for s in ("can't allocate memory", "cannot allocate memory",
                                   "out of memory"))  # fmt: skip


if __name__ == "__main__":
    main()
