"""Codecs round-trip within their tolerance; malformed updates are refused; MeZO seeds replay
to the client's exact weights; payload sizes per method."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from edgetune.federated import payload
from edgetune.federated.payload import MalformedUpdate
from edgetune.federated.strategies import to_record, wire_bytes
from edgetune.federated.task import new_method, session, settings


def _update(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(16, 8, generator=g), "a.bias": torch.randn(16, generator=g)}


@pytest.mark.parametrize(("codec", "tol"), [("fp32", 0.0), ("fp16", 1e-3), ("int8", None)])
def test_dense_codecs_round_trip(codec, tol):
    upd = _update()
    arrays, _ = payload.encode(upd, codec)
    back = payload.decode(arrays, codec, upd)
    for name, d in upd.items():
        # int8: at most half a quantization step, step = max|d| / 127
        bound = tol if tol is not None else float(d.abs().max()) / 127 / 2 + 1e-7
        assert (back[name] - d).abs().max() <= bound * (1 if codec != "fp16" else d.abs().max())


def test_topk_keeps_the_largest_and_error_feedback_loses_nothing():
    upd = _update()
    arrays, residual = payload.encode(upd, "topk", fraction=0.25, residual={})
    back = payload.decode(arrays, "topk", upd)
    for name, d in upd.items():
        kept = back[name] != 0
        assert int(kept.sum()) == int(np.ceil(0.25 * d.numel()))
        assert_close(back[name][kept], d[kept])  # sent entries are exact ...
        assert d.abs()[kept].min() >= d.abs()[~kept].max()  # ... and the largest
        assert_close(back[name] + residual[name], d)  # what was not sent is kept
    # next round: the residual rides along, so sent + left over = sum of both updates
    second = _update(1)
    arrays2, residual2 = payload.encode(second, "topk", fraction=0.25, residual=residual)
    back2 = payload.decode(arrays2, "topk", second)
    for name in upd:
        assert_close(back[name] + back2[name] + residual2[name], upd[name] + second[name])


def test_an_update_travels_packed_in_a_fixed_number_of_arrays():
    many = {f"block{i}.bias": torch.randn(4) for i in range(50)}
    for codec, keys in [("fp32", {"layout", "values"}), ("int8", {"layout", "values", "scales"}),
                        ("topk", {"layout", "values", "index"})]:  # fmt: skip
        arrays, _ = payload.encode(many, codec, 0.5)
        assert set(arrays) == keys
        back = payload.decode(arrays, codec, many)
        assert set(back) == set(many)
    assert_close(payload.decode(payload.encode(many, "fp32")[0], "fp32", many), many)


def test_malformed_updates_are_refused():
    like = _update()
    good, _ = payload.encode(like, "fp32")
    renamed = {("b.weight" if k == "a.weight" else k): v for k, v in like.items()}
    with pytest.raises(MalformedUpdate, match="layout"):
        payload.decode(payload.encode(renamed, "fp32")[0], "fp32", like)
    reshaped = {**like, "a.weight": like["a.weight"].reshape(8, 16)}
    with pytest.raises(MalformedUpdate, match="layout"):
        payload.decode(payload.encode(reshaped, "fp32")[0], "fp32", like)
    with pytest.raises(MalformedUpdate, match="layout"):
        payload.decode({"values": good["values"]}, "fp32", like)
    with pytest.raises(MalformedUpdate, match="holds 10 values"):
        payload.decode({**good, "values": good["values"][:10]}, "fp32", like)
    bad_idx = payload.encode(like, "topk", 0.5)[0]
    bad_idx["index"] = bad_idx["index"] + 1000
    with pytest.raises(MalformedUpdate, match="cannot be decoded"):
        payload.decode(bad_idx, "topk", like)
    with pytest.raises(MalformedUpdate, match="cannot be decoded"):
        payload.decode(good, "int8", like)  # fp32 values, no scales
    nan = payload.decode(good, "fp32", like)
    nan["a.bias"][0] = float("nan")
    with pytest.raises(MalformedUpdate, match="NaN"):
        payload.check_update(nan, like, 10.0)
    with pytest.raises(MalformedUpdate, match="norm"):
        payload.check_update({k: 1e6 * v for k, v in like.items()}, like, 10.0)
    payload.check_update({k: 0.1 * v for k, v in like.items()}, like, 10.0)  # a sane one passes


def test_seeds_payload_checks():
    steps = [(123, 0.5, 1e-3), (456, -0.25, 1e-3)]
    arrays = payload.encode_seeds(steps)
    assert payload.decode_seeds(arrays, 2) == steps
    with pytest.raises(MalformedUpdate, match="at most"):
        payload.decode_seeds(arrays, 1)
    with pytest.raises(MalformedUpdate, match="NaN"):
        payload.decode_seeds({**arrays, "seeds::grad": np.array([np.nan, 1.0])}, 2)


def _stepped(fl_config: dict, method: str, options: dict | None = None):
    """(client method after 2 local steps, its global start state) on the tiny classifier."""
    run = {**fl_config, "train.method": method, **(options or {})}
    cfg, fed = settings(run)
    m = new_method(cfg, 1, seed=5)
    start = {k: v.clone() for k, v in m.trainable_state().items()}
    data = session(cfg).data.splits["train"]
    from edgetune.data.tasks import collate

    for i in range(2):
        m.step([collate(data[i * 8 : (i + 1) * 8], session(cfg).pad_id)])
    return m, start, cfg, fed


@pytest.mark.parametrize(
    ("method", "options"),
    [("mezo", {}), ("mezo", {"method.queries": 3, "method.perturbation_rank": 2}),
     ("mezo", {"method.trainable": "lora", "method.rank": 2, "method.queries": 2}),
     ("forward_grad", {"method.trainable": "lora", "method.rank": 2, "method.queries": 2})],
    ids=["plain", "queries-low-rank", "lora-queries", "forward-grad"],
)  # fmt: skip
def test_seed_replay_gives_the_client_weights(fl_config, method, options):
    """mezo and forward_grad send seeds: the server's replay reaches the client's bits."""
    client, start, cfg, fed = _stepped(fl_config, method, options)
    steps = client.clear_history()
    arrays = payload.encode_seeds(steps)
    # 24 bytes a query: the estimator adds entries, never model-sized tensors
    assert sum(a.nbytes for a in arrays.values()) == 24 * 2 * cfg.method.queries
    server = new_method(cfg, 1, seed=99)  # another seed: replay needs only the payload
    server.load_trainable_state(start)
    for s, g, lr in payload.decode_seeds(arrays, fed.local_steps * cfg.method.queries):
        server.replay(s, g, lr, cfg.train.weight_decay)
    after = client.trainable_state()
    assert any(not torch.equal(after[k], start[k]) for k in after)
    for k, v in server.trainable_state().items():
        assert torch.equal(v, after[k])  # bit for bit


def test_fedprox_pull_is_replayed_with_the_seeds(fl_config):
    """A client under FedProx pulls its weights toward the global ones after every step; a
    method that sends seeds must have the server replay that pull too, or the server rebuilds
    another state than the client trained."""
    from edgetune.federated.server_app import seed_replayer
    from edgetune.federated.strategies import to_record
    from edgetune.federated.task import proximal_pull

    cfg, fed = settings({**fl_config, "train.method": "mezo", "train.lr": 1e-2,
                         "method.queries": 2})  # fmt: skip
    client = new_method(cfg, 1, seed=5)
    glob = {k: v.clone() for k, v in client.trainable_state().items()}
    data = session(cfg).data.splits["train"]
    from edgetune.data.tasks import collate

    mu, lr = 5.0, client.settings.lr
    for i in range(2):
        client.step([collate(data[i * 8 : (i + 1) * 8], session(cfg).pad_id)])
        proximal_pull(client, glob, mu, lr)
    steps = client.clear_history()
    record = to_record({k: torch.from_numpy(np.asarray(v))
                        for k, v in payload.encode_seeds(steps).items()})  # fmt: skip
    trained = client.trainable_state()
    server = new_method(cfg, 1, seed=99)
    rebuilt = seed_replayer(server, fed.local_steps, cfg.train.weight_decay, mu)(record, glob)
    for k in trained:
        assert torch.equal(rebuilt[k], trained[k]), k  # bit for bit
    without = seed_replayer(server, fed.local_steps, cfg.train.weight_decay, 0.0)(record, glob)
    assert any(not torch.equal(without[k], trained[k]) for k in trained)


def test_proximal_pull_reaches_split_weights():
    """A split weight's trained rows (GPT-2's Conv1D stores them transposed, so its trainable
    state is a copy) are pulled in the model itself, not in a copy."""
    from tiny import batch, model

    from edgetune.federated.task import proximal_pull
    from edgetune.methods import build_method
    from edgetune.methods.base import MethodSettings

    m = build_method(
        "sparse",
        model("gpt2"),
        MethodSettings(lr=1e-2, total_steps=4, options={"scheme": "last-1@0.5"}),
    )
    anchor = {k: v.clone() for k, v in m.trainable_state().items()}
    m.step([batch("gpt2")])
    moved = {k: v.clone() for k, v in m.trainable_state().items()}
    proximal_pull(m, anchor, mu=10.0, lr=0.05)
    after = m.trainable_state()
    assert any("[:," in k for k in after), "the scheme splits a Conv1D weight"
    for k, w in moved.items():
        torch.testing.assert_close(after[k], w - 0.5 * (w - anchor[k]))


def test_payload_sizes_per_method(fl_config):
    """Serialized bytes of one client's update (the same ArrayRecord the client sends)."""
    sizes, fractions = {}, {}
    runs = [("backprop", "fp32"), ("lora", "fp32"), ("sparse", "fp32"), ("sparse", "fp16"),
            ("mezo", "seeds")]  # fmt: skip
    for method, codec in runs:
        m, start, cfg, _ = _stepped(fl_config, method)
        if method == "mezo":
            arrays = payload.encode_seeds(m.clear_history())
        else:
            arrays, _ = payload.encode(payload.delta(m.trainable_state(), start), codec)
        record = to_record({k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()})
        sizes[method, codec] = wire_bytes(record)
        total = sum(p.numel() for p in session(cfg).model.parameters())
        fractions[method] = sum(v.numel() for v in start.values()) / total
    full = sizes["backprop", "fp32"]
    assert fractions["backprop"] == 1.0 and full >= 4 * total
    assert sizes["lora", "fp32"] <= 0.02 * full
    # packed: the trainable values plus a fixed framing of a few hundred bytes, whatever the
    # number of tensors
    trained = 4 * fractions["sparse"] * total
    assert trained <= sizes["sparse", "fp32"] <= trained + 1024
    assert sizes["sparse", "fp16"] <= fractions["sparse"] * full
    assert sizes["mezo", "seeds"] <= 20_000
