"""`edgetune federate`: federated fine-tuning with Flower, simulated here or deployed.

Options left unset keep the YAML config's value (`--config`), then edgetune's defaults; extra
`section.key=value` arguments set any run-config key (`train.lr=1e-4`, `method.r=4`,
`federated.timeout=60`), as for `finetune`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from edgetune.commands import overrides
from edgetune.errors import EdgetuneError


def run_config(config: Path | None, flags: dict[str, Any], extra: list[str]) -> dict[str, Any]:
    """The flat Flower run config: the YAML file under `config`, then the given flags and
    `section.key=value` arguments (checked here, before Ray or a SuperLink starts)."""
    from edgetune.federated.task import settings

    out: dict[str, Any] = {"config": str(config)} if config is not None else {}
    out.update({k: (str(v) if isinstance(v, str) else v)
                for k, v in overrides(flags, extra, "federate").items()})  # fmt: skip
    settings(out)
    return out


def federate(
    ctx: typer.Context,
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
    out: Path | None = typer.Option(None, help="Run folder (federated.json, model, plots)."),
) -> None:
    """Fine-tune one model across clients with Flower: each client runs the method's own step
    on its partition and sends only its update. Extra `section.key=value` arguments set any
    run-config key.

    Examples:

        edgetune federate --clients 8 --rounds 5 --partition dirichlet --alpha 0.5 --out runs/fl

        edgetune federate --config configs/federated-lora-topk.yaml federated.timeout=60

        edgetune federate --deploy local --clients 2 --rounds 2 --method lora --out runs/fl-dep
    """
    flags = {
        "model.name": model, "data.name": data, "train.method": method, "out": out,
        "federated.clients": clients, "federated.rounds": rounds,
        "federated.local_steps": local_steps, "federated.strategy": strategy,
        "federated.partition": partition, "federated.alpha": alpha,
        "federated.compress": compress, "federated.topk_fraction": topk_fraction,
        "federated.network": network, "federated.resume": resume,
    }  # fmt: skip
    rc = run_config(config, flags, ctx.args)
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
