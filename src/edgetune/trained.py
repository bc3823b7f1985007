"""What a run leaves to use, and the one way to load it back.

    runs/<name>/model/     the trained model, a plain transformers folder with its tokenizer:
                           every method's; for a method that trains adapters (`lora`) the
                           adapters merged into the base, unless `train.merge` is off or the
                           base was held in a low-precision format (`model.weights`: the run
                           never had its fp32 weights to merge into)
    runs/<name>/adapter/   a method that trains adapters: the PEFT adapter
                           (adapter_config.json, adapter_model.safetensors) and the tokenizer;
                           `PeftModel.from_pretrained(base, "runs/<name>/adapter")` loads it.
                           Its `base_model_name_or_path` is the model the run started from: a
                           registry name, an absolute path, or a hub id

`trained_config(name)` reads any of these back: a run folder (merged model, adapter or both),
an adapter folder, a model folder, a .gguf file, a registry name or a hub id. `eval`,
`generate`, `chat` and `export` load through it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgetune.config import RunConfig, load_config
from edgetune.errors import EdgetuneError
from edgetune.io import atomic_dir
from edgetune.methods.base import Method
from edgetune.models.loader import LoadedModel, load_model
from edgetune.models.quantized import is_held

MERGED, ADAPTER = "model", "adapter"  # the two folders of a run that hold its trained model


def save_trained(method: Method, out: Path, tokenizer, base: str, merge: bool = True) -> list[str]:
    """Write `method`'s trained model into run folder `out` (the layout above) once training
    is over; the folders written. The adapter is written first: the merge that follows changes
    the model in place. `base`: the model the run started from, as the adapter names it."""
    written = []
    model: Any = method.model
    if hasattr(model, "peft_config"):  # a PEFT model: its adapter on its own
        for config in model.peft_config.values():
            config.base_model_name_or_path = portable(base)
        with atomic_dir(out / ADAPTER) as tmp:
            # the vocabulary never changes here: no look-up of the base's config (on the hub)
            model.save_pretrained(tmp, save_embedding_layers=False)
            tokenizer.save_pretrained(tmp)
        written.append(ADAPTER)
        if not merge or is_held(model):
            return written
    with atomic_dir(out / MERGED) as tmp:
        method.export_model().save_pretrained(tmp)  # type: ignore[operator]
        tokenizer.save_pretrained(tmp)
    return [*written, MERGED]


def portable(name: str) -> str:
    """A model name that means the same from any working folder: a local path made absolute;
    a registry name or hub id as it is."""
    return str(Path(name).resolve()) if Path(name).exists() else name


def adapter_folder(run: Path) -> Path | None:
    """The folder of a run that holds its PEFT adapter, if it has one."""
    found = run / ADAPTER
    return found if (found / "adapter_config.json").is_file() else None


def trained_config(name: str, changes: Mapping[str, Any] | None = None) -> RunConfig:
    """The config that loads the trained model `name` names, with `changes` over it: a run
    folder's own config.yaml, its model section pointing at the merged model where the run
    saved one, else at the run's base (as the run held it) with its adapter; an adapter
    folder over the base its adapter_config.json names; anything else as `model.name`."""
    path = Path(name)
    base: Path | None = None
    if (path / "config.yaml").is_file():  # a run folder
        base = path / "config.yaml"
        if (path / MERGED / "config.json").is_file():
            settings = {"model.name": str(path / MERGED), "model.random_init": False,
                        "model.adapter": None}  # fmt: skip
        elif (adapter := adapter_folder(path)) is not None:
            settings = {"model.adapter": str(adapter)}
        else:
            raise EdgetuneError(f"{path} holds no trained model (no {MERGED}/ or {ADAPTER}/ "
                                "folder in it): the run has not finished")  # fmt: skip
    elif (path / "adapter_config.json").is_file():  # a PEFT adapter on its own
        settings = {"model.name": _adapter_base(path), "model.adapter": str(path)}
    else:
        settings = {"model.name": name, "model.random_init": False}
    return load_config(base, {**settings, **(changes or {})})


def _adapter_base(folder: Path) -> str:
    from peft import PeftConfig

    try:
        base = PeftConfig.from_pretrained(str(folder)).base_model_name_or_path
    except (ValueError, OSError) as e:
        raise EdgetuneError(f"{folder}/adapter_config.json cannot be read: {e}") from None
    if not base:
        raise EdgetuneError(f"{folder}/adapter_config.json names no base model "
                            "(base_model_name_or_path)")  # fmt: skip
    return base


def load_trained(name: str, task: str = "lm", weights: str | None = None) -> LoadedModel:
    """The trained model `name` names (`trained_config`), loaded for `task`, its frozen base
    held in `weights` (default: as the run held it; fp32 for anything else). A run that
    trained a classifier is refused for a task that generates text."""
    cfg = trained_config(name)
    if Path(name, "config.yaml").is_file() and task != "classify" and run_task(cfg) == "classify":
        raise EdgetuneError(f"{name} is a classifier run ({cfg.model.name} on {cfg.data.name}): "
                            "it labels text and does not generate it")  # fmt: skip
    m = cfg.model
    return load_model(m.name, task, random_init=m.random_init, seed=cfg.train.seed,
                      weights=weights or m.weights, adapter=m.adapter)  # fmt: skip


def run_task(cfg: RunConfig) -> str | None:
    """The task a run's config trains: its `data.task`, or its bundled data set's own."""
    from edgetune.data.registry import DATASETS

    spec = DATASETS.get(cfg.data.name)
    return cfg.data.task or (spec.task if spec is not None else None)
