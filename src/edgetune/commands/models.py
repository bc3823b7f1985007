"""`edgetune models` (the model registry) and `edgetune methods` (the learning rules)."""

from __future__ import annotations

from rich.table import Table

from edgetune.commands import wide_console


def models() -> None:
    """List the model registry (model type, kind, parameter count, where weights come from)
    and the families that train, with the model types of each."""
    import torch

    from edgetune.families import FAMILIES, MODEL_TYPES
    from edgetune.models.bundled import bundled_available
    from edgetune.models.registry import SPECS
    from edgetune.pipeline import quiet_libraries

    quiet_libraries()
    from transformers import AutoModel

    table = Table("name", "type", "kind", "params", "weights", "hub id")
    for name, spec in SPECS.items():
        config = spec.config()
        with torch.device("meta"):
            params = sum(p.numel() for p in AutoModel.from_config(config).parameters())
        weights = "bundled" if bundled_available(name) else ("hub" if spec.hub_id else "none")
        table.add_row(
            name, config.model_type, spec.kind, f"{params / 1e6:.1f}M", weights, spec.hub_id or "-"
        )
    console = wide_console()
    console.print(table)
    console.print("families that train, by model type (any size, from a folder or the hub):")
    for family in FAMILIES:
        types = ", ".join(t for t, f in MODEL_TYPES.items() if f == family)
        console.print(f"  {family}: {types}")


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
