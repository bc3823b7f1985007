"""The app's configuration: pyproject.toml's Flower sections, run-config parsing, network
profiles."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgetune.commands.federate import run_config
from edgetune.errors import EdgetuneError
from edgetune.federated.network import NETWORKS, get_network, round_times
from edgetune.federated.task import settings

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
