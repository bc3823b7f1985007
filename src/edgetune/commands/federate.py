"""`edgetune federate`: federated fine-tuning with Flower, simulated here or deployed.

A plain function for typer (`app.command()(federate)` in `edgetune.cli`). Options left unset
keep the YAML config's value (`--config`), then edgetune's defaults; `--set key=value` passes
any run-config key (`train.lr=1e-4`, `method.r=4`, `federated.timeout=60`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from edgetune.errors import EdgetuneError


def run_config(**options: Any) -> dict[str, Any]:
    """The flat Flower run config of the options that were given."""
    keys = {
        "config": "config", "model": "model.name", "data": "data.name", "method": "train.method",
        "out": "out", "clients": "federated.clients", "rounds": "federated.rounds",
        "local_steps": "federated.local_steps", "strategy": "federated.strategy",
        "partition": "federated.partition", "alpha": "federated.alpha",
        "compress": "federated.compress", "topk_fraction": "federated.topk_fraction",
        "network": "federated.network", "resume": "federated.resume",
    }  # fmt: skip
    out = {keys[k]: (str(v) if isinstance(v, Path) else v)
           for k, v in options.items() if k in keys and v is not None}  # fmt: skip
    for item in options.get("set") or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise EdgetuneError(f"--set {item!r} is not of the form key=value")
        out[key.strip()] = value
    return out


def federate(
    config: Path | None = typer.Option(None, help="YAML run config (model, data, train, method)."),
    model: str | None = typer.Option(None, help="Model: registry name or local folder."),
    data: str | None = typer.Option(None, help="Data set: bundled name or file."),
    method: str | None = typer.Option(None, help="backprop, sparse, lora, mezo, pepita, ..."),
    clients: int | None = typer.Option(None, help="Number of clients (data partitions)."),
    rounds: int | None = typer.Option(None, help="Server rounds."),
    local_steps: int | None = typer.Option(None, help="Method steps per client per round."),
    strategy: str | None = typer.Option(
        None, help="fedavg, fedavgm, fedprox, fedadam, fedmedian, fedtrimmedavg or krum."
    ),
    partition: str | None = typer.Option(None, help="iid or dirichlet."),
    alpha: float | None = typer.Option(None, help="Dirichlet alpha (smaller: more skewed)."),
    compress: str | None = typer.Option(None, help="Update codec: fp32, fp16, int8 or topk."),
    topk_fraction: float | None = typer.Option(None, help="Share of entries topk sends."),
    network: str | None = typer.Option(None, help="Link profile: 3g, 4g, 5g, wifi, ethernet."),
    deploy: str = typer.Option(
        "sim", help="sim: Flower Simulation Engine; local: SuperLink + SuperNode processes."
    ),
    tls: bool = typer.Option(False, help="With --deploy local: HTTPS with a throw-away CA."),
    resume: bool | None = typer.Option(None, help="Continue from the last round checkpoint."),
    cpus: int = typer.Option(2, help="Simulation: CPUs for client actors (1 CPU each)."),
    timeout: float = typer.Option(3600.0, help="Deployment: seconds before giving up."),
    set_: list[str] | None = typer.Option(None, "--set", help="Any run-config key=value."),
    out: Path | None = typer.Option(None, help="Run folder (federated.json, model, plots)."),
) -> None:
    """Fine-tune one model across clients with Flower: each client runs the method's own step
    on its partition and sends only its update."""
    rc = run_config(config=config, model=model, data=data, method=method, clients=clients,
                    rounds=rounds, local_steps=local_steps, strategy=strategy,
                    partition=partition, alpha=alpha, compress=compress,
                    topk_fraction=topk_fraction, network=network, resume=resume, set=set_,
                    out=out)  # fmt: skip
    if deploy == "sim":
        if tls:
            raise EdgetuneError("--tls applies to --deploy local only")
        from edgetune.federated.simulate import simulate

        result = simulate(rc, cpus=cpus)
    elif deploy == "local":
        from edgetune.federated.deploy import deploy_local

        result = deploy_local(rc, tls=tls, timeout=timeout)
    else:
        raise EdgetuneError(f"unknown --deploy {deploy!r}; use sim or local")
    show(result, Console())


def show(result: dict[str, Any], console: Console) -> None:
    table = Table(title=f"{result['method']} on {result['model']}, {result['strategy']}")
    for col in ("round", "clients", "up B/client", "down B/client", "compute s", "comm s",
                "metric"):  # fmt: skip
        table.add_column(col, justify="left" if col == "metric" else "right")
    for r in result["per_round"]:
        metric = ", ".join(f"{k} {v:.4f}" for k, v in r["metric"].items() if k != "samples")
        table.add_row(str(r["round"]), str(r["clients"]), f"{r['bytes_up']:,.0f}",
                      f"{r['bytes_down']:,.0f}", f"{r['compute_s']:.2f}", f"{r['comm_s']:.2f}",
                      metric)  # fmt: skip
    console.print(table)
