"""Checkpoints of a run, each a folder written atomically:

checkpoints/step-000040/
  checkpoint.json        format, edgetune version, model, method, step, tensor shapes, and the
                         SHA-256 of each file below (verified before a resume reads it)
  trainable.safetensors  the method's trainable state (what changed)
  state.pt               optimizer/schedule state and the torch RNG state (weights_only)
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from edgetune.errors import EdgetuneError
from edgetune.io import atomic_dir
from edgetune.version import VERSION

FORMAT = 2  # 2 adds the files' checksums; a format-1 checkpoint is read without them
FILES = ("trainable.safetensors", "state.pt")


@dataclass
class Checkpoint:
    path: Path
    step: int
    trainable: dict[str, torch.Tensor]
    state: dict[str, Any]


def save_checkpoint(
    run_dir: Path, step: int, identity: dict[str, str], trainable: dict, state: dict, keep: int
) -> Path:
    target = run_dir / "checkpoints" / f"step-{step:06d}"
    tensors = {
        k: v.detach().contiguous() for k, v in trainable.items()
    }  # no copy: RAM is the budget
    meta = {
        "format": FORMAT,
        "edgetune": VERSION,
        "step": step,
        **identity,
        "tensors": {k: list(v.shape) for k, v in tensors.items()},
    }
    with atomic_dir(target) as tmp:
        save_file(tensors, str(tmp / "trainable.safetensors"))
        torch.save(state, tmp / "state.pt")
        meta["sha256"] = {name: _sha256(tmp / name) for name in FILES}
        (tmp / "checkpoint.json").write_text(json.dumps(meta, indent=1))
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def stale_temporaries(run_dir: Path) -> list[Path]:
    """Checkpoint folders a killed process left half-written (`.step-*.tmp`)."""
    folder = run_dir / "checkpoints"
    return sorted(folder.glob(".step-*.tmp")) if folder.is_dir() else []


def list_checkpoints(run_dir: Path) -> list[Path]:
    folder = run_dir / "checkpoints"
    return sorted(folder.glob("step-[0-9]*")) if folder.is_dir() else []


def load_checkpoint(path: Path, identity: dict[str, str]) -> Checkpoint:
    """Read a checkpoint, refusing a corrupt one or one from a different model or method."""
    try:
        meta = json.loads((path / "checkpoint.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise EdgetuneError(
            f"{path} is not an edgetune checkpoint (checkpoint.json missing or corrupt)"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") not in (1, FORMAT):
        raise EdgetuneError(f"{path} is a checkpoint of an unknown format")
    for name, digest in (meta.get("sha256") or {}).items():
        if name not in FILES or not (path / name).is_file() or _sha256(path / name) != digest:
            raise EdgetuneError(
                f"checkpoint {path} is corrupt: {name} does not match its checksum; delete "
                "this checkpoint folder to resume from the one before it"
            )
    for key, want in identity.items():
        if meta.get(key) != want:
            raise EdgetuneError(
                f"checkpoint {path} was made with {key}={meta.get(key)!r}, "
                f"this run has {key}={want!r}; use a matching config or another --out"
            )
    try:
        trainable = load_file(str(path / "trainable.safetensors"))
        state = torch.load(path / "state.pt", weights_only=True)
    except pickle.UnpicklingError:
        raise EdgetuneError(
            f"checkpoint {path}: state.pt holds objects other than tensors and plain values; "
            "refused (edgetune loads checkpoints with weights_only)"
        ) from None
    except (OSError, SafetensorError, RuntimeError, EOFError) as e:
        raise EdgetuneError(f"checkpoint {path} is corrupt: {str(e).splitlines()[0]}") from None
    shapes = {k: list(v.shape) for k, v in trainable.items()}
    if shapes != meta.get("tensors"):
        raise EdgetuneError(
            f"checkpoint {path} is corrupt: its tensors do not match checkpoint.json"
        )
    return Checkpoint(path, int(meta["step"]), trainable, state)
