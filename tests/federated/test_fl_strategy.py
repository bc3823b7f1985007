"""The strategy wrapper: hand-computed aggregates, malformed updates refused and logged,
failed clients skipped, each round checkpointed and resumable."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.app.message.message import make_message
from flwr.supercore.task_identity import TaskIdentity
from torch.testing import assert_close

from edgetune.config import FederatedConfig as FedSettings
from edgetune.errors import EdgetuneError
from edgetune.federated import payload
from edgetune.federated.ledger import Ledger, markdown
from edgetune.federated.network import get_network
from edgetune.federated.server_app import delta_decoder
from edgetune.federated.strategies import make_strategy, to_record, wire_bytes

GLOBAL = {"w": torch.ones(2, 3), "b": torch.zeros(3)}


def _reply(node: int, arrays: dict | None, n: int = 1, error: str | None = None) -> Message:
    meta = Metadata(run_id=1, message_id=f"m{node}", src_node_id=node, dst_node_id=0,
                    reply_to_message_id="x", group_id="1", created_at=time.time(), ttl=60,
                    message_type=MessageType.TRAIN)  # fmt: skip
    if error:
        return make_message(meta, error=Error(code=0, reason=error))
    update = {k: torch.as_tensor(np.asarray(v, dtype=np.float32)) for k, v in arrays.items()}
    packed, _ = payload.encode(update, "fp32")
    record = ArrayRecord({k: Array(v) for k, v in packed.items()})
    metrics = MetricRecord({"num-examples": n, "train-s": 1.0, "tokens": 100, "flops": 1e6,
                            "partition-id": node, "train-loss": 0.5})  # fmt: skip
    return make_message(meta, content=RecordDict({"arrays": record, "metrics": metrics}))


def _strategy(tmp_path, name: str = "fedavg"):
    fed = FedSettings(strategy=name, clients=6, max_update_ratio=10.0)
    ledger = Ledger(tmp_path, {"model": "m", "method": "backprop", "data": "d"},
                    get_network("4g"), None)  # fmt: skip
    strategy = make_strategy(fed, delta_decoder("fp32"), ledger)
    strategy._global = {k: v.clone() for k, v in GLOBAL.items()}
    return strategy, ledger


def test_fedavg_of_valid_updates_and_rejections(tmp_path):
    # Prepare: two good deltas (weights 1 and 3) and four bad replies
    d1 = {"w": np.full((2, 3), 0.4), "b": np.full(3, 0.8)}
    d2 = {"w": np.full((2, 3), -0.4), "b": np.zeros(3)}
    replies = [
        _reply(1, d1, n=1),
        _reply(2, d2, n=3),
        _reply(3, {"w": np.zeros((2, 3)), "c": np.zeros(3)}),  # wrong name
        _reply(4, {"w": np.zeros((3, 2)), "b": np.zeros(3)}),  # wrong shape
        _reply(5, {"w": np.full((2, 3), np.nan), "b": np.zeros(3)}),  # NaN
        _reply(6, {"w": np.full((2, 3), 1e4), "b": np.zeros(3)}),  # absurd norm
        _reply(7, None, error="client crashed"),
    ]
    strategy, ledger = _strategy(tmp_path)
    for node in range(1, 8):
        ledger.sent(1, node, 1000)
    sent = wire_bytes(replies[0].content)  # the reply as it arrived (decoding replaces it)
    # Execute
    arrays, _ = strategy.aggregate_train(1, replies)
    # Assert: the weighted mean of global + delta over the two good clients only
    want_w = 1 + (0.4 * 1 - 0.4 * 3) / 4
    assert_close(torch.from_numpy(arrays["w"].numpy()), torch.full((2, 3), want_w))
    assert_close(torch.from_numpy(arrays["b"].numpy()), torch.full((3,), 0.8 / 4))
    status = {row["node"]: row["status"] for row in ledger.clients.values()}
    assert status == {1: "accepted", 2: "accepted", 3: "rejected", 4: "rejected",
                      5: "rejected", 6: "rejected", 7: "failed"}  # fmt: skip
    reasons = [r["reason"] for r in ledger.rounds[1]["rejected"]]
    assert sum("layout" in r for r in reasons) == 2  # the wrong name and the wrong shape
    assert any("NaN" in r for r in reasons) and any("norm" in r for r in reasons)
    assert ledger.rounds[1]["failed"][0]["reason"] == "client crashed"
    assert ledger.clients[1, 1]["bytes_up"] == sent


def test_robust_strategy_ignores_an_outlier(tmp_path):
    strategy, _ = _strategy(tmp_path, "fedmedian")
    replies = [_reply(i, {"w": np.full((2, 3), x), "b": np.zeros(3)})
               for i, x in enumerate([0.1, 0.2, 0.3, 1.5], start=1)]  # fmt: skip
    arrays, _ = strategy.aggregate_train(1, replies)
    assert_close(torch.from_numpy(arrays["w"].numpy()), torch.full((2, 3), 1.25))  # median


def test_an_update_scaled_x5000_is_rejected_against_its_peers(tmp_path):
    """A round's change is small beside the global state: x5000 of it (norm 15 here) stays
    under 10 x the state's norm (24.5), but not under 10 x the other clients' updates."""
    honest = [{"w": np.full((2, 3), d), "b": np.full(3, d)} for d in (1e-3, 1.2e-3, 0.8e-3)]
    scaled = {k: 5000 * v for k, v in honest[0].items()}
    replies = [_reply(i, d) for i, d in enumerate([*honest, scaled], start=1)]
    strategy, ledger = _strategy(tmp_path)
    arrays, _ = strategy.aggregate_train(1, replies)
    assert ledger.clients[1, 4]["status"] == "rejected"
    assert "the round's median" in ledger.rounds[1]["rejected"][0]["reason"]
    assert_close(torch.from_numpy(arrays["b"].numpy()), torch.full((3,), 1e-3))  # the mean
    # two clients: the larger of two updates far apart is the one refused
    strategy, ledger = _strategy(tmp_path / "two")
    strategy.aggregate_train(1, [_reply(1, scaled), _reply(2, honest[1])])
    assert [r["node"] for r in ledger.rounds[1]["rejected"]] == [1]


def test_each_round_is_checkpointed_and_resumable(tmp_path):
    strategy, ledger = _strategy(tmp_path)
    strategy.aggregate_train(1, [_reply(1, {"w": np.full((2, 3), 0.5), "b": np.ones(3)})])
    again = Ledger(tmp_path, {"model": "m", "method": "backprop", "data": "d"},
                   get_network("4g"), None)  # fmt: skip
    state = again.resume()
    assert again.offset == 1 and (1, 1) in again.clients
    assert_close(state["w"], torch.full((2, 3), 1.5))
    with pytest.raises(Exception, match="method"):
        Ledger(tmp_path, {"model": "m", "method": "lora", "data": "d"},
               get_network("4g"), None).resume()  # fmt: skip


def test_to_record_round_trip():
    rec = to_record(GLOBAL)
    assert set(rec) == set(GLOBAL) and rec["w"].numpy().shape == (2, 3)


def test_a_client_that_never_replies_is_recorded_and_reported(tmp_path):
    """A round whose clients were sent the model but did not reply within federated.timeout
    (Flower stops waiting) is reported as such: no aggregate, the silent nodes failed, and
    the per-round report says how many of the sampled clients were aggregated."""
    strategy, ledger = _strategy(tmp_path)
    for node in (1, 2, 3):
        ledger.sent(1, node, 1000)
    arrays, _ = strategy.aggregate_train(1, [])  # every reply missing
    assert arrays is None and ledger.rounds[1]["failed"]
    assert all("no reply within federated.timeout" in f["reason"]
               for f in ledger.rounds[1]["failed"])  # fmt: skip
    for node in (1, 2):
        ledger.sent(2, node, 1000)
    strategy.aggregate_train(2, [_reply(1, {"w": np.full((2, 3), 0.5), "b": np.ones(3)})])
    rounds = {r["round"]: r for r in ledger.per_round()}
    assert (rounds[1]["clients"], rounds[1]["sampled"]) == (0, 3)
    assert (rounds[2]["clients"], rounds[2]["sampled"]) == (1, 2)
    assert "| 1 | 0 / 3 |" in markdown({**ledger.to_dict(), "per_round": ledger.per_round()})


def test_a_client_flower_gave_up_on_is_recorded_failed_once(tmp_path):
    """A SuperNode that died: Flower answers for it with an error reply sent from the
    SuperLink's node id (1), and the client itself never replies. It was recorded twice (a
    failed node 1 that was never sampled, and the silent client): once, with Flower's word."""
    strategy, ledger = _strategy(tmp_path)
    for node in (101, 102):
        ledger.sent(1, node, 1000)
    honest = _reply(101, {"w": np.full((2, 3), 1e-3), "b": np.full(3, 1e-3)})
    unavailable = _reply(1, None, error="Error: Node Unavailable")
    strategy.aggregate_train(1, [honest, unavailable])
    failed = ledger.rounds[1]["failed"]
    assert [f["node"] for f in failed] == [102]
    assert "federated.timeout" in failed[0]["reason"] and "Node Unavailable" in failed[0]["reason"]
    assert {node for _, node in ledger.clients} == {101, 102}


