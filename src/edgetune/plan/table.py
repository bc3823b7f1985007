"""The contribution table: how much each unit of a model is worth fine-tuning (pure Python).

PockEngine (Zhu et al., MICRO 2023) fine-tunes one part of the model at a time for a short,
fixed budget from the same start and records the held-out gain; the budgeted search
(`edgetune.plan.search`) then sums those gains. A *candidate* here is one of

    qkv, attn_out, ffn1, ffn2   a block's linear at an output-channel fraction (1, 1/2, 1/4, 1/8),
                                with its bias
    bias                        every bias of the block and its norms (norm scales in families
                                without biases, e.g. Llama)

trained together with the *base*: the task head where the head is new (classification), nothing
for a language model (a tied LM head is the embedding matrix). Gain = held-out loss after
training the base alone minus held-out loss after training base + candidate, with the same
data order, learning rate and step count. Loss rather than accuracy: a few steps move the loss
long before they move the argmax of a small evaluation set.

Measuring every (layer, unit, fraction) is 17 runs per block. `AnalysisSettings.layers` and
`fraction_layers` measure a subset; `complete` fills the rest (documented in docs/planning.md):
fractions below 1 by the unit's median ratio gain(f) / gain(1) over the layers where they were
measured, unmeasured layers by linear interpolation between the nearest measured layers (the
nearest one's gains above the highest, 0 below the lowest). Each entry says whether it was
measured.

The measurement itself (short fine-tunes, torch) is `edgetune.plan.analysis`; this module
holds the table, its candidates and the completion of unmeasured entries.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

from edgetune.errors import EdgetuneError
from edgetune.scheme import UnitUpdate, UpdateScheme

CANDIDATE_UNITS = ("qkv", "attn_out", "ffn1", "ffn2", "bias")
FRACTIONS = (1.0, 0.5, 0.25, 0.125)
TABLE_VERSION = 3


@dataclass(frozen=True)
class Candidate:
    """One unit of one block at one output-channel fraction (`bias`: fraction 0)."""

    unit: str
    layer: int
    fraction: float = 1.0

    def __post_init__(self) -> None:
        if self.unit not in CANDIDATE_UNITS:
            raise EdgetuneError(f"unknown candidate unit {self.unit!r}; known: {CANDIDATE_UNITS}")

    @property
    def key(self) -> str:
        return f"{self.unit}@{self.layer}x{self.fraction:g}"

    @classmethod
    def from_key(cls, key: str) -> Candidate:
        unit, _, rest = key.partition("@")
        layer, _, frac = rest.partition("x")
        return cls(unit, int(layer), float(frac))

    def updates(self, has_bias: bool) -> list[UnitUpdate]:
        """The scheme units this candidate trains."""
        if self.unit != "bias":
            return [UnitUpdate(self.unit, self.layer, self.fraction, has_bias)]
        if not has_bias:  # norm scales stand in for the biases of a bias-free family
            return [UnitUpdate("norm", self.layer, 1.0, True)]
        units = ("qkv", "attn_out", "ffn1", "ffn2", "norm")
        return [UnitUpdate(u, self.layer, 0.0, True) for u in units]


def candidates(
    n_layers: int, layers: Sequence[int] | None = None, fractions: Sequence[float] = FRACTIONS
) -> list[Candidate]:
    """Every candidate of the given layers (default: all), top block first."""
    out = []
    for layer in sorted(range(n_layers) if layers is None else layers, reverse=True):
        out += [Candidate(u, layer, f) for u in CANDIDATE_UNITS[:-1] for f in fractions]
        out.append(Candidate("bias", layer, 0.0))
    return out


def scheme_of(
    picked: Iterable[Candidate], head: bool, has_bias: bool, name: str = "planned"
) -> UpdateScheme:
    """One scheme from candidates (and the head): a unit named twice trains the union."""
    merged: dict[tuple[str, int], UnitUpdate] = {}
    for c in picked:
        for u in c.updates(has_bias):
            old = merged.get((u.unit, u.layer))
            if old is not None:
                u = UnitUpdate(
                    u.unit, u.layer, max(u.weight_fraction, old.weight_fraction), u.bias or old.bias
                )
            merged[(u.unit, u.layer)] = u
    ups = sorted(merged.values(), key=lambda u: (u.layer, u.unit))
    return UpdateScheme((*ups, *([UnitUpdate("head")] if head else [])), name)


@dataclass
class AnalysisSettings:
    """How each candidate is fine-tuned and judged."""

    steps: int = 10
    """Optimizer steps per candidate (the same data order for every candidate)."""
    lr: float = 1e-3
    """Constant learning rate of the short runs (high: they are short)."""
    batch_size: int = 8
    eval_examples: int = 64
    """Held-out (validation) examples the loss is measured on."""
    layers: list[int] | None = None
    """Blocks to measure (None: all); the others are interpolated."""
    fraction_layers: list[int] | None = None
    """Blocks where fractions below 1 are measured (None: every measured block)."""
    fractions: tuple[float, ...] = FRACTIONS
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.eval_examples < 1:
            raise EdgetuneError("analysis steps, batch size and eval examples must be >= 1")
        if 1.0 not in self.fractions:
            raise EdgetuneError("analysis fractions must include 1 (the others scale from it)")


@dataclass
class Entry:
    candidate: str
    gain: float  # held-out loss of the base minus that of base + candidate
    measured: bool
    loss: float | None = None
    accuracy: float | None = None


@dataclass
class ContributionTable:
    """Gains per candidate for one model, data set and analysis setting."""

    model: str
    data: str
    task: str
    n_layers: int
    head: bool  # the base trains the head
    has_bias: bool
    loss_start: float  # held-out loss of the untouched model
    loss_base: float  # ... after training the base alone
    n_labels: int = 0  # classes of a classifier (0: a language model)
    entries: dict[str, Entry] = field(default_factory=dict)
    schemes: dict[str, Entry] = field(default_factory=dict)
    """Whole schemes fine-tuned jointly by `measure_schemes`, by `scheme_key` (which is also
    the entry's `candidate`)."""

    def gain(self, c: Candidate) -> float:
        return self.entries[c.key].gain

    def to_json(self) -> str:
        d = asdict(self)
        d["version"] = TABLE_VERSION
        return json.dumps(d, indent=1)

    @classmethod
    def from_json(cls, text: str) -> ContributionTable:
        d = json.loads(text)
        if d.pop("version", None) != TABLE_VERSION:
            raise EdgetuneError("contribution table of another edgetune version")
        d["entries"] = {k: Entry(**v) for k, v in d["entries"].items()}
        d["schemes"] = {k: Entry(**v) for k, v in d.get("schemes", {}).items()}
        return cls(**d)


def scheme_key(scheme: UpdateScheme) -> str:
    """A short name for what a scheme trains (its updates, not its name)."""
    text = json.dumps(scheme.to_dict()["updates"], sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def to_measure(n_layers: int, s: AnalysisSettings) -> list[Candidate]:
    """The candidates to measure, whole units of every block first (top block first), then
    the fractions below 1: an analysis stopped early has the blocks covered."""
    layers = range(n_layers) if s.layers is None else s.layers
    frac_layers = set(layers if s.fraction_layers is None else s.fraction_layers)
    out = [
        c
        for c in candidates(n_layers, sorted(set(layers)), s.fractions)
        if c.fraction in (0.0, 1.0) or c.layer in frac_layers
    ]
    return sorted(out, key=lambda c: c.fraction not in (0.0, 1.0))


def complete(table: ContributionTable, s: AnalysisSettings) -> None:
    """Fill every candidate that was not measured (see the module docstring)."""
    n = table.n_layers
    measured = {k: e.gain for k, e in table.entries.items() if e.measured}
    # 1. fractions below 1 at measured layers: the unit's median ratio gain(f) / gain(1)
    ratios: dict[tuple[str, float], float] = {}
    for unit in CANDIDATE_UNITS[:-1]:
        for f in s.fractions:
            rs = [
                measured[Candidate(unit, c.layer, f).key] / g1
                for c in map(Candidate.from_key, measured)
                if c.unit == unit
                and c.fraction == 1.0
                and (g1 := measured[c.key]) > 1e-6
                and Candidate(unit, c.layer, f).key in measured
            ]
            ratios[(unit, f)] = min(1.5, max(0.0, statistics.median(rs))) if rs else f
    layers = sorted({Candidate.from_key(k).layer for k in measured})
    for layer in layers:
        for c in candidates(n, [layer], s.fractions):
            if c.key not in table.entries:
                g1 = table.entries[Candidate(c.unit, layer, 1.0).key].gain
                table.entries[c.key] = Entry(c.key, g1 * ratios[(c.unit, c.fraction)], False)
    # 2. unmeasured layers: linear between the nearest measured layers, the nearest one's
    # above the highest; 0 below the lowest (never open backward into blocks nobody measured)
    for layer in sorted(set(range(n)) - set(layers)):
        lo = max((m for m in layers if m < layer), default=None)
        hi = min((m for m in layers if m > layer), default=None)
        for c in candidates(n, [layer], s.fractions):

            def at(m: int, c: Candidate = c) -> float:
                return table.entries[Candidate(c.unit, m, c.fraction).key].gain

            if lo is None:
                g = 0.0
            elif hi is None:
                g = at(lo)
            else:
                w = (layer - lo) / (hi - lo)
                g = (1 - w) * at(lo) + w * at(hi)
            table.entries[c.key] = Entry(c.key, g, False)


def summed_gain(table: ContributionTable, scheme: UpdateScheme) -> float:
    """The table's gains summed over what `scheme` trains: each weight (with its own bias) at
    the largest analysed fraction not above its own, and a block's `bias` candidate if the
    block's norms or the biases of a frozen weight train (the search's own schemes come back
    to their knapsack gain)."""
    fractions: dict[tuple[str, int], list[float]] = {}
    for c in map(Candidate.from_key, table.entries):
        fractions.setdefault((c.unit, c.layer), []).append(c.fraction)
    total = 0.0
    for layer in range(table.n_layers):
        ups = scheme.for_layer(layer)
        if any(u.unit == "norm" or (u.bias and u.weight_fraction == 0.0) for u in ups):
            total += table.gain(Candidate("bias", layer, 0.0))
        for u in ups:
            below = [f for f in fractions.get((u.unit, layer), []) if 0 < f <= u.weight_fraction]
            if below:
                total += table.gain(Candidate(u.unit, layer, max(below)))
    return total
