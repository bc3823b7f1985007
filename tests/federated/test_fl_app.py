"""The app's configuration: pyproject.toml's Flower sections, run-config parsing, network
profiles."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from edgetune.commands.federate import run_config
from edgetune.errors import EdgetuneError
from edgetune.federated.network import NETWORKS, get_network, round_times
from edgetune.federated.task import new_method, settings

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_is_a_valid_flower_app():
    from flwr.cli.build import build_fab_from_disk
    from flwr.cli.config_utils import load_and_validate
    from flwr.common.config import flatten_dict

    config, warnings = load_and_validate(ROOT / "pyproject.toml")
    assert config is not None and not warnings
    app = config["tool"]["flwr"]["app"]
    assert app["components"]["serverapp"] == "edgetune.federated.server_app:app"
    cfg, fed = settings(flatten_dict(app["config"]))  # every key is one edgetune knows
    assert (cfg.model.name, fed.clients, fed.partition) == ("minilm-l6", 8, "dirichlet")
    assert len(build_fab_from_disk(ROOT)) < 1_000_000  # the bundle holds the app code only


def test_run_config_parsing():
    cfg, fed = settings({"train.lr": "2e-4", "federated.rounds": "3", "federated.resume": "true",
                         "data.seq-len": 32})  # fmt: skip
    assert cfg.train.lr == 2e-4 and fed.rounds == 3 and fed.resume is True
    assert cfg.data.seq_len == 32
    with pytest.raises(EdgetuneError, match=r"unknown backprop option\(s\) r"):
        settings({"train.method": "backprop", "method.r": 4})  # options of another method
    assert settings({"train.method": "lora", "method.r": 4})[0].method.r == 4
    with pytest.raises(EdgetuneError, match=r"unknown key\(s\) in federated: round"):
        settings({"federated.round": 3})
    with pytest.raises(EdgetuneError, match="unknown federated.strategy"):
        settings({"federated.strategy": "fedsgd"})
    with pytest.raises(EdgetuneError, match="unknown federated.compress"):
        settings({"federated.compress": "zip"})


def test_federate_takes_settings_as_finetune_does():
    """One override convention: flags, then `section.key=value` arguments."""
    flags = {"federated.clients": 4, "federated.alpha": None, "out": Path("x")}
    rc = run_config(None, flags, ["federated.timeout=5", "train.lr=1e-4"])
    assert rc == {"federated.clients": 4, "out": "x", "federated.timeout": "5",
                  "train.lr": "1e-4"}  # fmt: skip
    cfg, fed = settings(rc)
    assert fed.timeout == 5.0 and cfg.train.lr == 1e-4 and cfg.out == "x"
    with pytest.raises(EdgetuneError, match="no such option: --clientz"):
        run_config(None, {}, ["--clientz=4"])
    with pytest.raises(EdgetuneError, match="unknown key"):
        run_config(None, {}, ["federated.clientz=4"])


def test_network_transfer_times():
    net = get_network("4g")
    t = round_times(net, bytes_up=1_000_000, bytes_down=2_000_000, compute_s=3.0)
    assert t["up_s"] == pytest.approx(0.05 + 8e6 / 8e6)
    assert t["down_s"] == pytest.approx(0.05 + 16e6 / 25e6)
    assert t["compute_comm_ratio"] == pytest.approx(3.0 / (t["up_s"] + t["down_s"]))
    assert all(n.source for n in NETWORKS.values())
    assert NETWORKS["3g"].up_s(10**6) > NETWORKS["ethernet"].up_s(10**6)
    with pytest.raises(EdgetuneError, match="unknown network"):
        get_network("lte-advanced")


def test_more_clients_than_rows_is_refused_before_any_client_starts(fl_config):
    from edgetune.federated.simulate import simulate

    with pytest.raises(EdgetuneError, match=r"cannot give 1000 clients a row.*at most"):
        simulate({**fl_config, "federated.clients": 1000})
    assert not Path(fl_config["out"]).exists()


ROUND_2 = textwrap.dedent(
    """
    import json, sys
    import torch
    from flwr.app import ConfigRecord, Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity
    from edgetune.federated import client_app
    from edgetune.federated.strategies import to_record, to_state

    def train(run, glob, rnd):  # round `rnd` as a resumed run's first round
        for key in ("_run_id", "_node_id", "_task_id"):  # what a SuperNode's run sets
            setattr(TaskIdentity, key, 1)
        config = ConfigRecord({"server-round": 1, "round-offset": rnd - 1})
        msg = Message(RecordDict({"arrays": to_record(glob), "config": config}),
                      dst_node_id=1, message_type="train")
        ctx = Context(run_id=1, node_id=1, state=RecordDict(), run_config={},
                      node_config={"partition-id": 0, "num-partitions": 2})
        return to_state(client_app.train(msg, ctx, run).content["arrays"])

    if __name__ == "__main__":  # a fresh process: round 2 is the first thing it does
        torch.save(train(json.loads(sys.argv[1]), torch.load(sys.argv[2]), 2), sys.argv[3])
    """
)


def test_a_round_trains_the_same_in_a_fresh_process(fl_config, tmp_path):
    """A resumed run's clients serve its next round in fresh processes; an uninterrupted
    run's had served the round before. What the first load in a process draws from torch's
    generator must not reach the round's dropout (a resumed run differed by 2e-3)."""
    run = {**fl_config, "federated.rounds": 2}
    glob = new_method(settings(run)[0], 1, 0).trainable_state()
    torch.save(glob, tmp_path / "glob.pt")
    subprocess.run([sys.executable, "-c", ROUND_2, json.dumps(run), str(tmp_path / "glob.pt"),
                    str(tmp_path / "fresh.pt")], check=True, capture_output=True)  # fmt: skip
    fresh = torch.load(tmp_path / "fresh.pt")
    train = {}  # this process serves round 1, then round 2, as an uninterrupted run's does
    exec(ROUND_2, train)
    train["train"](run, glob, 1)
    warm = train["train"](run, glob, 2)
    assert all(torch.equal(fresh[k], warm[k]) for k in fresh)
