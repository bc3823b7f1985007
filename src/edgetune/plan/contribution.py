"""Contribution analysis: how much each unit of a model is worth fine-tuning, and what it costs.

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

Results go to a JSON file after every run (atomically), keyed by everything that changes them
(not by the blocks measured), so an interrupted analysis resumes where it stopped and a wider
one reuses what a narrower one measured.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from edgetune.config import RunConfig
from edgetune.errors import EdgetuneError
from edgetune.io import atomic_write, atomic_write_text
from edgetune.paths import cache_dir
from edgetune.plan.scheme import UnitUpdate, UpdateScheme

CANDIDATE_UNITS = ("qkv", "attn_out", "ffn1", "ffn2", "bias")
FRACTIONS = (1.0, 0.5, 0.25, 0.125)
TABLE_VERSION = 2


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
    scored: float = 1.0
    """Share of the training positions the loss scores (a causal LM forms logits only there:
    `edgetune.methods.base.forward_loss`); what the forecasts take for the LM head."""
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


# -- measuring ------------------------------------------------------------------------------


def _eval_loss(model: nn.Module, batches: list[dict]) -> tuple[float, float | None]:
    """Mean held-out loss (and accuracy for a classifier) over fixed batches."""
    model.eval()
    total, n, hits, rows = 0.0, 0, 0, 0
    with torch.no_grad():
        for b in batches:
            out = model(**b)
            k = int((b["labels"] != -100).sum()) if b["labels"].ndim > 1 else len(b["labels"])
            total, n = total + out.loss.item() * k, n + k
            if b["labels"].ndim == 1:
                hits += int((out.logits.argmax(-1) == b["labels"]).sum())
                rows += len(b["labels"])
    model.train()
    return total / max(1, n), (hits / rows if rows else None)


def train_and_eval(
    model: nn.Module,
    scheme: UpdateScheme,
    train: list[dict],
    held_out: list[dict],
    lr: float,
    seed: int = 0,
) -> tuple[float, float | None]:
    """Fine-tune a copy of `model` on `scheme` for one pass over `train`; its held-out loss.
    The RNG (dropout) is seeded, so the same scheme gives the same loss."""
    from edgetune.methods.base import MethodSettings
    from edgetune.methods.sparse import Sparse

    torch.manual_seed(seed)
    work = copy.deepcopy(model)
    settings = MethodSettings(
        lr=lr,
        total_steps=len(train),
        weight_decay=0.0,
        schedule="constant",
        options={"scheme": scheme},
    )
    method = Sparse(work, settings)
    for batch in train:
        method.step([batch])
    return _eval_loss(method.model, held_out)


def _fingerprint(cfg: RunConfig, s: AnalysisSettings) -> str:
    """What changes a measured gain (not which blocks are measured: an analysis can be
    widened or narrowed later and keeps what it has measured)."""
    protocol = {k: v for k, v in asdict(s).items() if k not in ("layers", "fraction_layers")}
    key = {"model": cfg.model.name, "data": asdict(cfg.data), "settings": protocol}
    key["version"] = TABLE_VERSION
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class _Runs:
    """What every short run of one analysis shares: the start model, the batches, the table
    as cached (measured entries only) and its file."""

    model: nn.Module
    train: list[dict]
    held_out: list[dict]
    settings: AnalysisSettings
    table: ContributionTable
    path: Path

    def gain(self, scheme: UpdateScheme) -> Entry:
        s = self.settings
        loss, acc = train_and_eval(self.model, scheme, self.train, self.held_out, s.lr, s.seed)
        return Entry(scheme.name, self.table.loss_base - loss, True, loss, acc)

    def save(self) -> None:
        atomic_write_text(self.path, self.table.to_json())


def _prepare(cfg: RunConfig, s: AnalysisSettings, cache: Path | None) -> _Runs:
    """Load model and data, fix the batches, and read the cached table (or start one by
    measuring the untouched model and the base)."""
    from edgetune.data.load import load_data
    from edgetune.data.tasks import batches, epoch_order, tokenize
    from edgetune.models.anatomy import describe
    from edgetune.models.loader import load_model

    torch.manual_seed(s.seed)
    text = load_data(cfg.data)
    n_labels = len(text.labels) or None
    loaded = load_model(
        cfg.model.name,
        text.task,
        num_labels=n_labels,
        random_init=cfg.model.random_init,
        seed=s.seed,
    )
    data = tokenize(text, loaded.tokenizer, cfg.data.seq_len, loaded.kind)
    model, pad = loaded.model, loaded.tokenizer.pad_token_id
    anatomy = describe(model)
    n_layers = anatomy.n_layers
    for layer in [*(s.layers or []), *(s.fraction_layers or [])]:
        if not 0 <= layer < n_layers:
            raise EdgetuneError(f"analysis layer {layer} out of range: the model has {n_layers}")
    train_ex = data.splits["train"]
    order = epoch_order(len(train_ex), s.seed, 0)[: s.steps * s.batch_size]
    if len(order) < s.steps * s.batch_size:
        order = order * math.ceil(s.steps * s.batch_size / max(1, len(order)))
        order = order[: s.steps * s.batch_size]
    train = list(batches(train_ex, s.batch_size, pad, order))
    held_out = list(batches(data.splits["validation"][: s.eval_examples], 32, pad))
    head = anatomy.task == "classify" and bool(anatomy.head)
    has_bias = any(
        getattr(model.get_submodule(n), "bias", None) is not None
        for n in anatomy.modules("qkv", n_layers - 1)
    )
    path = _table_path(cfg, s, cache)
    if path.is_file():
        table = ContributionTable.from_json(path.read_text())
        table.scored = _scored_share(model, train)
        return _Runs(model, train, held_out, s, table, path)
    loss0, _ = _eval_loss(model, held_out)
    base = UpdateScheme((UnitUpdate("head"),), "base") if head else None
    loss_b = train_and_eval(model, base, train, held_out, s.lr, s.seed)[0] if base else loss0
    about = (cfg.model.name, cfg.data.name, data.task, n_layers, head, has_bias)
    table = ContributionTable(*about, loss0, loss_b, len(data.labels), _scored_share(model, train))
    runs = _Runs(model, train, held_out, s, table, path)
    runs.save()
    return runs


def _table_path(cfg: RunConfig, s: AnalysisSettings, cache: Path | None) -> Path:
    """The file of the cached table of `cfg`'s analysis under `s`."""
    return (cache or cache_dir() / "plan") / f"contribution-{_fingerprint(cfg, s)}.json"


