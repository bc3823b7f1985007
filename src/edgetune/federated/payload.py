"""What a client sends up: its update encoded by a codec, and the server's decoding and checks.

A client's update is the difference between its trainable state after local steps and the
global state it started from, tensor by tensor (names from `Method.trainable_state()`). Codecs:

- fp32: the delta as is (lossless).
- fp16: the delta in half precision (2 bytes per value).
- int8: per-tensor symmetric quantization, q = round(d / s), s = max|d| / 127 (1 byte per value
  plus one fp32 scale per tensor).
- topk: the `fraction` largest-magnitude entries of each tensor, as int32 indices and fp32
  values (Aji & Heafield 2017); with error feedback the client keeps what it did not send and
  adds it to the next round's delta (Seide et al. 2014, Karimireddy et al. 2019).
- seeds (MeZO only): the (seed, projected gradient, learning rate) of every local step, 24 bytes
  a step; the server replays them on the global model (FedKSeed-style, Qin et al. ICML 2024).

The server turns every payload back into a full client state (global + delta, or the replayed
model) and rejects it, with a reason, when names or shapes differ from the global state, when a
value is NaN or Inf, or when the update's norm is absurd relative to the global state's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np
import torch

from edgetune.errors import EdgetuneError

CODECS = ("fp32", "fp16", "int8", "topk")
SEEDS = "seeds"
SEP = "::"  # separates a tensor name from the part of its encoding (name::scale, name::idx)
State = dict[str, torch.Tensor]
Arrays = dict[str, np.ndarray]


class MalformedUpdate(Exception):
    """An update the server refuses; the message says why."""


def check_codec(name: str) -> str:
    if name not in (*CODECS, SEEDS):
        raise EdgetuneError(f"unknown compression {name!r}; choose from {', '.join(CODECS)}")
    return name


def delta(new: Mapping[str, torch.Tensor], old: Mapping[str, torch.Tensor]) -> State:
    return {k: new[k].detach().float() - old[k].float() for k in new}


def encode(
    update: State, codec: str, fraction: float = 0.01, residual: State | None = None
) -> tuple[Arrays, State | None]:
    """Encoded arrays of an update; for topk with a residual (error feedback) also the new
    residual: what was left out this time, to be added to the next update."""
    out: Arrays = {}
    new_residual: State | None = {} if residual is not None else None
    for name, d in update.items():
        d = d.float()
        if codec == "fp32":
            out[name] = d.numpy().copy()
        elif codec == "fp16":
            out[name] = d.half().numpy()
        elif codec == "int8":
            scale = float(d.abs().max()) / 127 or 1.0
            out[name] = torch.round(d / scale).clamp(-127, 127).to(torch.int8).numpy()
            out[name + SEP + "scale"] = np.asarray([scale], dtype=np.float32)
        elif codec == "topk":
            if residual is not None:
                d = d + residual.get(name, torch.zeros_like(d))
            flat = d.reshape(-1)
            k = max(1, math.ceil(fraction * flat.numel()))
            idx = flat.abs().topk(k).indices.sort().values
            out[name + SEP + "idx"] = idx.to(torch.int32).numpy()
            out[name + SEP + "val"] = flat[idx].numpy().copy()
            if new_residual is not None:
                left = flat.clone()
                left[idx] = 0
                new_residual[name] = left.reshape(d.shape)
        else:
            raise EdgetuneError(f"unknown compression {codec!r}; choose from {', '.join(CODECS)}")
    return out, new_residual


def decode(arrays: Mapping[str, np.ndarray], codec: str, like: Mapping[str, torch.Tensor]) -> State:
    """The update encoded in `arrays`, checked against the names and shapes of `like`."""
    parts: dict[str, dict[str, np.ndarray]] = {}
    for key, value in arrays.items():
        name, _, part = key.partition(SEP)
        parts.setdefault(name, {})[part] = value
    missing, extra = sorted(set(like) - set(parts)), sorted(set(parts) - set(like))
    if missing or extra:
        raise MalformedUpdate(f"tensor names differ: missing {missing[:3]}, unexpected {extra[:3]}")
    out: State = {}
    for name, ref in like.items():
        p, shape = parts[name], tuple(ref.shape)
        try:
            out[name] = _DECODERS[codec](p, shape)
        except (KeyError, ValueError, RuntimeError, IndexError, TypeError) as e:
            raise MalformedUpdate(f"tensor {name!r} cannot be decoded as {codec}: {e}") from None
        if tuple(out[name].shape) != shape:
            raise MalformedUpdate(
                f"tensor {name!r} has shape {tuple(out[name].shape)}, expected {shape}"
            )
    return out


def _dense(p: dict[str, np.ndarray], shape: tuple[int, ...]) -> torch.Tensor:
    return torch.from_numpy(np.asarray(p[""], dtype=np.float32).copy())


def _int8(p: dict[str, np.ndarray], shape: tuple[int, ...]) -> torch.Tensor:
    if p[""].dtype != np.int8:
        raise ValueError(f"values are {p[''].dtype}, not int8")
    return torch.from_numpy(p[""].astype(np.float32)) * float(p["scale"].reshape(-1)[0])


def _topk(p: dict[str, np.ndarray], shape: tuple[int, ...]) -> torch.Tensor:
    idx, val = torch.from_numpy(p["idx"].astype(np.int64)), torch.from_numpy(p["val"].copy())
    n = math.prod(shape)
    if idx.numel() != val.numel() or (idx.numel() and (idx.min() < 0 or idx.max() >= n)):
        raise ValueError("indices out of range or not matching the values")
    out = torch.zeros(n, dtype=torch.float32)
    out[idx] = val.float()
    return out.reshape(shape)


_DECODERS: dict[str, Callable[[dict[str, np.ndarray], tuple[int, ...]], torch.Tensor]] = {
    "fp32": _dense,
    "fp16": _dense,
    "int8": _int8,
    "topk": _topk,
}


def encode_seeds(history: list[tuple[int, float, float]]) -> Arrays:
    """MeZO steps (seed, projected gradient, lr) as three 1-D arrays."""
    seeds, grads, lrs = zip(*history, strict=True) if history else ((), (), ())
    return {
        "mezo" + SEP + "seed": np.asarray(seeds, dtype=np.int64),
        "mezo" + SEP + "grad": np.asarray(grads, dtype=np.float64),
        "mezo" + SEP + "lr": np.asarray(lrs, dtype=np.float64),
    }


def decode_seeds(
    arrays: Mapping[str, np.ndarray], max_steps: int
) -> list[tuple[int, float, float]]:
    """The (seed, g, lr) steps of a seeds payload, refusing wrong keys, lengths or values."""
    want = {"mezo" + SEP + k for k in ("seed", "grad", "lr")}
    if set(arrays) != want:
        raise MalformedUpdate(f"a seeds payload has keys {sorted(want)}, got {sorted(arrays)[:4]}")
    seeds, grads, lrs = (
        np.asarray(arrays["mezo" + SEP + k]).reshape(-1) for k in ("seed", "grad", "lr")
    )
    if not len(seeds) == len(grads) == len(lrs) or len(seeds) > max_steps:
        raise MalformedUpdate(f"a seeds payload must hold at most {max_steps} equal-length lists")
    if not (np.isfinite(grads).all() and np.isfinite(lrs).all()):
        raise MalformedUpdate("a seeds payload holds NaN or Inf")
    return [(int(s), float(g), float(lr)) for s, g, lr in zip(seeds, grads, lrs, strict=True)]


def check_update(update: State, reference: State, max_ratio: float) -> None:
    """Refuse NaN/Inf and an update whose norm exceeds `max_ratio` x the reference's norm."""
    for name, d in update.items():
        if not torch.isfinite(d).all():
            raise MalformedUpdate(f"tensor {name!r} holds NaN or Inf")
    norm = math.sqrt(sum(float(d.double().pow(2).sum()) for d in update.values()))
    ref = math.sqrt(sum(float(t.double().pow(2).sum()) for t in reference.values()))
    if norm > max_ratio * max(ref, 1e-12):
        raise MalformedUpdate(
            f"update norm {norm:.3g} is more than {max_ratio:g} x the global state's ({ref:.3g})"
        )
