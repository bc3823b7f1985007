"""Run the federated app in Flower's Simulation Engine (Ray) on this machine.

`simulate(run_config)` hands the ServerApp and the ClientApp, with the run config given, to
`flwr.simulation.run_simulation`: one virtual SuperNode per client, `cpus` Ray CPUs shared by
actors of one CPU each (so at most `cpus` clients train at the same time). It returns what the
server wrote to federated.json. `flwr run .` runs the same apps from pyproject.toml.

Faults: an actor whose process dies (a client crashing mid-round) is restarted by Ray, and
a task sent to it is tried once more once it is back (`max_restarts`, `max_task_retries`:
Ray actor options Flower passes on from `client_resources`). Without them Flower hands the
dead actor back to its pool and every later client sent to it fails; the client that
crashed is run once more, and recorded as failed if it crashes again. Ctrl-C
stops Ray's processes and ends the process with status 130: Flower's ServerApp thread and
its workers wait for replies that no longer come and would keep it alive.

Ray listens on loopback only: on Linux it takes the host's outward address as the node's
and its GCS, raylet and workers then listen on every interface (`ray.init` turns an asked-for
`_node_ip_address="127.0.0.1"` back into that address); with Ray's single-machine mode
(`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, its default on macOS and Windows) the node's address
is 127.0.0.1 and every Ray server binds it alone (tests/federated/test_fl_simulation.py checks
the listening sockets).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
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
    _loopback_only()
    threads = cfg.train.threads or 1
    backend: dict[str, dict[str, Any]] = {
        "client_resources": {"num_cpus": threads, "num_gpus": 0.0, "max_restarts": -1,
                             "max_task_retries": 1},
        "init_args": {"num_cpus": max(threads, cpus), "include_dashboard": False,
                      "log_to_driver": verbose},
    }  # fmt: skip
    config = dict(run_config)
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, _interrupted) if main else None
    try:
        run_simulation(
            server_app.make_app(config),
            client_app.make_app(config),
            num_supernodes=fed.clients,
            backend_config=backend,
            verbose_logging=verbose,
        )
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
    result = Path(cfg.out) / "federated.json"
    if not result.is_file():
        raise EdgetuneError(
            f"the simulation ended without a result in {cfg.out}; see the log above"
        )
    return json.loads(result.read_text())


def _loopback_only() -> None:
    """Ray's single-machine mode, whose node address is 127.0.0.1: the variable for the
    processes Ray starts, the constant for this one (read when Ray was imported)."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def _interrupted(signum: int, frame: object) -> None:
    """Ctrl-C during a simulation: Flower's threads would outlive a KeyboardInterrupt (its
    ServerApp thread is no daemon, its workers wait for the run's end), so stop Ray's
    processes and exit at once with 130 (a watchdog exits anyway if Ray does not stop)."""
    import ray

    print("interrupted: stopping the simulation", file=sys.stderr, flush=True)
    threading.Timer(20.0, os._exit, (130,)).start()
    ray.shutdown()
    os._exit(130)
