"""Contribution analysis, measured: each candidate fine-tuned from the same start for a short,
fixed budget, its held-out gain recorded in the table (`edgetune.plan.table`).

Results go to a JSON file after every run (atomically), keyed by everything that changes them
(the model, its random initialization and the seed of its new weights, the data, the
protocol; not the blocks measured), so an interrupted analysis resumes where it stopped and a
wider one reuses what a narrower one measured. The model and data come from a loaded
`Session` (`edgetune.pipeline`): planning on the fly plans on the model the run then trains.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

from edgetune.cost import load_device, step_time
from edgetune.cost.device import THIS_MACHINE
from edgetune.data.tasks import batches, epoch_order
from edgetune.errors import EdgetuneError
from edgetune.forecast import predict
from edgetune.io import atomic_write_text
from edgetune.methods.base import MethodSettings, scored_share
from edgetune.methods.registry import build_method, get_method
from edgetune.models.anatomy import describe
from edgetune.paths import cache_dir
from edgetune.pipeline import Session
from edgetune.plan.table import (
    TABLE_VERSION,
    AnalysisSettings,
    ContributionTable,
    Entry,
    complete,
    scheme_key,
    scheme_of,
    to_measure,
)
from edgetune.progress import progress_bar
from edgetune.scheme import UnitUpdate, UpdateScheme
from edgetune.units import seconds


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
    method: str = "sparse",
) -> tuple[float, float | None]:
    """Fine-tune a copy of `model` on `scheme` (the scheme option of `method`) for one pass
    over `train`; its held-out loss. The RNG (dropout) is seeded, so the same scheme gives the
    same loss."""
    spec = get_method(method)
    torch.manual_seed(seed)
    settings = MethodSettings(
        lr=lr,
        total_steps=len(train),
        weight_decay=0.0,
        schedule="constant",
        options={spec.scheme_option: scheme},
    )
    trained = build_method(method, copy.deepcopy(model), settings)
    for batch in train:
        trained.step([batch])
    return _eval_loss(trained.model, held_out)


def _fingerprint(session: Session, s: AnalysisSettings) -> str:
    """What changes a measured gain: the model (its random initialization, and the seed that
    drew a new head), the data, the rule that trains and the protocol; not which blocks are
    measured (an analysis can be widened or narrowed later and keeps what it has measured)."""
    cfg = session.cfg
    protocol = {k: v for k, v in asdict(s).items() if k not in ("layers", "fraction_layers")}
    key = {"model": asdict(cfg.model), "seed": cfg.train.seed, "data": asdict(cfg.data),
           "method": cfg.train.method, "settings": protocol, "version": TABLE_VERSION}  # fmt: skip
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class _Runs:
    """What every short run of one analysis shares: the start model, the batches, the table
    as cached (measured entries only) and its file."""

    model: nn.Module
    method: str
    train: list[dict]
    held_out: list[dict]
    settings: AnalysisSettings
    table: ContributionTable
    path: Path

    def gain(self, scheme: UpdateScheme) -> Entry:
        s = self.settings
        loss, acc = train_and_eval(self.model, scheme, self.train, self.held_out, s.lr, s.seed,
                                   self.method)  # fmt: skip
        return Entry(scheme.name, self.table.loss_base - loss, True, loss, acc)

    def save(self) -> None:
        atomic_write_text(self.path, self.table.to_json())


def _prepare(session: Session, s: AnalysisSettings, cache: Path | None) -> _Runs:
    """Fix the batches of the session's data and read the cached table (or start one by
    measuring the untouched model and the base)."""
    cfg, model, data, pad = session.cfg, session.model, session.data, session.pad_id
    if get_method(cfg.train.method).scheme_option is None:
        raise EdgetuneError(f"method {cfg.train.method} has no update scheme to plan")
    anatomy = describe(model)
    n_layers = anatomy.n_layers
    for layer in [*(s.layers or []), *(s.fraction_layers or [])]:
        if not 0 <= layer < n_layers:
            raise EdgetuneError(f"analysis layer {layer} out of range: the model has {n_layers}")
    train = training_batches(session, s)
    held_out = list(batches(data.splits["validation"][: s.eval_examples], 32, pad))
    head = anatomy.task == "classify" and bool(anatomy.head)
    has_bias = any(
        getattr(model.get_submodule(n), "bias", None) is not None
        for n in anatomy.modules("qkv", n_layers - 1)
    )
    path = _table_path(session, s, cache)
    method = cfg.train.method
    if path.is_file():
        table = ContributionTable.from_json(path.read_text())
        return _Runs(model, method, train, held_out, s, table, path)
    loss0, _ = _eval_loss(model, held_out)
    base = UpdateScheme((UnitUpdate("head"),), "base") if head else None
    loss_b = (train_and_eval(model, base, train, held_out, s.lr, s.seed, method)[0]
              if base else loss0)  # fmt: skip
    about = (cfg.model.name, cfg.data.name, data.task, n_layers, head, has_bias)
    table = ContributionTable(*about, loss0, loss_b, len(data.labels))
    runs = _Runs(model, method, train, held_out, s, table, path)
    runs.save()
    return runs


def training_batches(session: Session, s: AnalysisSettings) -> list[dict]:
    """The batches every candidate trains on: `steps` x `batch_size` examples of the training
    split in the order of `s.seed` (a short split repeated)."""
    train, n = session.data.splits["train"], s.steps * s.batch_size
    order = epoch_order(len(train), s.seed, 0)[:n]
    if len(order) < n:
        order = (order * math.ceil(n / max(1, len(order))))[:n]
    return list(batches(train, s.batch_size, session.pad_id, order))


def analysis_scored(session: Session, s: AnalysisSettings) -> float:
    """Share of the positions of the analysis' training batches that the loss scores (the run's
    own share is `Session.scored`, over its first batches at its batch size)."""
    return scored_share(session.model, training_batches(session, s))


def _table_path(session: Session, s: AnalysisSettings, cache: Path | None) -> Path:
    """The file of the cached table of the session's analysis under `s`."""
    return (cache or cache_dir() / "plan") / f"contribution-{_fingerprint(session, s)}.json"


