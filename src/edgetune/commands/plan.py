"""`edgetune plan`: contribution analysis and budgeted search, written as a YAML update scheme.

A plain function for typer; `edgetune.cli` registers it with `app.command()(plan)`. Bad input
raises `EdgetuneError` (the CLI prints it on one line and exits 1).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from edgetune.errors import EdgetuneError


def _layers(text: str | None, what: str) -> list[int] | None:
    if text is None or text == "all":
        return None
    try:
        return sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise EdgetuneError(f"--{what} takes `all` or comma-separated block indices") from None


def _fractions(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise EdgetuneError(f"--fractions takes comma-separated numbers, got {text!r}") from None
    if not values or any(not 0 < v <= 1 for v in values):
        raise EdgetuneError(f"--fractions must lie in (0, 1], got {text!r}")
    return values


def plan(
    model: str = typer.Option("minilm-l6", help="Registry name or local model folder."),
    data: str = typer.Option("reuters-r8", help="Bundled data set or data file."),
    task: str | None = typer.Option(None, help="classify, lm, summarize or chat (data files)."),
    budget: str | None = typer.Option(
        None, help="Training-memory budget beyond the weights: 64MB, 1.5GB, 512MiB."
    ),
    device: str | None = typer.Option(
        None, help="Device profile (`edgetune devices`): its memory minus the weights."
    ),
    max_step: float | None = typer.Option(
        None, help="Step time limit in forward passes (the cost model's FLOPs), e.g. 1.25."
    ),
    verify: int = typer.Option(
        0, help="Fine-tune the best N shortlisted schemes jointly; keep the best measured."
    ),
    out: Path = typer.Option(Path("plan.yaml"), help="Scheme YAML to write (with its forecast)."),
    seq_len: int = typer.Option(128, help="Tokens per example (analysis and forecast)."),
    batch_size: int = typer.Option(16, help="Examples per step the forecast is for."),
    steps: int = typer.Option(10, help="Optimizer steps each candidate is fine-tuned for."),
    analysis_batch: int = typer.Option(8, help="Examples per step of the candidates' runs."),
    lr: float = typer.Option(1e-3, help="Learning rate of the candidates' short runs."),
    eval_examples: int = typer.Option(64, help="Held-out examples the gain is measured on."),
    train_samples: int | None = typer.Option(None, help="Use only N training rows."),
    layers: str | None = typer.Option(
        None, help="Blocks to measure, e.g. 0,2,4 (default all; the rest interpolated)."
    ),
    fraction_layers: str | None = typer.Option(
        None, help="Blocks where channel fractions < 1 are measured (default: measured ones)."
    ),
    fractions: str = typer.Option(
        "1,0.5,0.25,0.125", help="Output-channel fractions of each unit (must include 1)."
    ),
    cache: Path | None = typer.Option(None, help="Folder of the analysis cache (resumable)."),
    plot: Path | None = typer.Option(None, help="Write the gain per layer and unit (PNG)."),
    json_out: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
) -> None:
    """Plan a sparse update scheme for a memory budget or a device.

    Examples:

        edgetune plan --model minilm-l6 --data reuters-r8 --budget 64MB --out plan.yaml

        edgetune plan --model smollm2-135m --data brown --device rpi4 --layers 20,25,29

        edgetune plan --budget 48MB --max-step 1.25 --verify 4 --out fast.yaml

        edgetune finetune --method sparse method.scheme=plan.yaml ...
    """
    from edgetune.config import load_config
    from edgetune.plan.contribution import AnalysisSettings, plot_gains
    from edgetune.plan.search import human_bytes, make_plan

    overrides = {
        "model.name": model,
        "data.name": data,
        "data.task": task,
        "data.seq_len": seq_len,
        "train.batch_size": batch_size,
        "data.train_samples": train_samples,
    }
    cfg = load_config(None, [f"{k}={json.dumps(v)}" for k, v in overrides.items() if v is not None])
    settings = AnalysisSettings(
        steps=steps,
        lr=lr,
        batch_size=analysis_batch,
        eval_examples=eval_examples,
        layers=_layers(layers, "layers"),
        fraction_layers=_layers(fraction_layers, "fraction-layers"),
        fractions=_fractions(fractions),
    )
    if max_step is not None and max_step < 1:
        raise EdgetuneError(
            f"--max-step counts forward passes and must be at least 1, got {max_step:g}"
        )
    if verify < 0:
        raise EdgetuneError(f"--verify must be 0 or more, got {verify}")
    console = Console(stderr=True)
    result, table = make_plan(
        cfg, budget, device, settings, cache, console, max_step=max_step, verify=verify
    )
    result.save(out)
    if plot:
        plot_gains(table, plot)
    if json_out:
        typer.echo(
            json.dumps(
                {
                    "scheme": result.scheme.to_dict(),
                    "gain": result.gain,
                    "measured_gain": result.measured_gain,
                    "budget_bytes": result.budget,
                    "forecast": result.forecast,
                }
            )
        )
        return
    t = Table(title=f"planned scheme for {model} on {data} within {human_bytes(result.budget)}")
    for col in ("unit", "layer", "channel fraction", "bias"):
        t.add_column(col)
    for u in result.scheme.updates:
        layer = "" if u.unit == "head" else str(u.layer)
        t.add_row(u.unit, layer, f"{u.weight_fraction:g}", "yes" if u.bias else "no")
    out_console = Console()
    out_console.print(t)
    f = result.forecast
    out_console.print(
        f"forecast (batch {f['batch']}, {f['seq']} tokens): training memory "
        f"{human_bytes(f['training_bytes'])}, peak {human_bytes(f['peak_bytes'])}, "
        f"step {f['step_forwards']:.2f}x a forward (FLOPs), "
        f"{f['trained_params'] / 1e6:.2f}M trained parameters; predicted held-out loss gain "
        f"{result.gain:.4f}"
        + ("" if result.measured_gain is None else f", measured {result.measured_gain:.4f}")
    )
    out_console.print(f"wrote {out}")
