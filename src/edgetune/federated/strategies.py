"""Flower's strategies, each wrapped once with what edgetune adds around aggregation.

`make_strategy(name, ...)` returns a subclass of the Flower strategy (FedAvg, FedAvgM, FedProx,
FedAdam, FedMedian, FedTrimmedAvg or Krum) with `EdgeMixin` in front. The mixin does not
aggregate anything itself: before the Flower strategy averages tensors by name it

1. counts the serialized bytes of every message down and every reply up (`wire_bytes`),
2. decodes each reply into a full client trainable state (codec delta + global, or a MeZO
   seed replay on the global model) and rejects, with the reason logged, updates whose names,
   shapes or values are wrong or whose norm is absurd,
3. leaves failed replies (a client that crashed or timed out) to Flower, which skips them,
4. waits at most `federated.timeout` for the clients a round needs to be connected (Flower
   waits without end), then samples among those there, recording the ones gone as failed,

and after aggregation hands the new global state to the `Ledger` (checkpoint, round log).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from logging import WARNING

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Krum,
    Strategy,
)
from flwr.supercore import log

from edgetune.config import FederatedConfig
from edgetune.errors import EdgetuneError
from edgetune.federated import payload
from edgetune.federated.ledger import Ledger

# Decoder: (arrays of one reply, global state) -> that client's full trainable state
Decoder = Callable[[ArrayRecord, dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def wire_bytes(obj) -> int:
    """Serialized size of a Flower message, record or array: the bytes of every object of its
    tree as Flower deflates them for transport (chunked arrays included)."""
    children = obj.children or {}
    return len(obj.deflate()) + sum(wire_bytes(c) for c in children.values())


def to_state(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v.numpy().copy()) for k, v in record.items()}


def to_record(state: dict[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord({k: Array(v.detach().cpu().contiguous().numpy()) for k, v in state.items()})


class EdgeMixin:
    """Accounting, decoding, validation and checkpoints around a Flower strategy (the `super()`
    calls reach the Flower strategy `make_strategy` puts behind the mixin, unseen by mypy)."""

    decoder: Decoder
    ledger: Ledger
    max_update_ratio: float
    timeout: float  # federated.timeout: a client that has not replied by then is recorded failed
    _seen: set[int]  # the nodes connected at the start of a round of this run

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        with self._connected(server_round, grid, record=True):
            messages = list(super().configure_train(server_round, arrays, config, grid))  # type: ignore[misc]
        self._global = to_state(arrays)
        sizes: dict[int, int] = {}  # the messages of a round usually share one content
        for msg in messages:
            size = sizes.setdefault(id(msg.content), wire_bytes(msg.content))
            self.ledger.sent(server_round, msg.metadata.dst_node_id, size)
        return messages

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        with self._connected(server_round, grid, record=False):
            return list(super().configure_evaluate(server_round, arrays, config, grid))  # type: ignore[misc]

    @contextmanager
    def _connected(self, server_round: int, grid: Grid, record: bool) -> Iterator[None]:
        """Flower samples only once `min_available_nodes` are connected and waits for them
        without end: a dead SuperNode would hold the run until the outer timeout. Wait at
        most `federated.timeout`, then sample among the nodes connected (none: the run
        ends). With `record`, the nodes of earlier rounds of this run that are no longer
        connected are recorded as failed (a SuperNode the SuperLink has given up on)."""
        need = self.min_available_nodes  # type: ignore[attr-defined]
        deadline = time.monotonic() + self.timeout
        while len(nodes := list(grid.get_node_ids())) < need and time.monotonic() < deadline:
            time.sleep(1.0)
        if record:
            gone = sorted(self._seen - set(nodes))
            for node in gone:
                self.ledger.failed(server_round, node, "not connected when the round began")
            self._seen |= set(nodes)
        if len(nodes) >= need:
            yield
            return
        if not nodes:
            raise EdgetuneError(f"round {server_round}: no client connected within "
                                f"federated.timeout ({self.timeout:g} s)")  # fmt: skip
        log(WARNING, "round %s: %s of the %s clients needed connected within %s s; going on "
            "with them", server_round, len(nodes), need, self.timeout)  # fmt: skip
        keys = ("min_available_nodes", "min_train_nodes", "min_evaluate_nodes")
        kept = {k: getattr(self, k) for k in keys}
        for k in keys:
            setattr(self, k, min(kept[k], len(nodes)))
        try:
            yield
        finally:
            for k in keys:
                setattr(self, k, kept[k])

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid: dict[int, tuple[Message, MetricRecord, dict[str, torch.Tensor], float]] = {}
        flower_said: list[str] = []
        for msg in replies:
            node = msg.metadata.src_node_id
            if msg.has_error():
                if self.ledger.awaited(server_round, node):
                    self.ledger.failed(server_round, node, msg.error.reason)
                else:  # Flower's own error for a node it gave up on, sent from the SuperLink's
                    # id (not the client's): the client is recorded once, as unanswered, below
                    flower_said.append(msg.error.reason or "no reason given")
                continue
            metrics = next(iter(msg.content.metric_records.values()), MetricRecord())
            self.ledger.received(server_round, node, wire_bytes(msg.content), dict(metrics))
            try:
                record = next(iter(msg.content.array_records.values()))
                state = self.decoder(record, self._global)
                update = payload.delta(state, self._global)
                payload.check_update(update, self._global, self.max_update_ratio)
            except (payload.MalformedUpdate, StopIteration) as e:
                self._reject(server_round, node, str(e) or "no arrays in the reply")
                continue
            valid[node] = (msg, metrics, state, payload.update_norm(update))
        norms = {node: v[3] for node, v in valid.items()}
        for node, reason in payload.outliers(norms, self.max_update_ratio).items():
            self._reject(server_round, node, reason)
            del valid[node]
        accepted: list[Message] = []
        # in the order of the clients' partitions, not of their arrival: the same sum each run
        for msg, metrics, state, _ in sorted(valid.values(), key=_partition):
            msg.content = type(msg.content)({"arrays": to_record(state), "metrics": metrics})
            accepted.append(msg)
        silent = self.ledger.unanswered(server_round, self.timeout, flower_said)
        if silent or not accepted:
            log(WARNING, "round %s: %s update(s) aggregated; no reply from nodes %s within %s s",
                server_round, len(accepted), silent, self.timeout)  # fmt: skip
        arrays, metrics = super().aggregate_train(server_round, accepted)  # type: ignore[misc]
        if arrays is not None:
            self.ledger.aggregated(server_round, to_state(arrays))
        return arrays, metrics

    def _reject(self, server_round: int, node: int, reason: str) -> None:
        log(WARNING, "round %s: rejected the update of node %s: %s", server_round, node, reason)
        self.ledger.rejected(server_round, node, reason)


def _partition(entry: tuple[Message, MetricRecord, dict, float]) -> tuple[int, int]:
    """A reply's sort key: its client's partition, then its node."""
    msg, metrics = entry[0], entry[1]
    return int(metrics.get("partition-id", -1)), msg.metadata.src_node_id  # type: ignore[arg-type]


_FLOWER: dict[str, type[Strategy]] = {
    "fedavg": FedAvg,
    "fedavgm": FedAvgM,
    "fedprox": FedProx,
    "fedadam": FedAdam,
    "fedmedian": FedMedian,
    "fedtrimmedavg": FedTrimmedAvg,
    "krum": Krum,
}


def strategy_options(fed: FederatedConfig) -> dict:
    """The Flower constructor arguments of the chosen strategy."""
    options: dict[str, dict[str, float]] = {
        "fedavgm": {"server_learning_rate": fed.server_lr, "server_momentum": fed.server_momentum},
        "fedprox": {"proximal_mu": fed.proximal_mu},
        "fedadam": {"eta": fed.server_lr * 1e-3, "eta_l": 1.0},
        "fedtrimmedavg": {"beta": fed.trim_beta},
        "krum": {"num_malicious_nodes": fed.krum_byzantine},
    }
    return options.get(fed.strategy, {})


def make_strategy(fed: FederatedConfig, decoder: Decoder, ledger: Ledger) -> Strategy:
    """The Flower strategy `fed.strategy` with `EdgeMixin` in front of it."""
    base = _FLOWER[fed.strategy]
    cls = type(f"Edge{base.__name__}", (EdgeMixin, base), {})
    sampled = max(1, min(fed.min_clients, fed.clients))
    strategy = cls(
        fraction_train=fed.fraction_train,
        fraction_evaluate=1.0,
        min_train_nodes=sampled,
        min_evaluate_nodes=sampled,
        min_available_nodes=sampled,
        **strategy_options(fed),
    )
    strategy.decoder, strategy.ledger, strategy._seen = decoder, ledger, set()
    strategy.max_update_ratio, strategy.timeout = fed.max_update_ratio, fed.timeout
    return strategy
