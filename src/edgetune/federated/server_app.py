"""The Flower ServerApp: the global model, the strategy's rounds, global evaluation, the report.

The server builds the same model and method as every client (so it knows the trainable
tensors' names and shapes, and can replay MeZO seeds), starts from the newest round checkpoint
when `federated.resume` is set, runs Flower's `Strategy.start` (training, client-side
evaluation on each client's held-out rows, server-side evaluation on the global test split),
then writes federated.json, summary.md, figures and the final model to `out`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from logging import INFO
from pathlib import Path
from typing import Any, cast

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from edgetune.evaluate import evaluate
from edgetune.federated import payload
from edgetune.federated.ledger import Ledger
from edgetune.federated.network import get_network
from edgetune.federated.strategies import make_strategy, to_record, to_state
from edgetune.federated.task import new_method, peak_flops, proximal_pull, session, settings
from edgetune.methods.base import Method, SendsSeeds
from edgetune.trained import save_trained


def seed_replayer(method: Method, local_steps: int, weight_decay: float, mu: float = 0.0):
    """Decoder of seed payloads: replay the client's (seed, g, lr) entries on the global state
    with the server's own copy of the method, each step's `queries` entries followed by
    FedProx's pull toward the global state where `mu` > 0 (as the client applied it), giving
    the client's state."""
    seeded = cast(SendsSeeds, method)  # its registry entry says it sends seeds
    per_step = seeded.queries

    def decode(record: ArrayRecord, glob: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        arrays = {k: v.numpy() for k, v in record.items()}
        entries = payload.decode_seeds(arrays, local_steps * per_step)
        method.load_trainable_state(glob)
        for i, (seed, g, lr) in enumerate(entries, 1):
            seeded.replay(seed, g, lr, weight_decay)
            if mu and i % per_step == 0:
                proximal_pull(method, glob, mu, lr)
        return {k: v.clone() for k, v in method.trainable_state().items()}

    return decode


def delta_decoder(codec: str):
    """Decoder of codec payloads: global + the decoded delta, names and shapes checked."""

    def decode(record: ArrayRecord, glob: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        update = payload.decode({k: v.numpy() for k, v in record.items()}, codec, glob)
        return {k: glob[k] + update[k].to(glob[k].dtype) for k in glob}

    return decode


def run(grid: Grid, context: Context, overrides: Mapping[str, Any]) -> dict[str, Any]:
    cfg, fed = settings({**context.run_config, **overrides})
    out = Path(cfg.out)
    identity = cfg.identity
    method = new_method(cfg, 1, cfg.train.seed)
    ledger = Ledger(out, identity, get_network(fed.network), peak_flops(fed.device))
    state = method.trainable_state()
    if fed.resume and (found := ledger.resume()) is not None:
        state = found
        log(INFO, "resuming %s after round %s", out, ledger.offset)
    remaining = fed.rounds - ledger.offset
    sends_seeds = cfg.spec.sends == "seeds"
    if sends_seeds:
        mu = fed.proximal_mu if fed.strategy == "fedprox" else 0.0
        decoder = seed_replayer(method, fed.local_steps, cfg.train.weight_decay, mu)
    else:
        decoder = delta_decoder(fed.compress)
    strategy = make_strategy(fed, decoder, ledger)
    s = session(cfg)
    eval_model = new_method(cfg, 1, cfg.train.seed)

    def global_eval(rnd: int, arrays: ArrayRecord) -> MetricRecord:
        eval_model.load_trainable_state(to_state(arrays))
        scores = evaluate(eval_model.model, s.data, "test", s.pad_id, tokenizer=s.loaded.tokenizer,
                          generate_samples=fed.generate_samples)  # fmt: skip
        ledger.evaluated_globally(rnd, scores)
        return MetricRecord({k: float(v) for k, v in scores.items()})

    strategy.aggregate_evaluate = _logged_evaluate(strategy, ledger)  # type: ignore[method-assign]
    start = time.perf_counter()
    result = None
    if remaining > 0:
        result = strategy.start(
            grid,
            to_record(state),
            num_rounds=remaining,
            timeout=fed.timeout,
            train_config=ConfigRecord({"round-offset": ledger.offset}),
            evaluate_fn=global_eval,
        )
    final = to_state(result.arrays) if result is not None and result.arrays else state
    eval_model.load_trainable_state(final)
    save_trained(eval_model, out, s.loaded.tokenizer, cfg.model.name, merge=cfg.train.merge)
    full = sum(p.numel() for p in s.model.parameters())
    trainable = sum(v.numel() for v in state.values())
    return ledger.write({
        **identity, "strategy": fed.strategy, "clients": fed.clients, "rounds": fed.rounds,
        "local_steps": fed.local_steps, "partition": fed.partition, "alpha": fed.alpha,
        "compress": "seeds" if sends_seeds else fed.compress,
        "params_total": full, "params_trainable_state": trainable,
        "full_weights_bytes": 4 * full, "wall_s": time.perf_counter() - start,
    })  # fmt: skip


def _logged_evaluate(strategy: Strategy, ledger: Ledger):
    """The strategy's aggregate_evaluate, also recording each client's own metrics."""
    flower = strategy.aggregate_evaluate

    def aggregate_evaluate(server_round: int, replies) -> MetricRecord | None:
        replies = list(replies)
        ledger.evaluated_locally(server_round, [
            {"node": m.metadata.src_node_id, **dict(next(iter(m.content.metric_records.values())))}
            for m in replies if m.has_content()
        ])  # fmt: skip
        return flower(server_round, replies)

    return aggregate_evaluate


def make_app(overrides: Mapping[str, Any] | None = None) -> ServerApp:
    """A ServerApp whose run config is the run's, updated by `overrides`."""
    fixed = dict(overrides or {})
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        run(grid, context, fixed)

    return server


app = make_app()

__all__ = ["Message", "app", "make_app", "run"]
