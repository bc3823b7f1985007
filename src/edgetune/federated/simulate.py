"""Run the federated app in Flower's Simulation Engine (Ray) on this machine.

`simulate(run_config)` hands the ServerApp and the ClientApp, with the run config given, to
`flwr.simulation.run_simulation`: one virtual SuperNode per client, `cpus` Ray CPUs shared by
actors of one CPU each (so at most `cpus` clients train at the same time). It returns what the
server wrote to federated.json. `flwr run .` runs the same apps from pyproject.toml.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgetune.errors import EdgetuneError
from edgetune.federated.task import check_partition, settings


def simulate(run_config: Mapping[str, Any], cpus: int = 2, verbose: bool = False) -> dict:
    """Run every round in simulation; the results also stay in the run's `out` folder."""
    from flwr.simulation import run_simulation

    from edgetune.federated import client_app, server_app

    cfg, fed = settings(run_config)  # fail early, before Ray starts, on a bad config
    check_partition(cfg)
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    threads = cfg.train.threads or 1
    backend: dict[str, dict[str, Any]] = {
        "client_resources": {"num_cpus": threads, "num_gpus": 0.0},
        "init_args": {"num_cpus": max(threads, cpus), "include_dashboard": False,
                      "log_to_driver": verbose},
    }  # fmt: skip
    config = dict(run_config)
    run_simulation(
        server_app.make_app(config),
        client_app.make_app(config),
        num_supernodes=fed.clients,
        backend_config=backend,
        verbose_logging=verbose,
    )
    result = Path(cfg.out) / "federated.json"
    if not result.is_file():
        raise EdgetuneError(
            f"the simulation ended without a result in {cfg.out}; see the log above"
        )
    return json.loads(result.read_text())
