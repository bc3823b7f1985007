"""Model, data, local training and evaluation shared by the ClientApp and the ServerApp.

The Flower run config is flat; its keys are edgetune's own config keys: `model.name`,
`data.seq_len`, `train.method`, `train.lr`, `method.<option>`, `out` (as in a YAML run config,
passed on as `section.key=value` overrides), `config` (a YAML run config file), and the
federation's own `federated.<key>` (see `FedSettings`). A client builds the same model and
method as centralized training (`edgetune.train.prepare`'s pieces) and runs `Method.step`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from edgetune.config import RunConfig, load_config, read_yaml_mapping
from edgetune.data.tasks import TaskData, collate, epoch_order
from edgetune.errors import EdgetuneError
from edgetune.federated.partition import SCHEMES, partition, split_holdout
from edgetune.federated.payload import CODECS
from edgetune.methods import Method, MethodSettings, build_method
from edgetune.methods.base import lr_lambda
from edgetune.methods.mezo import mix_seed
from edgetune.models.loader import LoadedModel
from edgetune.train import load_inputs

STRATEGIES = ("fedavg", "fedavgm", "fedprox", "fedadam", "fedmedian", "fedtrimmedavg", "krum")


@dataclass(frozen=True)
class FedSettings:
    """The `federated.*` keys of the run config."""

    rounds: int = 3  # server rounds
    clients: int = 2  # partitions of the training set (= SuperNodes)
    local_steps: int = 10  # Method.step calls per client per round
    strategy: str = "fedavg"  # one of STRATEGIES
    partition: str = "iid"  # iid | dirichlet
    alpha: float = 0.5  # Dirichlet concentration (non-IID when small)
    compress: str = "fp32"  # fp32 | fp16 | int8 | topk (MeZO always sends seeds)
    topk_fraction: float = 0.01  # entries per tensor that topk sends
    error_feedback: bool = True  # topk keeps what it did not send for the next round
    network: str = "4g"  # profile for transfer times (3g, 4g, 5g, wifi, ethernet)
    fraction_train: float = 1.0  # share of clients sampled per round
    min_clients: int = 2  # fewest replies a round waits to sample
    timeout: float = 600.0  # seconds a round waits for replies; late clients are left out
    holdout: float = 0.1  # share of each client's rows kept for its own evaluation
    max_update_ratio: float = 10.0  # reject updates with norm > ratio x global state norm
    proximal_mu: float = 0.01  # FedProx
    server_lr: float = 1.0  # FedAvgM server learning rate; FedAdam eta is server_lr / 100
    server_momentum: float = 0.9  # FedAvgM
    trim_beta: float = 0.2  # FedTrimmedAvg: share cut from each end
    krum_byzantine: int = 0  # Krum: assumed malicious clients
    generate_samples: int = 16  # rows scored with ROUGE (summarize)
    device: str = "this-machine"  # device profile whose peak FLOP/s gives the MFU
    resume: bool = False  # continue from the newest round checkpoint in `out`
    crash_client: int = -1  # fault injection: this partition dies mid-round ...
    crash_round: int = 1  # ... in this round

    def __post_init__(self) -> None:
        for key in ("rounds", "clients", "local_steps", "min_clients"):
            if getattr(self, key) < 1:
                raise EdgetuneError(f"federated.{key} must be >= 1, got {getattr(self, key)}")
        if self.strategy not in STRATEGIES:
            raise EdgetuneError(
                f"unknown strategy {self.strategy!r}; choose from {', '.join(STRATEGIES)}"
            )
        if self.partition not in SCHEMES:
            raise EdgetuneError(f"unknown partition {self.partition!r}; use iid or dirichlet")
        if self.compress not in CODECS:
            raise EdgetuneError(f"unknown compression {self.compress!r}; use {', '.join(CODECS)}")
        if not 0 < self.topk_fraction <= 1 or not 0 < self.fraction_train <= 1:
            raise EdgetuneError("federated.topk_fraction and fraction_train must be in (0, 1]")
        if not 0 < self.holdout < 1:
            raise EdgetuneError("federated.holdout must be in (0, 1): clients evaluate on it")


def settings(run_config: Mapping[str, Any]) -> tuple[RunConfig, FedSettings]:
    """Split a flat Flower run config into edgetune's RunConfig and the FedSettings. A YAML file
    under `config` (edgetune's sections plus an optional `federated:` section) comes first;
    the other keys override it."""
    merged: dict[str, Any] = {}
    if run_config.get("config"):
        merged.update(_flatten(read_yaml_mapping(Path(str(run_config["config"])))))
    merged.update({k: v for k, v in run_config.items() if k != "config"})
    fed_keys = {f.name: f for f in dataclasses.fields(FedSettings)}
    fed: dict[str, Any] = {}
    overrides = []
    for key, value in merged.items():
        section, _, name = key.partition(".")
        if section == "federated":
            name = name.replace("-", "_")
            if name not in fed_keys:
                raise EdgetuneError(f"unknown key federated.{name}; known: {', '.join(fed_keys)}")
            kind = type(fed_keys[name].default)
            try:
                fed[name] = _bool(value) if kind is bool else kind(value)
            except ValueError:
                raise EdgetuneError(f"federated.{name} must be a {kind.__name__}") from None
        elif section in ("model", "data", "train", "method", "out"):
            key = key if section == "method" else key.replace("-", "_")
            overrides.append(f"{key}={value if isinstance(value, str) else json.dumps(value)}")
        else:
            raise EdgetuneError(f"unknown run config key {key!r}")
    return load_config(None, overrides), FedSettings(**fed)


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1e-4}} -> {"train.lr": 1e-4}; method options stay one level deep."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and not prefix.startswith("method."):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _bool(value: Any) -> bool:
    if str(value).lower() not in ("1", "0", "true", "false", "yes", "no"):
        raise ValueError(value)
    return str(value).lower() in ("1", "true", "yes")


# -- model and data, cached per process (a Flower actor or SuperNode runs many rounds) -------


@dataclass
class Bundle:
    """A pristine model, its tokenizer and the tokenized splits."""

    loaded: LoadedModel
    data: TaskData

    @property
    def pad_id(self) -> int:
        return self.loaded.tokenizer.pad_token_id


@lru_cache(maxsize=2)
def _bundle(cfg_yaml: str) -> Bundle:
    cfg = RunConfig.from_dict(yaml.safe_load(cfg_yaml))
    return Bundle(*load_inputs(cfg))


def bundle(cfg: RunConfig) -> Bundle:
    return _bundle(cfg.to_yaml())


def total_steps(fed: FedSettings) -> int:
    return fed.rounds * fed.local_steps


def new_method(cfg: RunConfig, fed: FedSettings, rnd: int, seed: int) -> Method:
    """A fresh copy of the pristine model and the run's method for round `rnd` (1-based): the
    learning rate follows the run's schedule over all rounds, constant within a round."""
    t = cfg.train
    total = total_steps(fed)
    schedule = MethodSettings(lr=t.lr, total_steps=total, warmup_steps=int(t.warmup_ratio * total),
                              schedule=t.schedule)  # fmt: skip
    lr = t.lr * lr_lambda(schedule)((rnd - 1) * fed.local_steps)
    settings_ = MethodSettings(
        lr=lr,
        total_steps=fed.local_steps,
        weight_decay=t.weight_decay,
        schedule="constant",
        max_grad_norm=t.max_grad_norm,
        seed=seed,
        options=cfg.method,
    )
    model = copy.deepcopy(bundle(cfg).loaded.model)
    return build_method(t.method, model, settings_)


def client_rows(cfg: RunConfig, fed: FedSettings, pid: int) -> tuple[list[int], list[int]]:
    """This client's (train, held-out) rows of the training split."""
    if not 0 <= pid < fed.clients:
        raise EdgetuneError(f"partition-id {pid} is outside 0..{fed.clients - 1}")
    train = bundle(cfg).data.splits["train"]
    labels = [e["labels"] for e in train] if isinstance(train[0].get("labels"), int) else len(train)
    parts = partition(labels, fed.clients, fed.partition, fed.alpha, cfg.train.seed)
    return split_holdout(parts[pid], fed.holdout, cfg.train.seed + pid)


def round_seed(cfg: RunConfig, rnd: int, pid: int) -> int:
    """A different stream of randomness per (run seed, round, client): MeZO's z, dropout."""
    return mix_seed(mix_seed(cfg.train.seed, rnd), pid) % (2**31)


def local_batches(cfg: RunConfig, fed: FedSettings, rows: list[int], rnd: int, pid: int):
    """The micro-batches of each of this round's local steps: the client walks through its
    rows epoch after epoch, continuing where the previous round stopped."""
    data, t = bundle(cfg), cfg.train
    per_step = t.batch_size * t.grad_accum
    start = (rnd - 1) * fed.local_steps * per_step
    picked: list[int] = []
    epoch = start // len(rows)
    offset = start - epoch * len(rows)
    while len(picked) < fed.local_steps * per_step:
        order = epoch_order(len(rows), cfg.train.seed + 7919 * (pid + 1), epoch)
        picked += [rows[i] for i in order[offset:]]
        epoch, offset = epoch + 1, 0
    examples = data.data.splits["train"]
    for s in range(fed.local_steps):
        step_rows = picked[s * per_step : (s + 1) * per_step]
        yield [
            collate([examples[i] for i in step_rows[j : j + t.batch_size]], data.pad_id)
            for j in range(0, per_step, t.batch_size)
        ]


def proximal_pull(method: Method, anchor: Mapping[str, torch.Tensor], mu: float, lr: float):
    """FedProx's term mu/2 ||w - w_global||^2 applied after each step as a decoupled pull
    toward the global weights (w -= lr mu (w - w_global)), so `Method.step` stays unchanged."""
    with torch.no_grad():
        for name, w in method.trainable_state().items():
            w.sub_(lr * mu * (w - anchor[name].to(w.dtype)))


def flops_per_token(model: nn.Module, method: str, tokens_per_seq: float) -> float:
    """Training FLOPs per token, PaLM appendix B: forward 2N + 4 L H Q T (N non-embedding
    parameters); backpropagation methods cost 3 forwards, MeZO and PEPITA two, MEMPEPITA
    three (its extra clean pass). An estimate, not a measurement."""
    c = model.config
    n = sum(p.numel() for name, p in model.named_parameters() if "embed" not in name)
    layers = getattr(c, "num_hidden_layers", None) or getattr(c, "num_layers", 0)
    heads = getattr(c, "num_attention_heads", None) or getattr(c, "num_heads", 1)
    width = getattr(c, "hidden_size", None) or getattr(c, "d_model", 0)
    forward = 2 * n + 4 * layers * heads * (width // max(1, heads)) * tokens_per_seq
    passes = {"mezo": 2, "pepita": 2, "mempepita": 3}.get(method, 3)
    return passes * forward


def peak_flops(device: str) -> float | None:
    """The device profile's fp32 peak FLOP/s, or None (MFU is then unknown)."""
    from edgetune.cost import load_device

    try:
        return load_device(device).peak("fp32")
    except EdgetuneError:
        return None


def seq_tokens(batches: list[dict[str, torch.Tensor]]) -> tuple[int, int]:
    """(tokens, sequences) in a list of micro-batches, padding excluded."""
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    return tokens, sum(len(b["attention_mask"]) for b in batches)
