"""`UpdateScheme`: the one description of a sparse update, shared by every part of edgetune.

A scheme names *units* of a transformer block by layer index and role, independent of the
architecture's module names (the runtime maps roles to modules in `edgetune.models.anatomy`;
the cost model maps them to its analytic blocks). Anything the scheme does not name is frozen.

The ground floor: imports nothing of edgetune but errors and io, so the cost model, the
methods, the anatomy of a model and the planner all read the same type.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edgetune.errors import EdgetuneError
from edgetune.io import atomic_write_text, read_yaml

# Roles of the trainable pieces of a transformer block, plus the task head.
#   qkv      the query/key/value projections of self-attention
#   attn_out the attention output projection
#   ffn1     the first feed-forward linear (gate and up projections of a gated FFN)
#   ffn2     the second feed-forward linear (down projection)
#   norm     the block's normalization layers (weight and bias)
#   head     the task head (classifier or LM head); `layer` is ignored
UNITS = ("qkv", "attn_out", "ffn1", "ffn2", "norm", "head")


@dataclass(frozen=True)
class UnitUpdate:
    """How one unit of one layer trains.

    weight_fraction: 0 leaves the weight frozen, 1 trains all of it, a value in between trains
        that fraction of the weight's output channels (rows), the rest stays frozen.
    bias: whether the unit's biases train (a bias gradient needs no stored input activation).
    """

    unit: str
    layer: int = -1
    weight_fraction: float = 1.0
    bias: bool = True

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise EdgetuneError(f"unknown unit {self.unit!r} in update scheme; known: {UNITS}")
        if not 0.0 <= self.weight_fraction <= 1.0:
            raise EdgetuneError(
                f"weight_fraction must be in [0, 1], got {self.weight_fraction} for {self.unit}"
            )
        if self.weight_fraction == 0.0 and not self.bias:
            raise EdgetuneError(f"unit {self.unit} of layer {self.layer} trains nothing")
        if self.unit != "head" and self.layer < 0:
            raise EdgetuneError(f"unit {self.unit} needs a layer index >= 0")


@dataclass(frozen=True)
class UpdateScheme:
    """A set of unit updates; everything not named stays frozen."""

    updates: tuple[UnitUpdate, ...] = field(default_factory=tuple)
    name: str = "custom"

    # -- built-in schemes ---------------------------------------------------------------
    @classmethod
    def last_k(cls, n_layers: int, k: int, fraction: float = 1.0) -> UpdateScheme:
        """Every unit of the last k blocks, weights at `fraction` of their output channels."""
        layers = _last_layers(n_layers, k)
        ups = [UnitUpdate(u, i, fraction) for i in layers for u in UNITS if u != "head"]
        return cls((*ups, UnitUpdate("head")), f"last-{k}")

    @classmethod
    def bias_only(cls, n_layers: int, k: int | None = None) -> UpdateScheme:
        """Biases (and norms) of the last k blocks (all blocks if k is None), plus the head."""
        layers = _last_layers(n_layers, n_layers if k is None else k)
        units = [u for u in UNITS if u != "head"]
        ups = [UnitUpdate(u, i, 0.0, True) for i in layers for u in units]
        return cls((*ups, UnitUpdate("head")), "bias-only")

    @classmethod
    def qkv_ffn1(cls, n_layers: int, k: int, fraction: float = 1.0) -> UpdateScheme:
        """PockEngine's BERT choice: QKV and first FFN linear of the last k blocks, biases of
        the other units of those blocks, plus the head."""
        ups: list[UnitUpdate] = []
        for i in _last_layers(n_layers, k):
            ups += [UnitUpdate("qkv", i, fraction), UnitUpdate("ffn1", i, fraction)]
            ups += [UnitUpdate(u, i, 0.0, True) for u in ("attn_out", "ffn2", "norm")]
        return cls((*ups, UnitUpdate("head")), f"qkv-ffn1-{k}")

    @classmethod
    def channel_ratios(cls, n_layers: int, ratios: Sequence[float]) -> UpdateScheme:
        """MIT tiny-training's schedule: the last len(ratios) blocks train every unit's weight at
        the given output-channel ratio (ratios[-1] is the last block's), with biases, plus the
        head. A ratio of 0 leaves that block bias-only."""
        layers = _last_layers(n_layers, len(ratios))
        ups = [
            UnitUpdate(u, i, float(r))
            for i, r in zip(layers, ratios, strict=True)
            for u in UNITS
            if u != "head"
        ]
        return cls((*ups, UnitUpdate("head")), "ratios-" + ",".join(f"{r:g}" for r in ratios))

    @classmethod
    def builtin(cls, name: str, n_layers: int) -> UpdateScheme:
        """A built-in scheme by name: `last-K`, `bias-only` or `bias-only-K`, `qkv-ffn1-K`
        (the first and third optionally `@F` for an output-channel fraction, e.g. `last-2@0.25`)
        and `ratios-R1,R2,...` (one channel ratio per block, the last block's last)."""
        kind, arg, fraction = _parse_builtin(name)
        if kind == "ratios":
            return cls.channel_ratios(n_layers, arg)
        if kind == "bias-only":
            return cls.bias_only(n_layers, arg)
        if kind == "qkv-ffn1":
            return cls.qkv_ffn1(n_layers, arg, fraction)
        return cls.last_k(n_layers, arg, fraction)

    # -- queries --------------------------------------------------------------------------
    def lowest_layer(self) -> int | None:
        """The lowest block index that trains (backward stops there); None if only the head."""
        layers = [u.layer for u in self.updates if u.unit != "head"]
        return min(layers) if layers else None

    def for_layer(self, layer: int) -> list[UnitUpdate]:
        return [u for u in self.updates if u.layer == layer and u.unit != "head"]

    def trains_head(self) -> bool:
        return any(u.unit == "head" for u in self.updates)

    # -- files ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"name": self.name, "updates": [asdict(u) for u in self.updates]}

    @classmethod
    def from_dict(cls, data: dict) -> UpdateScheme:
        if not isinstance(data, dict) or not isinstance(data.get("updates"), list):
            raise EdgetuneError("an update scheme needs a list under 'updates'")
        try:
            ups = tuple(UnitUpdate(**u) for u in data["updates"])
        except TypeError as e:
            raise EdgetuneError(f"bad unit in update scheme: {e}") from None
        return cls(ups, str(data.get("name", "custom")))

    def save(self, path: str | Path, extra: dict | None = None) -> None:
        atomic_write_text(Path(path), yaml.safe_dump({**self.to_dict(), **(extra or {})}))

    @classmethod
    def load(cls, path: str | Path) -> UpdateScheme:
        return cls.from_dict(read_yaml(Path(path), "scheme file"))


def _parse_builtin(name: str) -> tuple[str, Any, float]:
    """(kind, its argument, channel fraction) of a built-in scheme name; one clear error for a
    name that is not one (checked when a config loads, before the model's depth is known)."""
    base, _, frac = name.partition("@")
    try:
        fraction = float(frac) if frac else 1.0
        if base.startswith("ratios-"):
            return "ratios", [float(r) for r in base[7:].split(",")], fraction
        if base == "bias-only":
            return "bias-only", None, fraction
        for kind in ("bias-only", "qkv-ffn1", "last"):
            if base.startswith(kind + "-"):
                return kind, int(base[len(kind) + 1 :]), fraction
    except ValueError:
        pass
    raise EdgetuneError(
        f"unknown scheme {name!r}; use last-K, bias-only[-K], qkv-ffn1-K (optionally @F, "
        "e.g. last-2@0.25), ratios-R1,R2,... or a path to a YAML scheme file"
    )


SchemeSpec = str | Path | UpdateScheme
"""How a config names a scheme: a built-in name, a YAML file, or the scheme itself."""


def read_scheme(value: Any) -> str | UpdateScheme:
    """A config's scheme value, checked as soon as the config loads: a built-in name stays a
    name (it expands against the model's depth later), a YAML path or an inline mapping becomes
    the scheme itself (so a run's config.yaml holds it and reproduces without the file)."""
    if isinstance(value, UpdateScheme):
        return value
    if isinstance(value, dict):
        return UpdateScheme.from_dict(value)
    if isinstance(value, Path) or (isinstance(value, str) and value.endswith((".yaml", ".yml"))):
        return UpdateScheme.load(value)
    if isinstance(value, str):
        _parse_builtin(value)
        return value
    raise EdgetuneError(f"a scheme is a built-in name, a YAML file or a mapping, got {value!r}")


def resolve_scheme(value: SchemeSpec, n_layers: int) -> UpdateScheme:
    """A scheme for a model of `n_layers` blocks from a built-in name, a YAML path or a scheme;
    checks that its layer indices exist."""
    scheme = read_scheme(value)
    if isinstance(scheme, str):
        scheme = UpdateScheme.builtin(scheme, n_layers)
    for u in scheme.updates:
        if u.unit != "head" and u.layer >= n_layers:
            raise EdgetuneError(
                f"scheme {scheme.name!r} names layer {u.layer}, the model has {n_layers} layers"
            )
    return scheme


def _last_layers(n_layers: int, k: int) -> range:
    if not 0 <= k <= n_layers:
        raise EdgetuneError(f"k={k} must be between 0 and the model's {n_layers} layers")
    return range(n_layers - k, n_layers)
