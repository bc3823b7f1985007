"""`edgetune models` (the model registry) and `edgetune methods` (the learning rules)."""

from __future__ import annotations

from rich.table import Table

from edgetune.commands import wide_console


def models() -> None:
    """List the model registry: shape, parameter count, where weights come from."""
    import torch

    from edgetune.models.bundled import bundled_available
    from edgetune.models.registry import SPECS
    from edgetune.pipeline import quiet_libraries

    quiet_libraries()
    from transformers import AutoModel

    table = Table("name", "kind", "params", "weights", "hub id")
    for name, spec in SPECS.items():
        with torch.device("meta"):
            params = sum(p.numel() for p in AutoModel.from_config(spec.config()).parameters())
        weights = "bundled" if bundled_available(name) else ("hub" if spec.hub_id else "none")
        table.add_row(name, spec.kind, f"{params / 1e6:.1f}M", weights, spec.hub_id or "-")
    wide_console().print(table)


def methods() -> None:
    """List the learning rules: name, what it does, how a step spends memory, its options."""
    import dataclasses

    from edgetune.methods import METHODS

    table = Table("name", "what", "step", "options")
    for spec in METHODS.values():
        rule = spec.rule
        step = f"{rule.update}, trains {rule.trains}" + (", lockstep" if rule.lockstep else "")
        options = ", ".join(f.name for f in dataclasses.fields(spec.options)) or "-"
        table.add_row(spec.name, spec.summary, step, options)
    wide_console().print(table)