def _scored_share(model: nn.Module, train: list[dict]) -> float:
    """Share of the training batches' positions whose logits the loss forms."""
    from edgetune.methods.base import scored_positions

    kept = total = 0
    for batch in train:
        mask = scored_positions(model, batch)
        kept += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
        total += batch["input_ids"].numel()
    return kept / total if total else 1.0


def analyze(
    cfg: RunConfig,
    settings: AnalysisSettings | None = None,
    cache: Path | None = None,
    console: Console | None = None,
) -> ContributionTable:
    """Measure the gain of every candidate of `cfg`'s model on `cfg`'s data (cached per
    setting in `cache`, default `<cache_dir>/plan`), then `complete` the unmeasured ones."""
    s = settings or AnalysisSettings()
    runs = _prepare(cfg, s, cache)
    table = runs.table
    todo = [c for c in _to_measure(table.n_layers, s) if c.key not in table.entries]
    with _progress(console) as progress:
        bar = progress.add_task("contribution", total=len(todo), info="")
        for c in todo:
            progress.update(bar, info=c.key)
            table.entries[c.key] = runs.gain(scheme_of([c], table.head, table.has_bias, c.key))
            runs.save()
            progress.advance(bar)
    complete(table, s)
    return table


def measure_schemes(
    cfg: RunConfig,
    schemes: Sequence[UpdateScheme],
    settings: AnalysisSettings | None = None,
    cache: Path | None = None,
    console: Console | None = None,
) -> list[float]:
    """The held-out gain of each whole scheme, fine-tuned jointly (with the base) under the
    analysis' protocol: the same steps, batches, learning rate and held-out examples, so it
    compares with the table's base and with the summed gains. Cached in the table's file."""
    s = settings or AnalysisSettings()
    path = _table_path(cfg, s, cache)
    if path.is_file():  # every scheme measured already: no model or data to load
        known = ContributionTable.from_json(path.read_text()).schemes
        if all(scheme_key(sc) in known for sc in schemes):
            return [known[scheme_key(sc)].gain for sc in schemes]
    runs = _prepare(cfg, s, cache)
    todo = [sc for sc in schemes if scheme_key(sc) not in runs.table.schemes]
    with _progress(console) as progress:
        bar = progress.add_task("schemes", total=len(todo), info="")
        for scheme in todo:
            progress.update(bar, info=scheme.name)
            key = scheme_key(scheme)
            runs.table.schemes[key] = runs.gain(UpdateScheme(scheme.updates, key))
            runs.save()
            progress.advance(bar)
    return [runs.table.schemes[scheme_key(sc)].gain for sc in schemes]


def _to_measure(n_layers: int, s: AnalysisSettings) -> list[Candidate]:
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


def _progress(console: Console | None) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console or Console(stderr=True),
        transient=True,
    )


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


def plot_gains(table: ContributionTable, path: Path) -> None:
    """Gain per layer and unit (fraction 1, and biases), and gain against channel fraction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4), constrained_layout=True)
    layers = list(range(table.n_layers))
    for unit in CANDIDATE_UNITS:
        f = 0.0 if unit == "bias" else 1.0
        es = [table.entries[Candidate(unit, i, f).key] for i in layers]
        (line,) = ax.plot(layers, [e.gain for e in es], label=unit, marker=".")
        ax.scatter(
            [i for i, e in zip(layers, es, strict=True) if e.measured],
            [e.gain for e in es if e.measured],
            color=line.get_color(),
            s=25,
        )
    ax.axhline(0, color="grey", lw=0.5)
    ax.set(
        xlabel="layer (block)",
        ylabel="held-out loss gain",
        title=f"{table.model} on {table.data}: gain per unit (dots measured)",
    )
    ax.legend()
    fracs = sorted({Candidate.from_key(k).fraction for k in table.entries} - {0.0})
    for unit in CANDIDATE_UNITS[:-1]:
        means = [
            statistics.mean(table.entries[Candidate(unit, i, f).key].gain for i in layers)
            for f in fracs
        ]
        bx.plot(fracs, means, marker="o", label=unit)
    bx.set_xscale("log", base=2)
    bx.set(
        xlabel="output-channel fraction",
        ylabel="mean gain over layers",
        title="gain against channel fraction",
    )
    bx.legend()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
