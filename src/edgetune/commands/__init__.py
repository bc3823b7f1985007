"""The CLI verbs, one module each (finetune, eval, generate, chat, models, methods, data, cost
and devices, plan, federate, bench), plain functions that `edgetune.cli` registers with typer.

Shared here: the one override convention (`section.key=value` after the flags, the same keys
as a YAML run config) and the consoles.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from edgetune.errors import EdgetuneError

out = Console()
err = Console(stderr=True)
# a typer command that takes `section.key=value` arguments after its flags
OVERRIDES = {"allow_extra_args": True, "ignore_unknown_options": True}


def wide_console() -> Console:
    """Rich console; wide when output is not a terminal so tables stay readable in logs."""
    return Console(width=None if sys.stdout.isatty() else 200)


def overrides(flags: Mapping[str, Any], extra: Sequence[str], command: str) -> dict[str, Any]:
    """The config overrides of a command line: its flags that were given (typed, by config
    key) and its extra `section.key=value` arguments (read as each key's type). An extra
    argument that looks like a flag is one the command does not have."""
    out: dict[str, Any] = {k: (str(v) if isinstance(v, Path) else v)
                           for k, v in flags.items() if v is not None}  # fmt: skip
    for item in extra:
        if item.startswith("-"):
            raise EdgetuneError(
                f"no such option: {item.split('=')[0]}; see `edgetune {command} --help`"
            )
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise EdgetuneError(
                f"{item!r} is neither an option nor a section.key=value setting; see "
                f"`edgetune {command} --help`"
            )
        from edgetune.fields import Raw

        out[key.strip()] = Raw(value)
    return out