class _Grid:
    """The part of a Flower Grid a strategy samples from: the connected nodes."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)


def test_a_dead_client_holds_a_round_no_longer_than_the_timeout(tmp_path, monkeypatch):
    """Flower waits without end for `min_available_nodes`; a dead SuperNode held a deployed
    run until the outer timeout (3,600 s). The round waits `federated.timeout`, goes on with
    the client left, and records the one gone."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)  # what a ServerApp's run sets
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    fed = FedSettings(clients=2, min_clients=2, timeout=1.0)
    ledger = Ledger(tmp_path, {"model": "m", "method": "backprop", "data": "d"},
                    get_network("4g"), None)  # fmt: skip
    strategy = make_strategy(fed, delta_decoder("fp32"), ledger)
    grid = _Grid([1, 2])
    arrays, config = to_record(GLOBAL), ConfigRecord()
    assert len(list(strategy.configure_train(1, arrays, config, grid))) == 2
    grid.nodes = [1]  # node 2 died between the rounds
    done: list = []
    worker = threading.Thread(target=lambda: done.append(
        list(strategy.configure_train(2, arrays, config, grid))), daemon=True)  # fmt: skip
    worker.start()
    worker.join(30)
    assert done and [m.metadata.dst_node_id for m in done[0]] == [1]
    gone = {"node": 2, "reason": "not connected when the round began"}
    assert ledger.rounds[2]["failed"] == [gone]
    assert strategy.min_available_nodes == 2  # the round's allowance does not stay
    grid.nodes = []
    with pytest.raises(EdgetuneError, match="no client connected within federated.timeout"):
        list(strategy.configure_evaluate(2, arrays, config, grid))
