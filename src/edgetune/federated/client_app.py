"""The Flower ClientApp: local training with the run's `Method.step`, and local evaluation.

train: global trainable state in -> the method's own steps on this client's rows -> only the
update goes back (its delta through the chosen codec, or MeZO's seeds and scalar projected
gradients), with num-examples, loss, time and tokens. evaluate: the global state on this
client's held-out rows. The partition comes from the node config (`partition-id`), which the
Simulation Engine sets and a SuperNode gets from `--node-config`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, cast

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from edgetune.evaluate import evaluate
from edgetune.federated import payload
from edgetune.federated.task import (
    client_rows,
    local_batches,
    new_method,
    proximal_pull,
    round_seed,
    seq_tokens,
    session,
    settings,
    step_flops,
)
from edgetune.methods.base import SendsSeeds


def _arrays(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def _state(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v.numpy().copy()) for k, v in record.items()}


def train(msg: Message, context: Context, overrides: Mapping[str, Any]) -> Message:
    cfg, fed = settings({**context.run_config, **overrides})
    pid = int(context.node_config["partition-id"])
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    config: Mapping[str, Any] = msg.content["config"]  # a ConfigRecord
    rnd = int(config["server-round"]) + int(config.get("round-offset", 0))
    seed = round_seed(cfg, rnd, pid)
    glob = _state(cast(ArrayRecord, msg.content["arrays"]))
    method = new_method(cfg, rnd, seed)
    method.load_trainable_state(glob)
    rows, _ = client_rows(cfg, pid)
    # seeded once everything is built: loading the run (the first round this process serves,
    # whichever it is) draws from torch's generator, so a resumed run's dropout would differ
    torch.manual_seed(seed)

    # -- local steps: the same Method.step as centralized training --------------------------
    mu = float(config.get("proximal-mu", 0.0))
    losses, tokens, seqs, busy, flops = [], 0, 0, 0.0, 0.0
    for step, batches in enumerate(local_batches(cfg, rows, rnd, pid)):
        if pid == fed.crash_client and rnd == fed.crash_round and step == fed.local_steps // 2:
            os._exit(17)  # fault injection: the process dies mid-round, nothing is sent
        start = time.perf_counter()
        result = method.step(batches)
        if mu:
            proximal_pull(method, glob, mu, method.settings.lr)
        busy += time.perf_counter() - start
        losses.append(result.loss)
        n_tok, n_seq = seq_tokens(batches)
        tokens, seqs = tokens + n_tok, seqs + n_seq
        flops += step_flops(cfg, batches)

    # -- the update: the steps' seeds where the method sends them, else the delta -----------
    if cfg.spec.sends == "seeds":
        seeded = cast(SendsSeeds, method)  # its registry entry says it sends seeds
        arrays = payload.encode_seeds(seeded.clear_history())  # this round's steps
    else:
        residual = None
        if fed.compress == "topk" and fed.error_feedback:
            kept = context.state.get("residual")
            residual = _state(kept) if isinstance(kept, ArrayRecord) else {}
        update = payload.delta(method.trainable_state(), glob)
        arrays, residual = payload.encode(update, fed.compress, fed.topk_fraction, residual)
        if residual is not None:
            context.state["residual"] = _arrays({k: v.numpy() for k, v in residual.items()})
    metrics = MetricRecord(
        {
            "num-examples": seqs,
            "train-loss": float(np.mean(losses)),
            "train-s": busy,
            "tokens": tokens,
            "flops": float(flops),
            "partition-id": pid,
        }
    )
    return Message(RecordDict({"arrays": _arrays(arrays), "metrics": metrics}), reply_to=msg)


def evaluate_local(msg: Message, context: Context, overrides: Mapping[str, Any]) -> Message:
    cfg, _ = settings({**context.run_config, **overrides})
    pid = int(context.node_config["partition-id"])
    method = new_method(cfg, 1, 0)
    method.load_trainable_state(_state(cast(ArrayRecord, msg.content["arrays"])))
    _, held = client_rows(cfg, pid)
    s = session(cfg)
    rows = [s.data.splits["train"][i] for i in held]
    local = replace(s.data, splits={"local": rows})
    scores = evaluate(method.model, local, "local", s.pad_id, tokenizer=None)
    keep = {k: float(v) for k, v in scores.items() if k in ("accuracy", "macro_f1", "loss")}
    metrics = MetricRecord({"num-examples": len(held), "partition-id": pid, **keep})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


def make_app(overrides: Mapping[str, Any] | None = None) -> ClientApp:
    """A ClientApp whose run config is the run's, updated by `overrides` (the way
    `edgetune federate` passes settings to the Simulation Engine)."""
    fixed = dict(overrides or {})
    client = ClientApp()

    @client.train()
    def _train(msg: Message, context: Context) -> Message:
        return train(msg, context, fixed)

    @client.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        return evaluate_local(msg, context, fixed)

    return client


app = make_app()

__all__ = ["app", "make_app"]
