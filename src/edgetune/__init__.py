"""edgetune: fine-tune small language models on the device where they run.

The public Python API. Imports are lazy so that `import edgetune.cost` stays torch-free.

    import edgetune
    result = edgetune.finetune(model="minilm-l6", data="reuters-r8", out="runs/r8", max_steps=60)
    print(result.metrics["eval"]["accuracy"])
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetune.errors import EdgetuneError
from edgetune.version import VERSION

if TYPE_CHECKING:
    from edgetune.config import RunConfig
    from edgetune.train import RunResult

__version__ = VERSION

# keyword -> dotted config key, for the most used settings
_SHORTCUTS = {
    "model": "model.name",
    "random_init": "model.random_init",
    "data": "data.name",
    "task": "data.task",
    "seq_len": "data.seq_len",
    "method": "train.method",
    "max_steps": "train.max_steps",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "lr": "train.lr",
    "seed": "train.seed",
}


def load_config(
    config: str | Path | None = None, overrides: dict[str, Any] | None = None, **shortcuts: Any
) -> RunConfig:
    """A run config from an optional YAML file, dotted overrides and keyword shortcuts."""
    from edgetune.config import load_config as _load

    items = dict(overrides or {})
    for key, value in shortcuts.items():
        if key == "out":
            items["out"] = str(value)
        elif key in _SHORTCUTS:
            items[_SHORTCUTS[key]] = value
        else:
            raise EdgetuneError(f"unknown setting {key!r}; use overrides={{'section.key': value}}")
    return _load(config, items)


def finetune(
    config: RunConfig | str | Path | None = None,
    *,
    resume: bool = False,
    overrides: dict[str, Any] | None = None,
    **shortcuts: Any,
) -> RunResult:
    """Fine-tune: `config` is a RunConfig or a YAML path; keywords as in `load_config`. With
    `resume` and no config, the run folder's own config.yaml is the config (as the CLI)."""
    from edgetune.config import RunConfig
    from edgetune.train import finetune as _finetune

    if isinstance(config, RunConfig):
        cfg = config
    else:
        out = shortcuts.get("out") or (overrides or {}).get("out")
        if resume and config is None and out and (Path(out) / "config.yaml").is_file():
            config = Path(out) / "config.yaml"
        cfg = load_config(config, overrides, **shortcuts)
    return _finetune(cfg, resume=resume)


__all__ = ["EdgetuneError", "__version__", "finetune", "load_config"]