def analyze(
    session: Session,
    settings: AnalysisSettings | None = None,
    cache: Path | None = None,
    console: Console | None = None,
) -> ContributionTable:
    """Measure the gain of every candidate of the session's model on its data (cached per
    setting in `cache`, default `<cache_dir>/plan`), then `complete` the unmeasured ones."""
    s = settings or AnalysisSettings()
    runs = _prepare(session, s, cache)
    table = runs.table
    todo = [c for c in to_measure(table.n_layers, s) if c.key not in table.entries]
    if console is not None and todo:
        expected = expected_time(session, s, [scheme_of([c], table.head, table.has_bias, c.key)
                                              for c in todo])  # fmt: skip
        if expected is not None:
            console.print(f"contribution analysis: {len(todo)} candidates, expected time "
                          f"{seconds(expected)} (the cost model on this machine; the bar "
                          "corrects it as they run)", highlight=False)  # fmt: skip
    with progress_bar(console) as progress:
        bar = progress.add_task("contribution", total=len(todo), info="")
        for c in todo:
            progress.update(bar, info=c.key)
            table.entries[c.key] = runs.gain(scheme_of([c], table.head, table.has_bias, c.key))
            runs.save()
            progress.advance(bar)
    complete(table, s)
    return table


def expected_time(
    session: Session, s: AnalysisSettings, schemes: Sequence[UpdateScheme]
) -> float | None:
    """Seconds the analysis of `schemes` should take on this machine: per scheme, `s.steps`
    sparse steps at the analysis batch and a forward over the held-out examples, each timed
    by the cost model on `this-machine` (None before `edgetune bench hardware`
    has measured its peak)."""
    inputs = replace(session.step_inputs(), batch=s.batch_size)
    dev = load_device(THIS_MACHINE)
    dtype = inputs.precision.activations
    if not dev.peak(dtype):
        return None
    total = 0.0
    for scheme in schemes:
        cost = predict(inputs, session.cfg.train.method, {"scheme": scheme})
        step = step_time(cost, dev, dtype) or 0.0
        forward = step * cost.fwd_flops / cost.flops  # of a batch; held-out in batches of 32
        total += s.steps * step + forward * math.ceil(s.eval_examples / s.batch_size)
    return total


def measure_schemes(
    session: Session,
    schemes: Sequence[UpdateScheme],
    settings: AnalysisSettings | None = None,
    cache: Path | None = None,
    console: Console | None = None,
) -> list[float]:
    """The held-out gain of each whole scheme, fine-tuned jointly (with the base) under the
    analysis' protocol: the same steps, batches, learning rate and held-out examples, so it
    compares with the table's base and with the summed gains. Cached in the table's file."""
    runs = _prepare(session, settings or AnalysisSettings(), cache)
    todo = [sc for sc in schemes if scheme_key(sc) not in runs.table.schemes]
    with progress_bar(console) as progress:
        bar = progress.add_task("schemes", total=len(todo), info="")
        for scheme in todo:
            progress.update(bar, info=scheme.name)
            key = scheme_key(scheme)
            runs.table.schemes[key] = runs.gain(UpdateScheme(scheme.updates, key))
            runs.save()
            progress.advance(bar)
    return [runs.table.schemes[scheme_key(sc)].gain for sc in schemes]
