"""A sparse run's trained part as a delta over its base: what a device that already holds the
base needs to become the fine-tuned model.

A method that trains a part of the base given by an update scheme (`sparse`: its
`scheme_option`, `edgetune.methods.registry`) changes only the rows, biases and whole tensors
the scheme names; every other weight is the base's, bit for bit. `write` puts two files in `OUT`:

    <name>-delta.safetensors   the run's trained tensors as its checkpoints name them
                               (`edgetune.methods.state`: `<parameter>[a:b]` for rows a..b-1 of a
                               weight, `<parameter>[:,a:b]` for a GPT-2 Conv1D's columns, the
                               parameter's name for a whole tensor), values from the run's
                               saved model
    <name>-delta.json          the manifest: the base (model name, how the run held it, seed,
                               task and labels), the method and scheme, and per tensor the
                               parameter, rows and shape it replaces

`apply_delta(manifest)` loads the base as the run loaded it (a held base made fp32 as the run
saved it) and writes the tensors in: the run's saved model, bitwise (`check` verifies it).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from edgetune.errors import EdgetuneError
from edgetune.export.source import RunModel
from edgetune.io import atomic_write, atomic_write_text
from edgetune.methods.base import MethodSettings
from edgetune.methods.registry import METHODS, build_method
from edgetune.methods.state import merge_trainable_state, parse_key
from edgetune.models.loader import LoadedModel, load_model
from edgetune.models.lowbit import densify
from edgetune.trained import portable
from edgetune.version import VERSION

QUANTS = ("fp32",)
FORMAT = 1


def trained_tensors(model: RunModel) -> dict[str, torch.Tensor]:
    """The tensors the run's method trains, read from its saved model: the method built over
    a copy of that model (nothing is trained), its trainable state."""
    cfg = model.cfg
    if cfg is None:
        raise EdgetuneError(f"a delta is written from a run folder (its config names the base "
                            f"and the scheme); {model.name} is not one")  # fmt: skip
    if cfg.spec.scheme_option is None:
        partial = [name for name, spec in METHODS.items() if spec.scheme_option]
        raise EdgetuneError(
            f"{model.name} trained with {cfg.train.method}, which does not train a part of its "
            f"base chosen by a scheme; a delta is written for {', '.join(partial)} runs (for "
            "LoRA, the adapter is the small file: --format gguf writes it for llama.cpp)"
        )
    settings = MethodSettings(lr=0.0, total_steps=1, max_grad_norm=None, options=cfg.method)
    method = build_method(cfg.train.method, copy.deepcopy(model.model), settings)
    return {k: v.detach().clone().contiguous() for k, v in method.trainable_state().items()}


def write(model: RunModel, out: Path, quant: str) -> list[Path]:
    """Write `model`'s delta as `out/<name>-delta.safetensors` and its manifest
    `out/<name>-delta.json`; returns [manifest, tensors]."""
    tensors = trained_tensors(model)
    cfg = model.cfg
    assert cfg is not None  # trained_tensors refused a model without a run
    params = dict(model.model.named_parameters(remove_duplicate=False))
    listed = {}
    for key in tensors:
        name, index = parse_key(key)
        rows = None if index is None else [index[-1].start, index[-1].stop]
        listed[key] = {"parameter": name, "shape": list(params[name].shape),
                       "axis": None if index is None else len(index) - 1,
                       "rows": rows}  # fmt: skip
    config: Any = model.model.config
    m = cfg.model
    data = out / f"{model.name}-delta.safetensors"
    manifest = {
        "format": FORMAT,
        "edgetune": VERSION,
        "base": {
            "name": portable(m.name),
            "weights": m.weights,
            "random_init": m.random_init,
            "seed": cfg.train.seed,
            "adapter": portable(m.adapter) if m.adapter else None,
            "task": model.task,
            "num_labels": config.num_labels if model.task == "classify" else None,
        },
        "method": cfg.spec.label(cfg.method),
        "tensors_file": data.name,
        "changed_values": sum(v.numel() for v in tensors.values()),
        "model_values": sum(p.numel() for p in model.model.parameters()),
        "tensors": listed,
    }
    atomic_write(data, lambda tmp: save_file(tensors, str(tmp), {"base": m.name}))
    path = out / f"{model.name}-delta.json"
    atomic_write_text(path, json.dumps(manifest, indent=1) + "\n")
    return [path, data]


def apply_delta(manifest: Path) -> LoadedModel:
    """The fine-tuned model of a delta: its base loaded as the run loaded it (fp32; a held
    base made dense as the run saved it) with the delta's tensors written in."""
    try:
        meta = json.loads(Path(manifest).read_text())
        base = meta["base"]
        tensors = load_file(str(Path(manifest).parent / meta["tensors_file"]))
    except (OSError, ValueError, KeyError) as e:
        raise EdgetuneError(f"{manifest} is not a readable edgetune delta manifest: {e}") from None
    loaded = load_model(base["name"], base["task"], num_labels=base["num_labels"],
                        random_init=base["random_init"], seed=base["seed"],
                        weights=base["weights"], adapter=base["adapter"])  # fmt: skip
    net = densify(loaded.model)
    net.load_state_dict(merge_trainable_state(net.state_dict(), tensors))
    loaded.model = net.eval()
    return loaded


def check(model: RunModel, files: list[Path], quant: str,
          sequences: list) -> tuple[dict[str, float], list[str]]:  # fmt: skip
    """The base with the delta applied against the run's saved model, tensor by tensor,
    bitwise; the delta's size against the model's."""
    manifest = files[0]
    meta = json.loads(manifest.read_text())
    rebuilt = apply_delta(manifest).model.state_dict()
    want = model.model.state_dict()
    differ = [k for k, v in want.items()
              if k not in rebuilt or not torch.equal(rebuilt[k].to(v.dtype), v)]  # fmt: skip
    figures = {
        "tensors_in_delta": len(meta["tensors"]),
        "delta_mb": files[1].stat().st_size / 2**20,
        "changed_share": meta["changed_values"] / meta["model_values"],
        "model_tensors": len(want),
        "tensors_differing": len(differ),
    }
    failures = []
    if differ:
        failures.append(f"the base with the delta differs from the run's model in {len(differ)} "
                        f"tensors ({', '.join(differ[:3])})")  # fmt: skip
    return figures, failures
