"""What a client sends up: its update encoded by a codec, and the server's decoding and checks.

A client's update is the difference between its trainable state after local steps and the
global state it started from (names from `Method.trainable_state()`). It travels packed: the
tensors, in the order of their sorted names, concatenated into one flat vector, so a message
carries a handful of arrays whatever the number of tensors (per-array framing would otherwise
cost a few hundred bytes per tensor). Both sides derive the layout from the trainable state
they already hold; the payload names it by an 8-byte fingerprint of the names and shapes, so a
client with another layout is refused rather than misread. Codecs:

- fp32: the delta as is (lossless).
- fp16: the delta in half precision (2 bytes per value).
- int8: per-tensor symmetric quantization, q = round(d / s), s = max|d| / 127 (1 byte per value
  plus one fp32 scale per tensor).
- topk: the `fraction` largest-magnitude entries of each tensor, as indices into the flat
  vector and fp32 values (Aji & Heafield 2017); with error feedback the client keeps what it
  did not send and adds it to the next round's delta (Seide et al. 2014, Karimireddy et al.
  2019).
- seeds (a method whose registry entry sends seeds: MeZO): the (seed, projected gradient,
  learning rate) of every local step, 24 bytes a step (a step of n queries: n entries); the
  server replays them on the global model (FedKSeed-style, Qin et al. ICML 2024).

The server turns every payload back into a full client state (global + delta, or the replayed
model) and rejects it, with a reason, when its layout differs from the global state's, when a
value is NaN or Inf, or when the update's norm is absurd relative to the global state's or
to the other updates of its round (`outliers`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping

import numpy as np
import torch

from edgetune.config import CODECS
from edgetune.errors import EdgetuneError

SEP = "::"  # separates the parts of a seeds payload (seeds::seed, seeds::grad, seeds::lr)
State = dict[str, torch.Tensor]
Arrays = dict[str, np.ndarray]


class MalformedUpdate(Exception):
    """An update the server refuses; the message says why."""


def delta(new: Mapping[str, torch.Tensor], old: Mapping[str, torch.Tensor]) -> State:
    return {k: new[k].detach().float() - old[k].float() for k in new}


def layout_id(state: Mapping[str, torch.Tensor]) -> np.ndarray:
    """8-byte fingerprint of the names and shapes of `state`, in packing order."""
    text = ";".join(f"{k}:{tuple(state[k].shape)}" for k in sorted(state))
    return np.frombuffer(hashlib.blake2b(text.encode(), digest_size=8).digest(), dtype=np.uint8)


def encode(
    update: State, codec: str, fraction: float = 0.01, residual: State | None = None
) -> tuple[Arrays, State | None]:
    """The packed arrays of an update; for topk with a residual (error feedback) also the new
    residual: what was left out this time, to be added to the next update."""
    if codec not in CODECS:
        raise EdgetuneError(f"unknown compression {codec!r}; choose from {', '.join(CODECS)}")
    if codec == "topk" and residual is not None:
        update = {k: d.float() + residual.get(k, torch.zeros_like(d)) for k, d in update.items()}
    parts = [update[k].detach().float().reshape(-1) for k in sorted(update)]
    flat = torch.cat(parts) if parts else torch.zeros(0)
    out: Arrays = {"layout": layout_id(update)}
    new_residual: State | None = None
    if codec == "fp32":
        out["values"] = flat.numpy().copy()
    elif codec == "fp16":
        out["values"] = flat.half().numpy()
    elif codec == "int8":
        scales = torch.tensor([float(p.abs().max()) / 127 if p.numel() else 0.0 for p in parts])
        scales[scales == 0] = 1.0
        per_value = torch.repeat_interleave(scales, torch.tensor([p.numel() for p in parts]))
        out["values"] = torch.round(flat / per_value).clamp(-127, 127).to(torch.int8).numpy()
        out["scales"] = scales.numpy().astype(np.float32)
    else:  # topk
        picks, at = [torch.zeros(0, dtype=torch.long)], 0
        for p in parts:  # per tensor: its largest entries, as positions in the flat vector
            k = min(p.numel(), max(1, math.ceil(fraction * p.numel())))
            picks.append(p.abs().topk(k).indices.sort().values + at)
            at += p.numel()
        idx = torch.cat(picks)
        wide = flat.numel() > np.iinfo(np.int32).max
        out["index"] = idx.to(torch.int64 if wide else torch.int32).numpy()
        out["values"] = flat[idx].numpy().copy()
        if residual is not None:
            left = flat.clone()
            left[idx] = 0
            new_residual = unpack(left, update)
    return out, new_residual


def unpack(flat: torch.Tensor, like: Mapping[str, torch.Tensor]) -> State:
    """A flat vector cut back into tensors named and shaped as `like` (sorted-name order)."""
    out, at = {}, 0
    for k in sorted(like):
        n = like[k].numel()
        out[k] = flat[at : at + n].reshape(like[k].shape)
        at += n
    return out


def decode(arrays: Mapping[str, np.ndarray], codec: str, like: Mapping[str, torch.Tensor]) -> State:
    """The update packed in `arrays`, checked against the layout of `like`."""
    layout = arrays.get("layout")
    if layout is None or not np.array_equal(np.asarray(layout).reshape(-1), layout_id(like)):
        raise MalformedUpdate(
            "the update's layout (tensor names and shapes) differs from the global state's"
        )
    n = sum(t.numel() for t in like.values())
    try:
        flat = _DECODERS[codec](arrays, like, n)
    except (KeyError, ValueError, RuntimeError, IndexError, TypeError) as e:
        raise MalformedUpdate(f"the update cannot be decoded as {codec}: {e}") from None
    if flat.numel() != n:
        raise MalformedUpdate(f"the update holds {flat.numel()} values, the state has {n}")
    return unpack(flat, like)


def _values(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    return np.asarray(arrays["values"]).reshape(-1)


def _dense(arrays: Mapping[str, np.ndarray], like, n: int) -> torch.Tensor:
    return torch.from_numpy(_values(arrays).astype(np.float32))


def _int8(arrays: Mapping[str, np.ndarray], like, n: int) -> torch.Tensor:
    q = _values(arrays)
    if q.dtype != np.int8:
        raise ValueError(f"values are {q.dtype}, not int8")
    scales = torch.from_numpy(np.asarray(arrays["scales"], dtype=np.float32).reshape(-1))
    sizes = torch.tensor([like[k].numel() for k in sorted(like)])
    if scales.numel() != sizes.numel() or q.size != n:
        raise ValueError(f"{scales.numel()} scales and {q.size} values for {len(like)} tensors")
    return torch.from_numpy(q.astype(np.float32)) * torch.repeat_interleave(scales, sizes)


def _topk(arrays: Mapping[str, np.ndarray], like, n: int) -> torch.Tensor:
    idx = torch.from_numpy(np.asarray(arrays["index"]).reshape(-1).astype(np.int64))
    val = torch.from_numpy(_values(arrays).astype(np.float32))
    if idx.numel() != val.numel() or (idx.numel() and (idx.min() < 0 or idx.max() >= n)):
        raise ValueError("indices out of range or not matching the values")
    out = torch.zeros(n, dtype=torch.float32)
    out[idx] = val
    return out


_DECODERS = {"fp32": _dense, "fp16": _dense, "int8": _int8, "topk": _topk}


def encode_seeds(history: list[tuple[int, float, float]]) -> Arrays:
    """MeZO steps (seed, projected gradient, lr) as three 1-D arrays."""
    seeds, grads, lrs = zip(*history, strict=True) if history else ((), (), ())
    return {
        "seeds" + SEP + "seed": np.asarray(seeds, dtype=np.int64),
        "seeds" + SEP + "grad": np.asarray(grads, dtype=np.float64),
        "seeds" + SEP + "lr": np.asarray(lrs, dtype=np.float64),
    }


def decode_seeds(
    arrays: Mapping[str, np.ndarray], max_steps: int
) -> list[tuple[int, float, float]]:
    """The (seed, g, lr) steps of a seeds payload, refusing wrong keys, lengths or values."""
    want = {"seeds" + SEP + k for k in ("seed", "grad", "lr")}
    if set(arrays) != want:
        raise MalformedUpdate(f"a seeds payload has keys {sorted(want)}, got {sorted(arrays)[:4]}")
    seeds, grads, lrs = (
        np.asarray(arrays["seeds" + SEP + k]).reshape(-1) for k in ("seed", "grad", "lr")
    )
    if not len(seeds) == len(grads) == len(lrs) or len(seeds) > max_steps:
        raise MalformedUpdate(f"a seeds payload must hold at most {max_steps} equal-length lists")
    if not (np.isfinite(grads).all() and np.isfinite(lrs).all()):
        raise MalformedUpdate("a seeds payload holds NaN or Inf")
    return [(int(s), float(g), float(lr)) for s, g, lr in zip(seeds, grads, lrs, strict=True)]


def update_norm(update: State) -> float:
    """The L2 norm of an update over all its tensors."""
    return math.sqrt(sum(float(d.double().pow(2).sum()) for d in update.values()))


def check_update(update: State, reference: State, max_ratio: float) -> None:
    """Refuse NaN/Inf and an update whose norm exceeds `max_ratio` x the reference's norm."""
    for name, d in update.items():
        if not torch.isfinite(d).all():
            raise MalformedUpdate(f"tensor {name!r} holds NaN or Inf")
    norm = update_norm(update)
    ref = update_norm(reference)
    if norm > max_ratio * max(ref, 1e-12):
        raise MalformedUpdate(
            f"update norm {norm:.3g} is more than {max_ratio:g} x the global state's ({ref:.3g})"
        )


def outliers(norms: Mapping[int, float], max_ratio: float) -> dict[int, str]:
    """The updates of one round (node -> norm) whose norm exceeds `max_ratio` x the round's
    lower median norm, with the reason. Clients of a round start from the same state and take
    as many steps at the same learning rate, so their norms are alike: an update scaled up
    (x5000 passes the bound against the global state, whose norm is far larger than a round's
    change) stands out against its peers. The lower median is an honest update whenever most
    are; with two updates it is the smaller one."""
    ref = sorted(norms.values())[(len(norms) - 1) // 2] if len(norms) > 1 else 0.0
    if ref == 0.0:  # no peer, or a round that changed nothing (a learning rate of 0)
        return {}
    return {
        node: f"update norm {n:.3g} is more than {max_ratio:g} x the round's median ({ref:.3g})"
        for node, n in norms.items()
        if n > max_ratio * ref
    }
