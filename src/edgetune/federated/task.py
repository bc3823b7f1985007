"""Model, data, local training and evaluation shared by the ClientApp and the ServerApp.

The Flower run config is flat; its keys are edgetune's own config keys: `model.name`,
`data.seq_len`, `train.method`, `train.lr`, `method.<option>`, `federated.<key>`, `out` (as in a
YAML run config, and as `edgetune federate` takes them: `section.key=value`), and `config` (a
YAML run config file, read first). A client loads the run through the same pipeline as
centralized training (`edgetune.pipeline`) and runs the method's own `Method.step`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

import torch
import yaml

from edgetune.config import FederatedConfig, RunConfig, load_config
from edgetune.data.tasks import collate, epoch_order
from edgetune.errors import EdgetuneError
from edgetune.federated.partition import partition, split_holdout
from edgetune.forecast import predict
from edgetune.methods.base import Method
from edgetune.methods.optim import lr_lambda
from edgetune.pipeline import Session, load
from edgetune.seeds import mix_seed


def settings(run_config: Mapping[str, Any]) -> tuple[RunConfig, FederatedConfig]:
    """The run config and its federated section from a flat Flower run config. A YAML file
    under `config` (edgetune's sections, `federated:` among them) comes first; the other keys
    override it (`federated.local-steps` and `federated.local_steps` are the same key)."""
    base = Path(str(run_config["config"])) if run_config.get("config") else None
    changes = {
        (key if key.startswith("method.") else key.replace("-", "_")): value
        for key, value in ((str(k), v) for k, v in run_config.items())
        if key != "config"
    }
    cfg = load_config(base, changes)
    return cfg, cfg.federated


# -- model and data, cached per process (a Flower actor or SuperNode runs many rounds) -------


@lru_cache(maxsize=2)
def _session(cfg_yaml: str) -> Session:
    return load(RunConfig.from_dict(yaml.safe_load(cfg_yaml)))


def session(cfg: RunConfig) -> Session:
    """The run's loaded inputs, once per process (a Flower actor or SuperNode runs many
    rounds): its pristine model is copied for every round's method."""
    return _session(cfg.to_yaml())


def forget_sessions() -> None:
    """Let go of the loaded runs this process holds (a deployment's launcher, whose server and
    clients are other processes)."""
    _session.cache_clear()


def new_method(cfg: RunConfig, rnd: int, seed: int) -> Method:
    """A fresh copy of the pristine model and the run's method for round `rnd` (1-based): the
    learning rate follows the run's schedule over all rounds, constant within a round."""
    fed, s = cfg.federated, session(cfg)
    total = fed.rounds * fed.local_steps
    schedule = s.method_settings(total_steps=total, warmup_steps=int(cfg.train.warmup_ratio
                                                                      * total))  # fmt: skip
    lr = cfg.train.lr * lr_lambda(schedule)((rnd - 1) * fed.local_steps)
    return s.build_method(copy.deepcopy(s.model), lr=lr, total_steps=fed.local_steps,
                          warmup_steps=0, schedule="constant", seed=seed)  # fmt: skip


def client_rows(cfg: RunConfig, pid: int) -> tuple[list[int], list[int]]:
    """This client's (train, held-out) rows of the training split."""
    fed = cfg.federated
    if not 0 <= pid < fed.clients:
        raise EdgetuneError(f"partition-id {pid} is outside 0..{fed.clients - 1}")
    train = session(cfg).data.splits["train"]
    labels = (
        [cast(int, e["labels"]) for e in train]  # class ids, as the first row's is
        if isinstance(train[0].get("labels"), int)
        else len(train)
    )
    parts = partition(labels, fed.clients, fed.partition, fed.alpha, cfg.train.seed)
    return split_holdout(parts[pid], fed.holdout, cfg.train.seed + pid)


def check_partition(cfg: RunConfig) -> None:
    """Refuse, before any client starts, a federation whose training split cannot give every
    client rows to train on (`--clients 1000` on 400 rows)."""
    fed = cfg.federated
    rows = len(session(cfg).data.splits["train"])
    if rows < 2 * fed.clients:
        raise EdgetuneError(
            f"{rows} training rows cannot give {fed.clients} clients a row to train on and one "
            f"to evaluate on; use at most {rows // 2} clients"
        )
    client_rows(cfg, 0)  # the partition itself, as the clients will make it


def round_seed(cfg: RunConfig, rnd: int, pid: int) -> int:
    """A different stream of randomness per (run seed, round, client): MeZO's z, dropout."""
    return mix_seed(mix_seed(cfg.train.seed, rnd), pid) % (2**31)


def local_batches(cfg: RunConfig, rows: list[int], rnd: int, pid: int):
    """The micro-batches of each of this round's local steps: the client walks through its
    rows epoch after epoch, continuing where the previous round stopped."""
    fed, data, t = cfg.federated, session(cfg), cfg.train
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
    toward the global weights (w -= lr mu (w - w_global)), so `Method.step` stays unchanged.
    Through the method's own trainable state, so it reaches every trained tensor, a slice of a
    split weight included; a server replaying a client's seeds applies it the same way."""
    with torch.no_grad():
        state = method.trainable_state()
        pulled = {k: w - lr * mu * (w - anchor[k].to(w.dtype)) for k, w in state.items()}
        method.load_trainable_state(pulled)


def step_flops(cfg: RunConfig, batches: list[dict[str, torch.Tensor]]) -> float:
    """The cost model's FLOPs of one step over these micro-batches (each at its padded size):
    the same forecast as `finetune` prints, the numerator of the federated MFU."""
    s = session(cfg)
    inputs = s.step_inputs()
    total = 0.0
    for b in batches:
        rows, width = b["input_ids"].shape
        total += _flops(inputs, cfg.train.method, cfg.method, rows, width)
    return total


@lru_cache(maxsize=64)
def _flops(inputs, method: str, options, rows: int, width: int) -> float:
    return predict(replace(inputs, batch=rows, seq=width), method, options).flops


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
